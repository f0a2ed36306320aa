from datetime import date

import pytest

from mpi.matching.model import Model
from mpi.matching.scoring import Scorer, score, term_frequencies
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
