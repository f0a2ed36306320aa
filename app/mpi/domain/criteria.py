"""Exact record search criteria: what a FHIR (PDQm) search asks of the database.

A search is a list of :class:`Term`; every term must hold (AND) and a term holds when any
of its values does (OR), as FHIR combines repeated parameters and comma-separated values.
The storage layer turns terms into SQL over indexed columns; the FHIR layer turns query
parameters into terms. Neither knows the other's syntax.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Literal

# What a term is about (the FHIR search parameter, without modifiers).
Subject = Literal[
    "_id", "_lastUpdated", "active", "family", "given", "name", "identifier", "telecom",
    "birthdate", "gender", "address", "address-city", "address-country",
    "address-postalcode", "address-state", "mothersMaidenName", "source",
]
# How a string is compared: FHIR's default (starts with, case and accents ignored),
# :exact (the whole string, as stored) or :contains (anywhere, case and accents ignored).
TextMode = Literal["prefix", "exact", "contains"]
Comparator = Literal["eq", "ne", "lt", "gt", "le", "ge", "sa", "eb", "ap"]


@dataclass(frozen=True)
class Token:
    """``system|value``, ``system|`` (any value in the system) or ``|value`` (no system);
    a bare ``value`` has ``any_system``. ``kind`` says which identifier: one the record
    carries, the record's own id in its source (``system`` is then the source's code), or
    the enterprise identity (``value`` is the person's id)."""

    system: str | None
    value: str | None
    any_system: bool = False
    kind: Literal["identifier", "source", "person"] = "identifier"


@dataclass(frozen=True)
class DateRange:
    """A date or instant given to some precision: the half-open interval [start, end) it
    stands for, compared with ``comparator``."""

    comparator: Comparator
    start: date | datetime
    end: date | datetime


@dataclass(frozen=True)
class Term:
    subject: Subject
    values: tuple[object, ...] = ()
    mode: TextMode = "prefix"
    # ``:missing=true|false``: the element is absent (or present); ``values`` unused.
    missing: bool | None = None


@dataclass(frozen=True)
class Criteria:
    terms: tuple[Term, ...] = ()
    # (subject, descending) pairs, applied in order; the record's key breaks ties.
    sort: tuple[tuple[str, bool], ...] = field(default=())


SORTABLE = ("_id", "_lastUpdated", "birthdate", "family", "given", "gender")
