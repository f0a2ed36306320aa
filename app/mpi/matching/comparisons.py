"""Comparisons: each an ordered list of levels with readable labels.

A comparison looks at two prepared records and returns the index of the first level
whose condition holds. Level 0 is always the *null* level (the value is missing on
either side): it carries weight 0 — no evidence, never disagreement. The last level is
"else" (the values disagree). The model (``model.py``) gives every level an m and a u
probability; the labels here are the contract between the code and the model JSON.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from rapidfuzz.distance import Hamming, JaroWinkler, Levenshtein

from mpi.matching.record import PreparedRecord, other_language_form

_jw = JaroWinkler.normalized_similarity
_lev = Levenshtein.distance
_ham = Hamming.distance

NULL = 0


@dataclass(frozen=True, slots=True)
class Comparison:
    name: str  # model key, e.g. "given_name"
    title: str  # for sentences, e.g. "given name"
    labels: tuple[str, ...]  # level labels; labels[0] is the null level, labels[-1] "else"
    compare: Callable[[PreparedRecord, PreparedRecord], int]
    # attribute whose value the term-frequency adjustment looks up on the exact level (1)
    tf_attribute: str | None = None
    # Levels that say "these are probably different people" (shown first in reasons).
    show_values: bool = False

    def phrase(self, level: int, a: PreparedRecord, b: PreparedRecord) -> str:
        label = self.labels[level]
        if self.show_values and level not in (NULL, 1):
            va, vb = getattr(a, self.tf_attribute or ""), getattr(b, self.tf_attribute or "")
            return f"{self.title} {label} ({va.title()}/{vb.title()})"
        return f"{self.title} {label}"


def one_typo(x: str, y: str) -> bool:
    """Same length and one substituted character, or two adjacent characters transposed."""
    if len(x) != len(y) or x == y:
        return False
    distance = _ham(x, y, score_cutoff=2)
    if distance != 2:
        return distance == 1
    diff = [i for i in range(len(x)) if x[i] != y[i]]
    return (len(diff) == 2 and diff[1] == diff[0] + 1
            and x[diff[0]] == y[diff[1]] and x[diff[1]] == y[diff[0]])


def _swapped(given_a: str, family_a: str, given_b: str, family_b: str) -> bool:
    """Given and family names swapped between the records (each pair similar, JW >= 0.92)."""
    if not (given_a and family_a and given_b and family_b):
        return False
    return _jw(given_a, family_b) >= 0.92 and _jw(family_a, given_b) >= 0.92


# --- names -------------------------------------------------------------------------------

GIVEN_LABELS = ("missing", "exact", "swapped with family name (Jaro-Winkler >= 0.92)",
                "nickname", "another language's form",
                "similar (Jaro-Winkler >= 0.92)", "sounds alike (NYSIIS/metaphone)",
                "fuzzy (Jaro-Winkler >= 0.80)", "initial only",
                "matches the other's family name (Jaro-Winkler >= 0.92)", "different")


def _crossed(a: PreparedRecord, b: PreparedRecord) -> bool:
    """One record's given name is the other's family name (JW >= 0.92), either way round:
    the names were swapped on one record and one of them then mistyped or replaced, or a
    clerk put a name in the wrong field."""
    return ((len(a.given) > 1 and len(b.family) > 1 and _jw(a.given, b.family) >= 0.92)
            or (len(a.family) > 1 and len(b.given) > 1 and _jw(a.family, b.given) >= 0.92))


def compare_given(a: PreparedRecord, b: PreparedRecord) -> int:
    x, y = a.given, b.given
    if not x or not y:
        return 0
    if x == y:
        return 1
    if _swapped(x, a.family, y, b.family):
        return 2
    # One name in two languages (John / Ivan / Johann) before the nickname test: the
    # nicknames package lists some of those as nicknames, and they are weaker evidence.
    if other_language_form(a.given_langs, b.given_langs):
        return 4
    if a.given_forms & b.given_forms:
        return 3
    if len(x) == 1 or len(y) == 1:
        return 8 if x[0] == y[0] else 10
    jw = _jw(x, y)
    if jw >= 0.92:
        return 5
    if (a.given_nysiis and a.given_nysiis == b.given_nysiis) or (
            a.given_meta and a.given_meta == b.given_meta):
        return 6
    if jw >= 0.80:
        return 7
    return 9 if _crossed(a, b) else 10


MIDDLE_LABELS = ("missing", "same name (Jaro-Winkler >= 0.92)", "same initial",
                 "initial agrees with the name", "different")


def compare_middle(a: PreparedRecord, b: PreparedRecord) -> int:
    """Middle names (or their initials): present on most records, often the only
    evidence besides the names across sources, and what separates a father and a son, or
    two household members, of one given name."""
    x, y = a.middle, b.middle
    if not x or not y:
        return 0
    short_x, short_y = len(x) == 1, len(y) == 1
    if short_x and short_y:
        return 2 if x == y else 4
    if short_x or short_y:
        return 3 if x[0] == y[0] else 4
    return 1 if x == y or _jw(x, y) >= 0.92 else 4


FAMILY_LABELS = ("missing", "exact", "swapped with given name (Jaro-Winkler >= 0.92)",
                 "similar (Jaro-Winkler >= 0.92)", "sounds alike (NYSIIS/metaphone)",
                 "shares a name part",
                 "fuzzy (Jaro-Winkler >= 0.80)", "different")


def compare_family(a: PreparedRecord, b: PreparedRecord) -> int:
    x, y = a.family, b.family
    if not x or not y:
        return 0
    if x == y:
        return 1
    jw = _jw(x, y)
    if jw >= 0.92:
        return 3
    if _swapped(a.given, x, b.given, y):
        return 2
    if (a.family_nysiis and a.family_nysiis == b.family_nysiis) or (
            a.family_meta and a.family_meta == b.family_meta):
        return 4
    if (a.family_parts or b.family_parts) and (
            (a.family_parts or {x}) & (b.family_parts or {y})):
        return 5
    if jw >= 0.80:
        return 6
    return 7


# --- date of birth -----------------------------------------------------------------------

DOB_LABELS = ("missing", "exact", "day and month swapped", "one digit off or transposed",
              "year one apart", "different")


def compare_dob(a: PreparedRecord, b: PreparedRecord) -> int:
    x, y = a.dob, b.dob
    if not x or not y:
        return 0
    if x == y:
        return 1
    if x[:4] == y[:4] and x[4:6] == y[6:8] and x[6:8] == y[4:6]:
        return 2
    if one_typo(x, y):
        return 3
    if x[4:] == y[4:] and abs(int(x[:4]) - int(y[:4])) == 1:
        return 4
    return 5


# --- sex, address, phone -----------------------------------------------------------------

SEX_LABELS = ("missing", "same", "different")


def compare_sex(a: PreparedRecord, b: PreparedRecord) -> int:
    if not a.sex or not b.sex:
        return 0
    return 1 if a.sex == b.sex else 2


ADDRESS_LABELS = ("missing", "exact", "similar (Jaro-Winkler >= 0.90)",
                  "fuzzy (Jaro-Winkler >= 0.75)", "different")


def compare_address(a: PreparedRecord, b: PreparedRecord) -> int:
    x, y = a.address, b.address
    if not x or not y:
        return 0
    if x == y:
        return 1
    jw = _jw(x, y)
    if jw >= 0.90:
        return 2
    if jw >= 0.75:
        return 3
    return 4


CITY_LABELS = ("missing", "exact", "similar (Jaro-Winkler >= 0.90)", "different")


def compare_city(a: PreparedRecord, b: PreparedRecord) -> int:
    x, y = a.city, b.city
    if not x or not y:
        return 0
    if x == y:
        return 1
    return 2 if _jw(x, y) >= 0.90 else 3


STATE_LABELS = ("missing", "same", "different")


def compare_state(a: PreparedRecord, b: PreparedRecord) -> int:
    if not a.state or not b.state:
        return 0
    return 1 if a.state == b.state else 2


POSTCODE_LABELS = ("missing", "exact", "one character off", "different")


def compare_postcode(a: PreparedRecord, b: PreparedRecord) -> int:
    x, y = a.postcode, b.postcode
    if not x or not y:
        return 0
    if x == y:
        return 1
    return 2 if _lev(x, y, score_cutoff=1) <= 1 else 3


PHONE_LABELS = ("missing", "exact", "one digit off or transposed", "same last 7 digits",
                "different")


def compare_phone(a: PreparedRecord, b: PreparedRecord) -> int:
    x, y = a.phone, b.phone
    if not x or not y:
        return 0
    if x == y:
        return 1
    if one_typo(x, y):
        return 2
    if x[-7:] == y[-7:]:
        return 3
    return 4


# --- identifiers -------------------------------------------------------------------------

SSN_LABELS = ("missing", "exact", "one digit off or transposed", "different")


def compare_ssn(a: PreparedRecord, b: PreparedRecord) -> int:
    x, y = a.ssn, b.ssn
    if not x or not y:
        return 0
    if x == y:
        return 1
    return 2 if one_typo(x, y) else 3


IDENTIFIER_LABELS = ("no shared system", "same value in a shared system",
                     "different value in a shared system")


def compare_identifiers(a: PreparedRecord, b: PreparedRecord) -> int:
    x, y = a.identifiers, b.identifiers
    if not x or not y:
        return 0
    disagree = False
    for system, values in x.items():
        other = y.get(system)
        if other is not None:
            if values & other:
                return 1
            disagree = True
    return 2 if disagree else 0


PARTIAL_DOB_LABELS = ("missing or both full", "agrees as far as it is known", "different")


def compare_partial_dob(a: PreparedRecord, b: PreparedRecord) -> int:
    """A birth date known only to the year or month on one side at least (the full dates
    are ``birth_date``'s): the known part against the same part of the other."""
    x, y = a.dob_known, b.dob_known
    if not x or not y or (len(x) == 8 and len(y) == 8):
        return 0
    n = min(len(x), len(y))
    return 1 if x[:n] == y[:n] else 2


MMN_LABELS = ("missing", "exact", "similar (Jaro-Winkler >= 0.92)", "different")


def compare_mmn(a: PreparedRecord, b: PreparedRecord) -> int:
    """Mother's maiden name (PDQm's identity check; a registration desk asks for it)."""
    x, y = a.mmn, b.mmn
    if not x or not y:
        return 0
    if x == y:
        return 1
    return 2 if _jw(x, y) >= 0.92 else 3


COMPARISONS: tuple[Comparison, ...] = (
    Comparison("given_name", "given name", GIVEN_LABELS, compare_given, "given", True),
    Comparison("middle_name", "middle name", MIDDLE_LABELS, compare_middle, "middle", True),
    Comparison("family_name", "family name", FAMILY_LABELS, compare_family, "family", True),
    Comparison("birth_date", "date of birth", DOB_LABELS, compare_dob),
    Comparison("sex", "sex", SEX_LABELS, compare_sex),
    Comparison("address_line", "address", ADDRESS_LABELS, compare_address),
    Comparison("city", "city", CITY_LABELS, compare_city),
    Comparison("state", "state", STATE_LABELS, compare_state),
    Comparison("postal_code", "postal code", POSTCODE_LABELS, compare_postcode),
    Comparison("phone", "phone", PHONE_LABELS, compare_phone),
    Comparison("ssn", "SSN", SSN_LABELS, compare_ssn),
    Comparison("identifiers", "identifier", IDENTIFIER_LABELS, compare_identifiers),
    Comparison("mothers_maiden_name", "mother's maiden name", MMN_LABELS, compare_mmn),
    Comparison("birth_date_partial", "partial date of birth", PARTIAL_DOB_LABELS,
               compare_partial_dob),
)

BY_NAME = {c.name: c for c in COMPARISONS}
NAMES_INDEX = {c.name: i for i, c in enumerate(COMPARISONS)}


_COMPARE = tuple(c.compare for c in COMPARISONS)


def levels(a: PreparedRecord, b: PreparedRecord) -> tuple[int, ...]:
    """The level of every comparison for one pair (the EM and u-sampling input)."""
    return tuple([compare(a, b) for compare in _COMPARE])
