from datetime import date

import pytest

from mpi.matching.comparisons import (
    BY_NAME,
    COMPARISONS,
    compare_address,
    compare_dob,
    compare_family,
    compare_given,
    compare_identifiers,
    compare_middle,
    compare_phone,
    compare_postcode,
    compare_sex,
    compare_ssn,
    one_typo,
)
from tests.matching.helpers import prep


def label(fn, a, b):
    name = {c.compare: c.name for c in COMPARISONS}[fn]
    return BY_NAME[name].labels[fn(a, b)]


def test_every_comparison_starts_with_null_and_ends_with_else():
    for c in COMPARISONS:
        assert len(c.labels) >= 3
        assert len(set(c.labels)) == len(c.labels)


@pytest.mark.parametrize("fn, field", [
    (compare_given, "given_name"), (compare_family, "family_name"), (compare_dob, "birth_date"),
    (compare_sex, "sex"), (compare_address, "address_line"), (compare_postcode, "postal_code"),
    (compare_phone, "phone"), (compare_ssn, "ssn")])
def test_missing_on_either_side_is_the_null_level(fn, field):
    full, empty = prep("a"), prep("b", **{field: None})
    assert fn(full, empty) == 0 and fn(empty, full) == 0 and fn(empty, empty) == 0


@pytest.mark.parametrize("x, y, expected", [
    ("William", "william", "exact"),
    ("William", "Bill", "nickname"),
    ("Elizabeth", "Betty", "nickname"),
    ("John", "Jon", "nickname"),
    # One name in two languages (name_variants.json), also where the nicknames package
    # calls it a nickname (John / Ivan), and through an English nickname (Bill / Guillermo).
    ("John", "Ivan", "another language's form"),
    ("Giovanni", "John", "another language's form"),
    ("Johann", "Hans", "another language's form"),
    ("Bill", "Guillermo", "another language's form"),
    ("Mary", "Maria", "another language's form"),
    ("Alexandra", "Alexandria", "similar (Jaro-Winkler >= 0.92)"),
    ("Catherine", "Kathryn", "sounds alike (NYSIIS/metaphone)"),
    ("W", "William", "initial only"),
    ("Maria", "Zoltan", "different"),
])
def test_given_name_levels(x, y, expected):
    assert label(compare_given, prep(given_name=x), prep(given_name=y)) == expected


def test_given_and_family_swapped():
    a = prep(given_name="Okonkwo", family_name="William")
    b = prep()
    assert label(compare_given, a, b).startswith("swapped")
    assert label(compare_family, a, b).startswith("swapped")


@pytest.mark.parametrize("a, b, expected", [
    # One record's names swapped, then one of them changed: the given name is found as
    # the other's family name, either way round, a typo allowed.
    (("Raquel", "Lodge"), ("Garnett", "Raquel"), "matches the other's family name"),
    (("Lodge", "Raquel"), ("Raquel", "Garnett"), "matches the other's family name"),
    (("Raquel", "Lodge"), ("Garnett", "Raquell"), "matches the other's family name"),
    # Both swapped is its own, stronger level; nothing in common stays different; an
    # initial is never taken for a family name.
    (("Raquel", "Lodge"), ("Lodge", "Raquel"), "swapped with family name"),
    (("Raquel", "Lodge"), ("Garnett", "Smith"), "different"),
    (("R", "Lodge"), ("Garnett", "R"), "different"),
])
def test_a_given_name_found_as_the_others_family_name(a, b, expected):
    first = prep(given_name=a[0], family_name=a[1])
    second = prep(given_name=b[0], family_name=b[1])
    assert label(compare_given, first, second).startswith(expected)
    assert label(compare_given, second, first).startswith(expected)


@pytest.mark.parametrize("x, y, expected", [
    ("Smith", "SMITH", "exact"),
    ("Okonkwo", "Okonkow", "similar (Jaro-Winkler >= 0.92)"),
    ("Smith", "Smyth", "sounds alike (NYSIIS/metaphone)"),
    ("Garcia Lopez", "Lopez", "shares a name part"),
    ("Okonkwo", "Nguyen", "different"),
])
def test_family_name_levels(x, y, expected):
    assert label(compare_family, prep(family_name=x), prep(family_name=y)) == expected


@pytest.mark.parametrize("x, y, expected", [
    (date(1980, 5, 7), date(1980, 5, 7), "exact"),
    (date(1980, 5, 7), date(1980, 7, 5), "day and month swapped"),
    (date(1980, 5, 17), date(1980, 5, 18), "one digit off or transposed"),
    (date(1980, 5, 17), date(1980, 5, 71 - 50), "different"),
    (date(1980, 5, 12), date(1980, 5, 21), "one digit off or transposed"),
    (date(1979, 5, 17), date(1980, 5, 17), "year one apart"),
    (date(1960, 1, 1), date(1980, 5, 17), "different"),
])
def test_birth_date_levels(x, y, expected):
    assert label(compare_dob, prep(birth_date=x), prep(birth_date=y)) == expected


def test_sex_levels():
    assert label(compare_sex, prep(sex="M"), prep(sex="male")) == "same"
    assert label(compare_sex, prep(sex="F"), prep(sex="male")) == "different"
    assert compare_sex(prep(sex="unknown"), prep(sex="male")) == 0  # unknown is missing


def test_address_and_postcode_levels():
    assert label(compare_address, prep(), prep(address_line="12 Harbor Street")) \
        .startswith("similar")
    assert label(compare_address, prep(), prep(address_line="99 Elm Road")) == "different"
    assert label(compare_postcode, prep(), prep(postal_code="01190")) == "different"
    assert label(compare_postcode, prep(), prep(postal_code="01108")) == "one character off"


def test_phone_levels():
    assert label(compare_phone, prep(), prep(phone="413-555-0101")) == "exact"
    assert label(compare_phone, prep(), prep(phone="413-555-0110")).startswith("one digit")
    assert label(compare_phone, prep(), prep(phone="617-555-0101")) == "same last 7 digits"


def test_ssn_one_typo_tolerance():
    assert label(compare_ssn, prep(), prep(ssn="123456789")) == "exact"
    assert label(compare_ssn, prep(), prep(ssn="123456788")).startswith("one digit off")
    assert label(compare_ssn, prep(), prep(ssn="123457689")).startswith("one digit off")
    assert label(compare_ssn, prep(), prep(ssn="512346789")) == "different"
    assert one_typo("12", "21") and not one_typo("123", "321") and not one_typo("1", "12")


def test_identifiers_agree_disagree_and_no_shared_system():
    a = prep(identifiers=(("urn:mrn:north", "A1"), ("urn:dl:ma", "S123")))
    same = prep(identifiers=(("urn:mrn:north", "A1"),))
    other_value = prep(identifiers=(("urn:mrn:north", "A2"),))
    other_system = prep(identifiers=(("urn:mrn:south", "A1"),))
    assert label(compare_identifiers, a, same) == "same value in a shared system"
    assert label(compare_identifiers, a, other_value) == "different value in a shared system"
    assert compare_identifiers(a, other_system) == 0
    assert compare_identifiers(a, prep()) == 0


@pytest.mark.parametrize(("left", "right", "expected"), [
    ("Paul", "Paul", "same name (Jaro-Winkler >= 0.92)"),
    ("Jonathon", "Jonathan", "same name (Jaro-Winkler >= 0.92)"),
    ("P", "P.", "same initial"),
    ("P", "Paul", "initial agrees with the name"),
    ("Paul", "M", "different"),
    ("Paul", "Michael", "different"),
    ("K", "M", "different"),
    (None, "Paul", "missing"),
    ("Unknown", "Paul", "missing"),  # a placeholder is no middle name
])
def test_middle_name_levels(left, right, expected):
    assert label(compare_middle, prep(middle_name=left), prep(middle_name=right)) == expected
