"""The flat record matching works on, and the one-time normalisation that makes scoring cheap.

:class:`MatchRecord` is what the identity layer builds from a stored patient (or a CSV row).
:func:`prepare` normalises it once: case-folded, accent- and punctuation-free strings,
digits only for phone and SSN, phonetic codes (NYSIIS and metaphone) and the canonical
forms of the given name from the ``nicknames`` package and its forms in other languages
(``name_variants.json``: John, Ivan, Juan, Johann); placeholder values ("Unknown",
"Baby Boy", postal code 00000: :mod:`mpi.matching.placeholders`) become missing. Scoring
and blocking read only the prepared form, so scoring a pair does no string clean-up at
all, and every path (service, batch tools, training) treats placeholders alike.
"""

from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import dataclass
from datetime import date
from functools import lru_cache
from importlib import resources

import jellyfish

from mpi.matching import placeholders

_NON_ALNUM = re.compile(r"[^0-9a-z]+")
_NON_DIGIT = re.compile(r"[^0-9]+")
_SEX = {"m": "m", "male": "m", "man": "m", "f": "f", "female": "f", "woman": "f",
        "o": "o", "other": "o"}


@dataclass(frozen=True, slots=True)
class MatchRecord:
    """One source record, flat. Every field but ``record_id`` may be missing (None)."""

    record_id: str
    source: str | None = None
    given_name: str | None = None
    middle_name: str | None = None
    family_name: str | None = None
    birth_date: date | None = None
    sex: str | None = None
    address_line: str | None = None
    city: str | None = None
    state: str | None = None
    postal_code: str | None = None
    phone: str | None = None
    ssn: str | None = None
    # (system, value) pairs: medical record numbers, driver's licence, ... (SSN goes in ``ssn``)
    identifiers: tuple[tuple[str, str], ...] = ()
    mothers_maiden_name: str | None = None
    # A birth date known only to the year or month ("1980", "1980-05"); birth_date is None.
    birth_partial: str | None = None
    # Birth order within a multiple birth (twins: 1 and 2); read by the twin guard.
    birth_order: int | None = None


def normalise_text(value: str | None) -> str:
    """Case-folded ASCII letters and digits, words separated by one space ('' when missing)."""
    if not value:
        return ""
    return _normalised(value)


@lru_cache(maxsize=1 << 16)
def _normalised(value: str) -> str:
    # Cached: a registry's names, cities and states repeat, and every decision prepares
    # each candidate's values again. ASCII text has nothing to decompose: the character
    # loop below was 28 % of mpi import's CPU at 475,000 records (py-spy).
    decomposed = value.casefold()
    if not decomposed.isascii():
        decomposed = unicodedata.normalize("NFKD", decomposed)
        decomposed = "".join(c for c in decomposed if not unicodedata.combining(c))
    return _NON_ALNUM.sub(" ", decomposed.replace("'", "")).strip()


def digits(value: str | None) -> str:
    return _NON_DIGIT.sub("", value) if value else ""


@lru_cache(maxsize=1)
def _nicknamer() -> object:
    from nicknames import NickNamer

    return NickNamer()


@lru_cache(maxsize=65536)
def name_forms(name: str) -> frozenset[str]:
    """The name and its canonical forms ('bill' -> bill, william, will, ...); '' -> empty."""
    if not name:
        return frozenset()
    first = name.split(" ", 1)[0]
    canon = _nicknamer().canonicals_of(first)  # type: ignore[attr-defined]
    return frozenset({first, *canon})


@lru_cache(maxsize=1)
def _language_groups() -> dict[str, tuple[frozenset[str], frozenset[str]]]:
    """name -> (groups it stands in, groups in which it is another language's form)."""
    text = resources.files("mpi.matching").joinpath("name_variants.json").read_text("utf-8")
    groups: dict[str, list[str]] = json.loads(text)["groups"]
    standing: dict[str, set[str]] = {}
    foreign: dict[str, set[str]] = {}
    for english, others in groups.items():
        standing.setdefault(english, set()).add(english)
        for other in others:
            standing.setdefault(other, set()).add(english)
            foreign.setdefault(other, set()).add(english)
    return {name: (frozenset(gs), frozenset(foreign.get(name, ()))) for name, gs in
            standing.items()}


@lru_cache(maxsize=65536)
def language_forms(name: str) -> tuple[frozenset[str], frozenset[str]]:
    """The groups of ``name_variants.json`` the given name stands in (itself, or an English
    nickname of a group's name: Bill stands in William's), and those in which it is
    another language's form (Guillermo); two names share a group and one of them is
    foreign there: one name in two languages."""
    if not name:
        return frozenset(), frozenset()
    table = _language_groups()
    first = name.split(" ", 1)[0]
    own, foreign = table.get(first, (frozenset(), frozenset()))
    english = frozenset(g for form in name_forms(first) if form in table
                        for g in table[form][0] if g == form)
    return own | english, foreign


def other_language_form(a: tuple[frozenset[str], frozenset[str]],
                        b: tuple[frozenset[str], frozenset[str]]) -> bool:
    """Do two given names (their :func:`language_forms`) write one name in two languages?"""
    common = a[0] & b[0]
    return bool(common and (common & a[1] or common & b[1]))


@lru_cache(maxsize=65536)
def _phonetic(name: str) -> tuple[str, str]:
    joined = name.replace(" ", "")
    if not joined or not joined.isalpha():
        return "", ""
    return jellyfish.nysiis(joined), jellyfish.metaphone(joined)


class PreparedRecord:
    """A :class:`MatchRecord` normalised once for scoring and blocking (read-only by use)."""

    __slots__ = (
        "address", "city", "dob", "dob_known", "family", "family_meta", "family_nysiis",
        "family_parts", "given", "given_forms", "given_langs", "given_meta", "given_nysiis",
        "identifiers", "middle", "mmn", "phone", "postcode", "record", "sex", "ssn", "state",
    )

    def __init__(self, record: MatchRecord) -> None:
        blank = placeholders.active()
        self.record = record
        given, family = normalise_text(record.given_name), normalise_text(record.family_name)
        if f"{given} {family}" in blank.full_name:
            given = family = ""
        # A registry's names and places repeat: each is normalised, coded and looked up
        # once per value (and placeholder list), not for every record that holds it.
        (self.given, self.given_nysiis, self.given_meta, self.given_forms,
         self.given_langs) = _given(given, blank.name)
        self.middle = _unless(normalise_text(record.middle_name), blank.name)
        self.family, self.family_nysiis, self.family_meta, self.family_parts = _family(
            family, blank.name)
        d = record.birth_date
        self.dob = f"{d.year:04d}{d.month:02d}{d.day:02d}" if d else ""
        # As much of the birth date as is known, as digits: YYYY, YYYYMM or YYYYMMDD.
        self.dob_known = self.dob or digits(record.birth_partial)[:6]
        self.sex = _SEX.get(normalise_text(record.sex), "")
        self.address = _unless(normalise_text(record.address_line), blank.address)
        self.city, self.state, self.postcode = _places(record.city, record.state,
                                                       record.postal_code, blank)
        phone = digits(record.phone)
        self.phone = _unless(phone[-10:] if len(phone) >= 7 else "", blank.phone)
        ssn = digits(record.ssn)
        self.ssn = "" if placeholders.is_placeholder_ssn(ssn, blank) else ssn
        ids: dict[str, frozenset[str]] = {}
        for system, value in record.identifiers:
            key = system.strip().casefold()
            ids[key] = ids.get(key, frozenset()) | {value.strip().casefold()}
        self.identifiers = ids
        self.mmn = _unless(normalise_text(record.mothers_maiden_name), blank.name)

    @property
    def record_id(self) -> str:
        return self.record.record_id

    def __repr__(self) -> str:
        return f"PreparedRecord({self.record.record_id!r})"


@lru_cache(maxsize=1 << 16)
def _given(given: str, names: frozenset[str]) -> tuple[str, str, str, frozenset[str],
                                                       tuple[frozenset[str], frozenset[str]]]:
    """A given name's fields of :class:`PreparedRecord` ('' when a placeholder in
    ``names``): the name, its NYSIIS and metaphone codes, forms and languages' forms."""
    given = _unless(given, names)
    return (given, *_phonetic(given), name_forms(given), language_forms(given))


@lru_cache(maxsize=1 << 16)
def _family(family: str, names: frozenset[str]) -> tuple[str, str, str, frozenset[str]]:
    """A family name's fields of :class:`PreparedRecord`: the name, its NYSIIS and
    metaphone codes, and its words when it has several."""
    family = _unless(family, names)
    return (family, *_phonetic(family),
            frozenset(family.split()) if " " in family else frozenset())


@lru_cache(maxsize=1 << 16)
def _places(city: str | None, state: str | None, postal_code: str | None,
            blank: placeholders.Placeholders) -> tuple[str, str, str]:
    """The city, state and postal code of :class:`PreparedRecord`."""
    return (field_form("city", city, blank), field_form("state", state, blank),
            field_form("postal_code", postal_code, blank))


def field_form(field: str, raw: str | None,
               blank: placeholders.Placeholders | None = None) -> str:
    """One field's value as :class:`PreparedRecord` holds it, for the fields registry
    frequencies count (``given_name``, ``family_name``, ``city``, ``state``,
    ``postal_code``): '' when missing or a placeholder (``blank``: the active list)."""
    blank = blank or placeholders.active()
    value = normalise_text(raw)
    if field in ("given_name", "family_name"):
        return _unless(value, blank.name)
    if field == "city":
        return _unless(value, blank.city)
    if field == "postal_code":
        return _unless(value.replace(" ", ""), blank.postal_code)
    if field == "state":
        return value
    raise ValueError(f"no single-field form for {field!r}")


def _unless(value: str, placeholder_values: frozenset[str]) -> str:
    """``value``, or '' when it is a placeholder (:mod:`mpi.matching.placeholders`)."""
    return "" if value in placeholder_values else value


def prepare(record: MatchRecord | PreparedRecord) -> PreparedRecord:
    """Normalise once; a record that is already prepared is returned as is."""
    return record if isinstance(record, PreparedRecord) else PreparedRecord(record)
