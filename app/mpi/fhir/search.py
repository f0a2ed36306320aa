"""FHIR search parameters (search.html, PDQm ITI-78) read into :class:`Criteria`.

Parameters repeat (AND) and take comma-separated values (OR); ``\\,`` ``\\|`` ``\\$`` and
``\\\\`` are escapes. Unknown parameters are ignored and left out of the ``self`` link
(search.html 3.1.1.6; PDQm: "SHOULD be ignored"); a known parameter with a bad value or
an unsupported modifier is a 400 naming it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any, get_args
from urllib.parse import quote

from mpi.api.resources.common import form_decode
from mpi.domain.criteria import SORTABLE, Comparator, Criteria, DateRange, Term, Token
from mpi.domain.errors import FieldProblem
from mpi.fhir import PERSON_SYSTEM, SOURCE_SYSTEM

STRING_PARAMS = ("family", "given", "name", "address", "address-city", "address-country",
                 "address-postalcode", "address-state", "mothersMaidenName")
TOKEN_PARAMS = ("identifier", "telecom", "gender", "active", "_id")
DATE_PARAMS = ("birthdate", "_lastUpdated")
#: Every search parameter this server understands, with its FHIR type (CapabilityStatement).
SEARCH_PARAMS: dict[str, str] = {
    **{p: "string" for p in STRING_PARAMS}, **{p: "token" for p in TOKEN_PARAMS},
    **{p: "date" for p in DATE_PARAMS}}
SEARCH_PARAMS["_id"] = "token"
CONTROL_PARAMS = ("_count", "_offset", "_sort", "_total", "_summary", "_format")
IGNORED_CONTROLS = ("_pretty", "_elements")
GENDERS = ("male", "female", "other", "unknown")
DEFAULT_COUNT = 20
MAX_COUNT = 200
MAX_OFFSET = 10_000
_COMPARATORS = get_args(Comparator)
_DATE_RE = re.compile(
    r"^(?P<y>\d{4})(-(?P<m>\d{2})(-(?P<d>\d{2})(T(?P<H>\d{2}):(?P<M>\d{2})(:(?P<S>\d{2})"
    r"(\.(?P<f>\d{1,9}))?)?(?P<tz>Z|[+-]\d{2}:\d{2})?)?)?)?$")


class SearchError(Exception):
    """A known parameter with a bad value (400)."""

    def __init__(self, problems: list[FieldProblem]):
        super().__init__("; ".join(f"{p.field}: {p.reason}" for p in problems))
        self.problems = problems


@dataclass
class Search:
    criteria: Criteria
    count: int
    offset: int
    total: bool
    summary_count: bool
    # PDQm "which domains are returned": identifier systems asked for without a value.
    domains: frozenset[str] | None
    # The parameters used, as (name, value) pairs for the self link (ignored ones left out).
    used: list[tuple[str, str]] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)

    def query_string(self, *, offset: int | None = None) -> str:
        pairs = [*self.used, ("_count", str(self.count))]
        if offset:
            pairs.append(("_offset", str(offset)))
        return "&".join(f"{quote(k, safe='-_:')}={quote(v, safe='|,-_.:')}" for k, v in pairs)


def parse_pairs(query_string: str) -> list[tuple[str, str]]:
    """``a=1&b=2`` as decoded pairs, in order, repeats kept (UTF-8 strictly)."""
    pairs = []
    for part in query_string.split("&"):
        if not part:
            continue
        raw_name, _, raw_value = part.partition("=")
        try:
            name, value = form_decode(raw_name), form_decode(raw_value)
        except UnicodeDecodeError:
            raise SearchError([FieldProblem(raw_name[:40], "is not valid UTF-8")]) from None
        pairs.append((name, value))
    return pairs


def split_values(value: str) -> list[str]:
    """Comma-separated values with FHIR's escapes (search.html 3.1.1.9)."""
    out, current, escaped = [], [], False
    for char in value:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == ",":
            out.append("".join(current))
            current = []
        else:
            current.append(char)
    if escaped:
        current.append("\\")
    out.append("".join(current))
    return out


def _split_token(raw: str) -> tuple[str | None, str | None, bool]:
    """(system, value, any_system) of a token value; ``\\|`` is a literal bar."""
    index = -1
    i = 0
    while i < len(raw):
        if raw[i] == "\\":
            i += 2
            continue
        if raw[i] == "|":
            index = i
            break
        i += 1
    unescape = lambda s: re.sub(r"\\(.)", r"\1", s)  # noqa: E731
    if index < 0:
        return None, unescape(raw), True
    system, value = raw[:index], raw[index + 1:]
    return (unescape(system) or None), (unescape(value) or None), False


def parse(pairs: Iterable[tuple[str, str]]) -> Search:
    problems: list[FieldProblem] = []
    terms: list[Term] = []
    used: list[tuple[str, str]] = []
    ignored: list[str] = []
    controls: dict[str, str] = {}
    domains: set[str] = set()
    for name, value in pairs:
        base, _, modifier = name.partition(":")
        if base in CONTROL_PARAMS:
            if base in controls:
                problems.append(FieldProblem(base, "may be given once"))
            controls[base] = value
            continue
        if base in IGNORED_CONTROLS:
            continue
        if base not in SEARCH_PARAMS:
            ignored.append(name)
            continue
        if value == "":
            problems.append(FieldProblem(name, "needs a value"))
            continue
        try:
            term = _term(base, modifier, value)
        except ValueError as exc:
            problems.append(FieldProblem(name, str(exc)))
            continue
        terms.append(term)
        used.append((name, value))
        if base == "identifier" and term.missing is None:
            tokens = [t for t in term.values if isinstance(t, Token)]
            if tokens and all(t.value is None and t.system for t in tokens):
                domains |= {system_of(t) for t in tokens}
    count = _integer(controls, "_count", DEFAULT_COUNT, 0, MAX_COUNT, problems)
    offset = _integer(controls, "_offset", 0, 0, MAX_OFFSET, problems)
    total_mode = controls.get("_total", "accurate")
    if total_mode not in ("none", "estimate", "accurate"):
        problems.append(FieldProblem("_total", "must be none, estimate or accurate"))
    summary = controls.get("_summary")
    if summary not in (None, "count", "false"):
        problems.append(FieldProblem("_summary", "only count and false are supported"))
    sort: list[tuple[str, bool]] = []
    for key in (controls.get("_sort") or "").split(","):
        if not key:
            continue
        descending = key.startswith("-")
        subject = key.lstrip("-")
        if subject not in SORTABLE:
            problems.append(FieldProblem("_sort", f"cannot sort by {subject!r}; one of "
                                         + ", ".join(SORTABLE)))
        else:
            sort.append((subject, descending))
    if problems:
        raise SearchError(problems)
    if controls.get("_sort"):
        used.append(("_sort", controls["_sort"]))
    if summary == "count":
        used.append(("_summary", "count"))
    return Search(Criteria(tuple(terms), tuple(sort)), count=0 if summary == "count" else count,
                  offset=offset, total=total_mode != "none" or summary == "count",
                  summary_count=summary == "count",
                  domains=frozenset(domains) if domains else None, used=used, ignored=ignored)


def system_of(token: Token) -> str:
    """The identifier system a token names, built-in domains spelt out."""
    if token.kind == "source":
        return SOURCE_SYSTEM + (token.system or "")
    if token.kind == "person":
        return PERSON_SYSTEM
    return token.system or ""


def _integer(controls: dict[str, str], name: str, default: int, low: int, high: int,
             problems: list[FieldProblem]) -> int:
    raw = controls.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or not low <= int(raw) <= high:
        problems.append(FieldProblem(name, f"must be a whole number from {low} to {high}"))
        return default
    return int(raw)


def _term(base: str, modifier: str, value: str) -> Term:
    subject: Any = base
    if modifier == "missing":
        if value not in ("true", "false"):
            raise ValueError(":missing takes true or false")
        return Term(subject, missing=value == "true")
    values = split_values(value)
    if base in STRING_PARAMS:
        if modifier not in ("", "exact", "contains"):
            raise ValueError(f"the modifier :{modifier} is not supported here "
                             "(exact, contains, missing are)")
        if any(not v.strip() for v in values):
            raise ValueError("an empty value between commas")
        mode = modifier or "prefix"
        return Term(subject, tuple(v.strip() for v in values), mode=mode)  # type: ignore[arg-type]
    if modifier:
        raise ValueError(f"the modifier :{modifier} is not supported here (missing is)")
    if base == "_id":
        return Term(subject, tuple(values))
    if base == "gender":
        for v in values:
            if v not in GENDERS:
                raise ValueError("must be male, female, other or unknown")
        return Term(subject, tuple(values))
    if base == "active":
        for v in values:
            if v not in ("true", "false"):
                raise ValueError("must be true or false")
        return Term(subject, tuple(v == "true" for v in values))
    if base in ("identifier", "telecom"):
        tokens = []
        for raw in values:
            system, val, any_system = _split_token(raw)
            if system is None and val is None:
                raise ValueError("needs a system, a value or both (system|value)")
            tokens.append(identifier_token(system, val, any_system) if base == "identifier"
                          else Token(system, val, any_system))
        return Term(subject, tuple(tokens))
    return Term(subject, tuple(parse_date(v) for v in values))


def identifier_token(system: str | None, value: str | None, any_system: bool = False) -> Token:
    """An identifier token, the built-in domains (a source's record ids, the enterprise
    identity) told apart."""
    if system is not None and system.startswith(SOURCE_SYSTEM):
        return Token(system[len(SOURCE_SYSTEM):], value, kind="source")
    if system == PERSON_SYSTEM:
        return Token(None, value, kind="person")
    return Token(system, value, any_system)


def parse_date(raw: str) -> DateRange:
    """``[prefix]YYYY[-MM[-DD[Thh:mm[:ss[.f]][tz]]]]`` as the interval it stands for."""
    comparator = "eq"
    if raw[:2] in _COMPARATORS:
        comparator, raw = raw[:2], raw[2:]
    match = _DATE_RE.match(raw)
    if match is None:
        raise ValueError("must be a date such as 1980, 1980-05, 1980-05-17 or "
                         "2024-01-31T10:00:00Z, optionally after eq, ne, lt, gt, le, ge, sa, "
                         "eb or ap")
    g = match.groupdict()
    try:
        year = int(g["y"])
        if g["H"] is None:
            if g["m"] is None:
                start, end = date(year, 1, 1), date(year + 1, 1, 1)
            elif g["d"] is None:
                month = int(g["m"])
                start = date(year, month, 1)
                end = date(year + (month == 12), month % 12 + 1, 1)
            else:
                start = date(year, int(g["m"]), int(g["d"]))
                end = start + timedelta(days=1)
            return DateRange(comparator, start, end)  # type: ignore[arg-type]
        moment = datetime(year, int(g["m"]), int(g["d"]), int(g["H"]), int(g["M"]),
                          int(g["S"] or 0), int((g["f"] or "0").ljust(6, "0")[:6]))
    except ValueError:
        raise ValueError("is not a real date") from None
    if g["tz"] and g["tz"] != "Z":
        sign = 1 if g["tz"][0] == "+" else -1
        hours, minutes = int(g["tz"][1:3]), int(g["tz"][4:6])
        moment -= sign * timedelta(hours=hours, minutes=minutes)
    step = (timedelta(minutes=1) if g["S"] is None else
            timedelta(seconds=1) if g["f"] is None else
            timedelta(microseconds=10 ** (6 - min(len(g["f"]), 6))))
    return DateRange(comparator, moment, moment + step)  # type: ignore[arg-type]
