from datetime import date

import pytest

from mpi.matching.model import Model
from mpi.matching.record import field_form
from mpi.matching.scoring import (
    REGISTRY_MIN_HOLDERS,
    REGISTRY_MIN_RECORDS,
    Scorer,
    frequencies_from_counts,
    registry_frequencies,
    score,
    term_frequencies,
)
from tests.matching.helpers import prep, rec


def test_score_explains_itself():
    s = score(rec("a"), rec("b", given_name="Bill", family_name="Okonkow", ssn="512-34-6789"))
    assert [c.comparison for c in s.comparisons][:4] == ["given_name", "middle_name",
                                                        "family_name", "birth_date"]
    by_name = {c.comparison: c for c in s.comparisons}
    assert by_name["given_name"].label == "nickname"
    assert by_name["ssn"].label == "different" and by_name["ssn"].weight < 0
    assert "given name nickname (William/Bill)" in s.reason
    assert "date of birth exact" in s.reason and "SSN different" in s.reason
    assert s.weight == sum(c.weight for c in s.comparisons)
    assert 0.0 <= s.probability <= 1.0


def test_missing_values_are_no_evidence():
    full = score(rec("a"), rec("b"))
    sparse = score(rec("a"), rec("b", ssn=None, phone=None))
    by_name = {c.comparison: c for c in sparse.comparisons}
    assert by_name["ssn"].weight == 0.0 and by_name["ssn"].label == "missing"
    assert "SSN" not in sparse.reason
    assert 0 < sparse.weight < full.weight


def test_identical_records_match_and_strangers_do_not():
    assert score(rec("a"), rec("b")).probability > 0.999
    stranger = rec("b", given_name="Maria", family_name="Nguyen", birth_date=None, sex="female",
                   address_line="9 Elm Road", city="Boston", postal_code="02118",
                   phone="617 555 0199", ssn="987654321")
    assert score(rec("a"), stranger).probability < 0.001


def test_common_family_names_weigh_less_than_rare_ones():
    people = [prep(str(i), family_name="Smith") for i in range(50)] + [prep("z")]
    scorer = Scorer(Model.default(), term_frequencies(people))
    common = scorer.score(prep("x", family_name="Smith"), prep("y", family_name="Smith"))
    rare = scorer.score(prep("x"), prep("y"))  # Okonkwo: 1 in 51
    w = {c.comparison: c.weight for c in common.comparisons}
    w_rare = {c.comparison: c.weight for c in rare.comparisons}
    assert w["family_name"] < w_rare["family_name"]
    assert common.weight < rare.weight


def test_scores_are_symmetric_in_weight():
    a = prep("a", given_name="Bill", birth_date=None)
    b = prep("b", family_name="Okonkow")
    s = Scorer(Model.default())
    assert s.score(a, b).weight == s.score(b, a).weight


def test_a_household_is_one_fact_not_five():
    """A relative at the same address with the same phone (another given name, birth date,
    sex and SSN) is not the patient: address, city, state, postal code and phone agree
    together, so their agreement counts once. Summed as independent evidence they made
    these pairs certain matches (p 0.99999) and the service merged the records."""
    john = prep("john")
    wife = prep("wife", given_name="Grace", sex="female", birth_date=date(1982, 3, 9),
                ssn="987-65-4321")
    son = prep("son", given_name="Chidi", birth_date=date(2009, 11, 30), ssn=None)
    assert score(john, wife).probability < 0.5  # not even a review
    for relative in (wife, son):
        pair = score(john, relative)
        # Never a link (0.95); the son, of John's surname and sex, is left to a steward.
        assert pair.probability < 0.95, (relative.record.record_id, pair.reason)
        counted = dict(zip([c.comparison for c in pair.comparisons], pair.weights,
                           strict=True))
        assert counted["phone"] > 0
        assert counted["address_line"] == counted["city"] == counted["postal_code"] == 0
        assert sum(pair.weights) == pytest.approx(pair.weight)
        assert sum(pair.raw_weights) > pair.weight  # each member on its own still shows
    # The same patient still matches with certainty, and a move still counts against.
    assert score(john, prep("again")).probability > 0.999
    moved = score(john, prep("moved", address_line="9 Elm Road", city="Boston", state="MA",
                             postal_code="02118", phone="+1 617 555 0199"))
    assert moved.weight < score(john, prep("again")).weight - 20


def test_mothers_maiden_name_is_evidence_both_ways():
    base = score(prep("a", mothers_maiden_name="Adebayo"), prep("b", given_name="Bill",
                                                              mothers_maiden_name="Adebayo"))
    other = score(prep("a", mothers_maiden_name="Adebayo"), prep("b", given_name="Bill",
                                                               mothers_maiden_name="Nwosu"))
    unknown = score(prep("a"), prep("b", given_name="Bill"))
    assert other.weight < unknown.weight < base.weight
    assert "mother's maiden name exact" in base.reason


def _town(n: int = 1000) -> list:
    """``n`` different people of one town (postal code 01109), a few on each street."""
    return [prep(f"t{i}", given_name=f"G{i:04d}x", family_name=f"F{i:04d}y", ssn=None,
                 phone=None, address_line=f"{i % 300} Elm Street") for i in range(n)]


def test_registry_frequencies_lower_common_values_only():
    """Sharing the town's postal code weighs (almost) nothing once the registry says
    everybody shares it; a rare value never weighs more than the model says, and a
    lowered agreement never becomes evidence against."""
    registry = registry_frequencies(_town())
    assert registry["postal_code"] == {"01109": 1.0}
    assert registry["family_name"] == {}  # nobody's family name is held by 10 records
    model = Model.default()
    plain, counted = Scorer(model), Scorer(model, registry=registry)
    a = prep("a", address_line="1 Oak Road", phone=None)
    b = prep("b", address_line="9 Ash Lane", phone=None)
    before, after = plain.score(a, b), counted.score(a, b)
    by_name = {c.comparison: c.weight for c in after.comparisons}
    assert by_name["postal_code"] == 0.0 and by_name["city"] == 0.0
    assert by_name["family_name"] == {c.comparison: c.weight
                                      for c in before.comparisons}["family_name"]
    assert after.weight < before.weight - 5
    assert after.weight == pytest.approx(sum(c.weight for c in after.comparisons))
    rare = Scorer(model, registry={"postal_code": {"01109": 1e-6}})
    assert rare.score(a, b).weight == before.weight


def test_a_small_registry_or_a_few_holders_lower_nothing():
    """In a small registry every value a person's own records share looks common."""
    assert registry_frequencies(_town(REGISTRY_MIN_RECORDS - 1)) == {}
    town = _town() + [prep(f"s{i}", postal_code="99999") for i in range(REGISTRY_MIN_HOLDERS - 1)]
    assert "99999" not in registry_frequencies(town)["postal_code"]


def test_counts_from_the_database_add_up_what_normalises_alike():
    """The database counts raw values; spellings of one value are one, placeholders none."""
    counts = {"city": {"Springfield": 600, "SPRINGFIELD": 300, "Unknown": 50, "Salem": 50},
              "postal_code": {"011 09": 20, "01109": 980}, "mothers_maiden_name": {"X": 9}}
    tables = frequencies_from_counts(counts, 1000)
    assert tables == {"city": {"springfield": 0.9, "salem": 0.05},
                      "postal_code": {"01109": 1.0}}
    assert frequencies_from_counts(counts, REGISTRY_MIN_RECORDS - 1) == {}
    for field, raw in (("given_name", "  Mary-Ann "), ("family_name", "O'Brien"),
                       ("city", "St. Louis"), ("state", "MA"), ("postal_code", "011 09")):
        attr = {"given_name": "given", "family_name": "family", "postal_code": "postcode"}
        assert field_form(field, raw) == getattr(prep(**{field: raw}), attr.get(field, field))
