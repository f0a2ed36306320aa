from datetime import date

import pytest

from mpi.matching.blocking import EM_RULES, MAX_KEY, blocking_keys, probe_keys
from mpi.matching.record import MatchRecord
from tests.matching.helpers import prep, rec


def meet(a, b) -> bool:
    """Whether linking makes them candidates: what one looks up, the other holds."""
    return bool(set(probe_keys(blocking_keys(a))) & set(blocking_keys(b)))


@pytest.mark.parametrize("changes", [
    {"family_name": "Okonkow", "given_name": "Wiliam"},  # typos in both names
    {"given_name": "Bill", "ssn": None},  # nickname
    {"birth_date": date(1980, 17 - 12, 17)},  # same (control)
    {"given_name": "Okonkwo", "family_name": "William", "ssn": None},  # names swapped
    {"family_name": "Adeyemi", "ssn": None, "postal_code": "02139", "address_line": "1 Main St"},
    {"address_line": "77 New Road", "city": "Boston", "postal_code": "02118", "phone": None,
     "ssn": None},  # moved house
    {"given_name": "Wilhelm", "family_name": "Okonkwo-Adeyemi", "birth_date": None,
     "postal_code": None, "phone": None, "ssn": "123-45-6780"},  # SSN one digit off
    {"given_name": None, "family_name": None, "birth_date": None, "postal_code": None,
     "phone": None, "ssn": "123-54-6789"},  # SSN transposed digits
    {"family_name": "Okonkow", "birth_date": date(1980, 5, 18), "ssn": None},  # dob typo
])
def test_typical_errors_still_meet(changes):
    assert meet(rec("a"), rec("b", **changes))


def test_swapped_day_and_month_meet_without_other_identifiers():
    a = rec("a", birth_date=date(1980, 5, 7), ssn=None, phone=None, postal_code=None)
    b = rec("b", birth_date=date(1980, 7, 5), ssn=None, phone=None, postal_code=None,
            family_name="Okonkow")
    assert meet(a, b)


def test_strangers_do_not_meet():
    other = rec("b", given_name="Maria", family_name="Nguyen", birth_date=date(1955, 1, 2),
                postal_code="02118", phone="617 555 0199", ssn="987654321")
    assert not meet(rec("a"), other)


def test_identifiers_meet_and_long_keys_are_hashed():
    long_value = "X" * 200
    a = MatchRecord("a", identifiers=(("urn:mrn:north", long_value),))
    b = MatchRecord("b", identifiers=(("urn:mrn:north", long_value.lower()),))
    assert meet(a, b)
    assert all(len(k) <= MAX_KEY for k in blocking_keys(a))
    assert all(len(k) <= MAX_KEY for k in blocking_keys(rec("x", given_name="A" * 300)))


def test_keys_are_sorted_unique_and_empty_records_have_none():
    keys = blocking_keys(rec("a"))
    assert keys == sorted(set(keys))
    assert blocking_keys(MatchRecord("empty")) == []
    assert blocking_keys(MatchRecord("placeholder", ssn="000-00-0000")) == []


def test_em_rules_fix_the_comparisons_they_block_on():
    by_name = {r.name: r for r in EM_RULES}
    assert by_name["same date of birth"].fixes == ("birth_date",)
    assert by_name["same date of birth"].key(prep()) == "19800517"
    assert by_name["same given and family name"].key(prep(family_name=None)) is None


def _shared(a: MatchRecord, b: MatchRecord) -> set[str]:
    return set(blocking_keys(a)) & set(blocking_keys(b))


def test_records_missing_different_fields_still_meet():
    """A benefits feed (name, birth date, SSN; no address) against a payroll feed (name
    and address; no birth date, no sex): before, no key could hold both."""
    benefits = MatchRecord("b", given_name="Thandiwe", family_name="Mokoena",
                           birth_date=date(1971, 3, 9), ssn="512-34-6789")
    payroll = MatchRecord("p", given_name="Thandiwe", family_name="Mokoena",
                          address_line="4 Quarry Lane", city="Springfield")
    assert sorted(k.split(":", 1)[0] for k in _shared(benefits, payroll)) == ["f", "m"]
    # A household record with no birth date and a mistyped postal code meets by address.
    home = MatchRecord("h", given_name="T", family_name="Mokoena",
                       address_line="4 Quarry Lane", postal_code="01119")
    desk = MatchRecord("d", given_name="Thandie", family_name="Mokoena",
                       address_line="4 Quarry Lane", postal_code="01109",
                       birth_date=date(1971, 3, 9))
    assert {k.split(":", 1)[0] for k in _shared(home, desk)} == {"f", "l"}
    # A mistyped given name changes its sound; its first letter and the family name stay.
    typed = MatchRecord("t", given_name="Thnadiwe", family_name="Mokoena",
                        address_line="4 Quarry Lane", city="Springfield")
    assert [k.split(":", 1)[0] for k in _shared(benefits, typed)] == ["f"]


def test_name_keys_need_both_names():
    assert not [k for k in blocking_keys(MatchRecord("x", family_name="Mokoena"))
                if k.startswith(("m:", "l:"))]


def test_the_family_name_and_initial_find_only_records_without_a_birth_date():
    """The ``f:`` key (family name and initial) is for pairs where one side has no birth
    date. Two dated records meet through the keys holding the date; looked up by every
    record, this key brought three quarters of each record's candidates at 700,000."""
    dated = MatchRecord("a", given_name="Thandiwe", family_name="Mokoena",
                        birth_date=date(1971, 3, 9))
    other_dated = MatchRecord("b", given_name="Thembi", family_name="Mokoena",
                              birth_date=date(1985, 1, 2))
    undated = MatchRecord("c", given_name="Thabo", family_name="Mokoena",
                          address_line="4 Quarry Lane")
    other_undated = MatchRecord("d", given_name="Themba", family_name="Mokoena")
    f = [k for k in blocking_keys(dated) if k.startswith("f:")]
    assert len(f) == 1 and not [k for k in blocking_keys(dated) if k.startswith("u:")]
    # Both kept by a record without a birth date; each record looks up one of them.
    assert {k[:2] for k in blocking_keys(undated)} >= {"f:", "u:"}
    assert f"u:{f[0][2:]}" in probe_keys(blocking_keys(dated))
    assert f[0] not in probe_keys(blocking_keys(dated))
    assert f[0] in probe_keys(blocking_keys(undated))
    assert not [k for k in probe_keys(blocking_keys(undated)) if k.startswith("u:")]
    assert not meet(dated, other_dated) and not meet(other_dated, dated)
    for a, b in ((dated, undated), (undated, other_undated), (other_dated, other_undated)):
        assert meet(a, b) and meet(b, a), (a.record_id, b.record_id)


def test_probe_keys_change_nothing_else():
    keys = blocking_keys(rec("a"))
    assert [k for k in probe_keys(keys) if not k.startswith("u:")] == \
        [k for k in keys if not k.startswith("f:")]
