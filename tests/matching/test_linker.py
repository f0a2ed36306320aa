from datetime import date

import pytest

from mpi.matching.batch import dedupe, link
from mpi.matching.comparisons import NAMES_INDEX
from mpi.matching.linker import Linker, decide, person_weight
from mpi.matching.model import Model
from mpi.matching.scoring import Scorer
from tests.matching.helpers import prep, rec

SCORER = Scorer(Model.default())
LINK, REVIEW = 0.95, 0.80


def s(a, b):
    return SCORER.score(a, b)


def test_link_to_the_best_person_and_report_other_strong_persons_as_duplicates():
    x = prep("x")
    p1 = [prep("p1a"), prep("p1b", phone=None)]
    p2 = [prep("p2a", given_name="Bill", ssn=None)]
    p3 = [prep("p3a", given_name="Maria", family_name="Nguyen", birth_date=date(1950, 1, 1),
               ssn="987654321", phone=None, address_line="9 Elm Road", postal_code="02118")]
    d = decide({pid: [s(x, r) for r in rs] for pid, rs in
                (("P1", p1), ("P2", p2), ("P3", p3))}, LINK, REVIEW)
    assert d.kind == "link" and d.person_id == "P1"
    assert d.probability is not None and d.probability >= LINK
    assert [c.person_id for c in d.candidates] == ["P1", "P2", "P3"]
    assert [c.person_id for c in d.duplicates] == ["P2"]
    assert d.candidates[0].best.right_id in {"p1a", "p1b"}


def test_new_and_review():
    x = prep("x")
    stranger = prep("y", given_name="Maria", family_name="Nguyen", birth_date=None,
                    ssn="987654321", phone=None, address_line="9 Elm Road", postal_code="02118")
    assert decide({}, LINK, REVIEW).kind == "new"
    d = decide({"P": [s(x, stranger)]}, LINK, REVIEW)
    assert d.kind == "new" and d.person_id is None and len(d.candidates) == 1
    # Only the names and the year of birth agree: some evidence, not enough to link.
    weak = prep("w", ssn=None, phone=None, address_line=None, postal_code=None, city=None,
                birth_date=date(1980, 6, 1), sex=None)
    sc = s(prep("x", ssn=None, phone=None, address_line=None, postal_code=None, city=None,
                sex=None), weak)
    assert 0.0 < sc.probability < LINK
    d = decide({"P": [sc]}, LINK, sc.probability / 2)
    assert d.kind == "review" and d.person_id == "P"


def test_excluded_persons_are_never_chosen():
    x = prep("x")
    d = decide({"P1": [s(x, prep("a"))], "P2": [s(x, prep("b", phone=None))]}, LINK, REVIEW,
               excluded={"P1"})
    assert d.kind == "link" and d.person_id == "P2"
    assert d.excluded == ("P1",) and all(c.person_id != "P1" for c in d.candidates)
    d = decide({"P1": [s(x, prep("a"))]}, LINK, REVIEW, excluded={"P1"})
    assert d.kind == "new"


def test_no_chaining_through_one_sparse_record():
    """A person = {A (full, SSN 111...), B (name and date only)}. X agrees with B on everything
    B has, but carries a different SSN and address than A. X vs B alone would link; against
    the person as a whole it must not."""
    a = prep("A")
    b = prep("B", ssn=None, phone=None, address_line=None, city=None, postal_code=None,
             state=None)
    x = prep("X", ssn="555-11-2222", phone="617 555 0199", address_line="9 Elm Road",
             city="Boston", postal_code="02118")
    assert s(x, b).probability >= LINK  # the weak bridge on its own
    d = decide({"P": [s(x, a), s(x, b)]}, LINK, REVIEW)
    assert d.kind != "link"
    assert person_weight([s(x, a), s(x, b)]) < s(x, b).weight


def test_sparse_records_do_not_dilute_a_person():
    full = prep("F")
    sparse = prep("S", ssn=None, phone=None, address_line=None, city=None, postal_code=None,
                  state=None, sex=None)
    x = prep("X")
    together = person_weight([s(x, full), s(x, sparse)])
    assert together >= s(x, sparse).weight
    assert decide({"P": [s(x, full), s(x, sparse)]}, LINK, REVIEW).kind == "link"


def test_a_strong_pair_is_not_dragged_down_by_the_persons_weaker_records():
    """A person = {A, B (a typo in the given name, a mistyped address)}. X is A again.
    Averaging over the person used to pull X under the threshold it reaches against A."""
    a = prep("A")
    b = prep("B", given_name="Wiliam", address_line="12 Harbor Street", phone=None)
    x = prep("X")
    assert person_weight([s(x, a), s(x, b)]) == pytest.approx(s(x, a).weight)
    assert decide({"P": [s(x, a), s(x, b)]}, LINK, REVIEW).kind == "link"


def test_a_strong_pair_counts_when_most_of_the_person_agrees():
    """A person = {A, B, C (its given name replaced by a clerk's error)}. X is A again:
    two of the person's three records agree with X on the given name, and the majority's
    evidence counts (the median); the mean let the one odd record pull X under the
    threshold. When most of the person disagrees, the disagreement counts."""
    a, b = prep("A"), prep("B", phone=None)
    odd = prep("C", given_name="Zoltan", phone=None)
    x = prep("X", ssn=None)
    person = [s(x, a), s(x, b), s(x, odd)]
    given = NAMES_INDEX["given_name"]
    same, different = s(x, a).raw_weights[given], s(x, odd).raw_weights[given]
    assert same > 0 > different
    # The given name counts as the two agreeing records say (the mean: a third of it).
    assert person_weight(person) == pytest.approx(person_weight([s(x, a), s(x, b)]))
    assert decide({"P": person}, LINK, REVIEW).kind == "link"
    outvoted = [s(x, a), s(x, prep("D", given_name="Zoltan")), s(x, odd)]
    assert person_weight(outvoted) == pytest.approx(s(x, a).weight - same + different)


def test_a_name_found_only_in_the_others_other_field_needs_more_evidence():
    """"Raquel Lodge" and "Garnett Raquel" born on one day, nothing else in common: the
    given name agrees only across fields (weak evidence, a variant for the twin guard):
    not linked. With the address in common as well, linked."""
    bare = {"address_line": None, "city": None, "state": None, "postal_code": None,
            "phone": None, "ssn": None, "sex": None}
    raquel = dict(given_name="Raquel", family_name="Lodge")
    crossed = dict(given_name="Garnett", family_name="Raquel")
    pair = s(prep("b", **crossed, **bare), prep("a", **raquel, **bare))
    assert decide({"A": [pair]}, LINK, REVIEW).kind != "link"
    housed = s(prep("b", **crossed, ssn=None), prep("a", **raquel, ssn=None))
    assert housed.comparisons[NAMES_INDEX["given_name"]].label.startswith("matches the other")
    assert decide({"A": [housed]}, LINK, REVIEW).kind == "link"


def test_thresholds_are_checked():
    with pytest.raises(ValueError):
        decide({}, 0.5, 0.9)


def test_linker_applies_the_rule_online_and_batch_gives_the_same_clusters():
    records = [
        rec("1"), rec("2", given_name="Bill", phone=None), rec("3", family_name="Okonkow"),
        rec("4", given_name="Maria", family_name="Nguyen", birth_date=date(1950, 1, 1),
            ssn="987654321", phone=None, address_line="9 Elm Road", postal_code="02118"),
        rec("5", given_name="Mary", family_name="Nguyen", birth_date=date(1950, 1, 1),
            ssn="987654321", phone=None, address_line="9 Elm Rd", postal_code="02118"),
    ]
    linker = Linker(Model.default(), link_threshold=LINK, review_threshold=REVIEW)
    kinds = [linker.add(r).kind for r in records]
    assert kinds == ["new", "link", "link", "new", "link"]
    assert linker.clusters == {"1": "1", "2": "1", "3": "1", "4": "4", "5": "4"}
    assert dedupe(records, Model.default(), link_threshold=LINK).clusters == linker.clusters
    with pytest.raises(ValueError):
        linker.add(rec("1"))


def test_linker_excluded_person_starts_a_new_one():
    linker = Linker(Model.default())
    linker.add(rec("1"))
    d = linker.add(rec("2"), excluded={"1"})
    assert d.kind == "new" and linker.person_of("2") == "2"
    d = linker.decide(rec("3"))  # decide alone changes nothing
    assert d.kind == "link" and [c.person_id for c in d.duplicates] == ["2"]
    with pytest.raises(KeyError):
        linker.person_of("3")


def test_persons_a_later_record_proves_one_are_merged_when_it_arrives():
    r1 = rec("1", ssn=None, phone=None)
    r2 = rec("2", given_name="Bill", birth_date=None, address_line=None, postal_code=None,
             city=None)
    r3 = rec("3")
    online = Linker(Model.default())
    decisions = [online.add(r) for r in (r1, r2, r3)]
    assert [d.kind for d in decisions] == ["new", "new", "link"]
    chosen = decisions[2].person_id  # the stronger of the two persons r3 matches
    other = ({"1", "2"} - {chosen}).pop()
    assert [c.person_id for c in decisions[2].duplicates] == [other]
    assert len(online.merges) == 1
    survivor, merged, probability = online.merges[0]
    assert survivor == chosen and merged == other and probability >= LINK  # tie: the linked
    assert online.clusters == {"1": survivor, "2": survivor, "3": survivor}
    assert online.decide(rec("4", given_name="Bill")).person_id == survivor  # index follows
    batch = dedupe([r1, r2, r3], Model.default())
    assert batch.merged_persons == 1 and len(set(batch.clusters.values())) == 1
    kept = dedupe([r1, r2, r3], Model.default(), auto_merge=False)
    assert kept.merged_persons == 0 and set(kept.clusters.values()) == {"1", "2"}
    assert kept.possible_duplicates == 1


def test_the_larger_person_survives_a_merge():
    linker = Linker(Model.default())
    linker.add(rec("1", given_name="Bill", birth_date=None, address_line=None,
                   postal_code=None, city=None))
    linker.add(rec("2", given_name="Bill", birth_date=None, address_line=None,
                   postal_code=None, city=None, phone=None))
    linker.add(rec("3", ssn=None, phone=None))
    assert set(linker.clusters.values()) == {"1", "3"}
    d = linker.add(rec("4"))
    assert d.kind == "link" and linker.merges and linker.merges[0][0] == "1"
    assert set(linker.clusters.values()) == {"1"}


def test_persons_that_do_not_match_as_wholes_stay_apart():
    """A record that resembles two people (it lacks what tells them apart) links to the
    better one; their own records disagree, so they are not merged."""
    father = rec("f", birth_date=date(1950, 2, 3), ssn="212-33-4444", phone="+1 413 555 0199")
    son = rec("s", ssn="318-44-5555")
    linker = Linker(Model.default())
    linker.add(father)
    assert linker.add(son).kind == "new"
    d = linker.add(rec("c", birth_date=None, ssn=None, phone=None))
    assert d.kind == "link" and d.duplicates
    assert linker.merges == [] and len(set(linker.clusters.values())) == 2


def test_merge_never_overrides_a_steward_exclusion():
    r1 = rec("1", ssn=None, phone=None)
    r2 = rec("2", given_name="Bill", birth_date=None, address_line=None, postal_code=None,
             city=None)
    linker = Linker(Model.default())
    linker.add(r1)
    linker.add(r2, excluded={"1"})
    assert linker.add(rec("3")).duplicates
    assert linker.merges == [] and len(set(linker.clusters.values())) == 2


def test_twins_are_never_merged_as_wholes():
    """Twins founded as two persons (the guard held the second): a record with both
    their traits that links to one does not merge the other into it."""
    twin_a = rec("a", given_name="Chidi", ssn="111-22-3333")
    twin_b = rec("b", given_name="Amara", ssn="444-55-6666")
    linker = Linker(Model.default())
    linker.add(twin_a)
    assert linker.add(twin_b).kind == "review"
    linker.add(rec("c", given_name="Chidi", ssn=None))
    assert linker.merges == [] and len(set(linker.clusters.values())) == 2


def test_twin_guard_sends_twin_like_pairs_to_review():
    twin_a = prep("a", given_name="Chidi", ssn="111-22-3333")
    twin_b = prep("b", given_name="Amara", ssn="444-55-6666")
    sc = s(twin_b, twin_a)
    assert sc.probability >= LINK  # family, birth date, address, phone: FS alone would link
    d = decide({"A": [sc]}, LINK, REVIEW)
    assert d.kind == "review" and d.person_id == "A" and "twin" in d.note
    assert decide({"A": [sc]}, LINK, REVIEW, twin_guard=False).kind == "link"
    # A shared SSN (or a nickname, or a typo in the given name) is not the twin pattern.
    same_ssn = s(prep("c", given_name="Amara", ssn="111-22-3333"), twin_a)
    assert decide({"A": [same_ssn]}, LINK, REVIEW).kind == "link"
    nickname = s(prep("d", given_name="Bill", ssn=None), prep("e", ssn=None))
    assert decide({"A": [nickname]}, LINK, REVIEW).kind == "link"
    assert dedupe([rec("a", given_name="Chidi", ssn="111-22-3333"),
                   rec("b", given_name="Amara", ssn="444-55-6666")]).possible_twins == 1


def test_linking_two_files_holds_twin_like_pairs_for_review_as_the_service_does():
    """``mpi link`` applies the twin guard too: one twin in each file is not a pair."""
    twin_a = rec("a", given_name="Chidi", ssn="111-22-3333")
    twin_b = rec("b", given_name="Amara", ssn="444-55-6666")
    other = rec("c", given_name="Maria", family_name="Nguyen", birth_date=date(1950, 1, 1),
                address_line="9 Elm Road", postal_code="02118", phone=None, ssn="987-65-4321")
    same_other = rec("d", given_name="Mary", family_name="Nguyen",
                     birth_date=date(1950, 1, 1), address_line="9 Elm Rd",
                     postal_code="02118", phone=None, ssn="987-65-4321")
    result = link([twin_a, other], [twin_b, same_other])
    assert [(p.left_id, p.right_id) for p in result.pairs] == [("c", "d")]
    assert [(p.left_id, p.right_id) for p in result.held] == [("a", "b")]
    assert result.held[0].probability >= LINK  # the model alone would have linked them
    unguarded = link([twin_a, other], [twin_b, same_other], twin_guard=False)
    assert {(p.left_id, p.right_id) for p in unguarded.pairs} == {("a", "b"), ("c", "d")}
    assert unguarded.held == []
    # One to one, a held pair takes its right record (the arriving one: it goes to review,
    # not to a weaker candidate), and leaves its left one free for a record that fits it.
    typo = rec("e", given_name="Chidi", birth_date=date(1980, 5, 18), ssn=None, sex=None,
               phone=None, address_line=None)
    result = link([twin_a], [twin_b, typo])
    assert [(p.left_id, p.right_id) for p in result.pairs] == [("a", "e")]
    assert [(p.left_id, p.right_id) for p in result.held] == [("a", "b")]
    assert result.held[0].weight > result.pairs[0].weight  # held first, "a" still free
    # Many to many, a held pair is held and every other pair is kept.
    many = link([twin_a, other], [twin_b, same_other], one_to_one=False)
    assert [(p.left_id, p.right_id) for p in many.held] == [("a", "b")]


def test_the_batch_tools_weigh_names_as_the_service_does():
    """A model without TF tables (the shipped one) weighs a rare name as the model says, in
    the service (``Scorer(model, registry=...)``, mpi.identity.engine) and in the batch
    tools alike; one with TF tables (``mpi train``) weighs it by them in both. Tables
    computed from the file made the batch tools disagree with the service."""
    from mpi.matching.record import prepare
    from mpi.matching.scoring import registry_frequencies, term_frequencies

    a = rec("a", family_name="Zylberstein", ssn=None, phone=None)
    b = rec("b", family_name="Zylberstein", given_name="Bill", ssn=None, phone=None,
            birth_date=date(1980, 5, 18))
    pa, pb = prepare(a), prepare(b)
    model = Model.default()
    service = Scorer(model, registry=registry_frequencies([pa, pb])).score(pa, pb)
    (pair,) = link([a], [b]).pairs
    assert pair.weight == pytest.approx(service.weight)
    assert dedupe([a, b], model).decisions["link"] == 1
    # A trained model's tables count in both: here the name is held by both records.
    trained = model.evolve(term_frequencies=term_frequencies([pa, pb]))
    (weaker,) = link([a], [b], trained).pairs
    assert weaker.weight < pair.weight
    assert weaker.weight == pytest.approx(Scorer(trained, registry=registry_frequencies(
        [pa, pb])).score(pa, pb).weight)


def test_a_son_named_after_his_father_goes_to_review():
    """Same names, address and phone, birth years a generation apart, no SSN in common:
    the score alone links (p > 0.99); the guard sends it to a steward. A shared SSN, or a
    year mistyped by less than a generation, is not the pattern."""
    father = prep("f", birth_date=date(1950, 2, 3), ssn=None)
    son = prep("s", birth_date=date(1980, 2, 3), ssn=None)
    pair = s(son, father)
    assert pair.probability >= LINK
    d = decide({"F": [pair]}, LINK, REVIEW)
    assert d.kind == "review" and "relative" in d.note
    assert decide({"F": [pair]}, LINK, REVIEW, twin_guard=False).kind == "link"
    same_ssn = s(prep("s2", birth_date=date(1980, 2, 3)), prep("f2", birth_date=date(1950, 2, 3)))
    assert same_ssn.probability >= LINK and decide({"F": [same_ssn]}, LINK, REVIEW).kind == "link"
    typo = s(prep("t", birth_date=date(1985, 2, 3), ssn=None), prep("u", ssn=None))
    assert decide({"F": [typo]}, LINK, REVIEW).kind == "link"  # 1985 for 1980: 5 years


def test_what_only_a_household_shares_goes_to_review():
    """Family name, address and phone place two records in one household. With another
    given name and no birth date to compare, or no given name (a placeholder) and no
    agreeing birth date, nothing says they are one person."""
    home = {"ssn": None, "middle_name": None}
    wife = s(prep("w", given_name="Grace", birth_date=None, **home), prep("j", **home))
    assert wife.probability >= LINK
    assert decide({"J": [wife]}, LINK, REVIEW).kind == "review"
    resident = s(prep("r", given_name="Resident", birth_date=None, **home), prep("j", **home))
    assert resident.probability >= LINK
    assert decide({"J": [resident]}, LINK, REVIEW).kind == "review"
    # A placeholder name with the birth date, or the same given name, still links.
    dated = s(prep("d", given_name="Unknown", **home), prep("j", **home))
    assert decide({"J": [dated]}, LINK, REVIEW).kind == "link"
    named = s(prep("n", birth_date=None, **home), prep("j", **home))
    assert decide({"J": [named]}, LINK, REVIEW).kind == "link"


def test_the_middle_name_separates_father_and_son_and_guards_twins():
    """A father and son of one given name at one address (no birth date on one side)
    were linked at p = 0.9999; their middle names differ."""
    father = prep("f", middle_name="Paul", birth_date=None, ssn=None)
    son = prep("s", middle_name="Michael", ssn=None)
    pair = s(son, father)
    assert pair.probability >= LINK  # address, phone, names: FS alone would link
    assert pair.weight < s(prep("s1", middle_name="Paul", ssn=None), father).weight - 8
    d = decide({"A": [pair]}, LINK, REVIEW)
    assert d.kind == "review" and "middle" in d.note
    assert decide({"A": [pair]}, LINK, REVIEW, twin_guard=False).kind == "link"
    # An initial that agrees, or a middle name on one side only, is no such pattern.
    for other in (prep("s2", middle_name="P", ssn=None), prep("s3", ssn=None)):
        assert decide({"A": [s(other, father)]}, LINK, REVIEW).kind == "link"
    # Twins given the same first name and different middle names: review, not link.
    twins = s(prep("t1", middle_name="Ann", ssn=None), prep("t2", middle_name="Beth", ssn=None))
    assert decide({"A": [twins]}, LINK, REVIEW).kind == "review"


@pytest.mark.parametrize("variant", ["Ivan", "Juan", "Jon", "Johann"])
def test_given_names_that_agree_only_as_variants_need_more_evidence(variant):
    """John against Ivan, Juan, Jon or Johann with one family name and birth date and no
    other evidence auto-linked at p ~ 0.9998: two brothers are likelier than one man
    registered under both. With an address or phone in common, the variant links."""
    bare = {"address_line": None, "city": None, "state": None, "postal_code": None,
            "phone": None, "ssn": None, "sex": None}
    pair = s(prep("b", given_name=variant, **bare), prep("a", given_name="John", **bare))
    assert decide({"A": [pair]}, LINK, REVIEW).kind != "link"
    housed = s(prep("b", given_name=variant, ssn=None), prep("a", given_name="John", ssn=None))
    assert decide({"A": [housed]}, LINK, REVIEW).kind == "link"


def test_twins_who_say_so_are_never_linked_automatically():
    """Twins share a family name, a birth date, an address and often a phone; when the
    records carry their birth orders (FHIR multipleBirthInteger), different orders are
    two people, whatever else agrees: a review, never a link."""
    first = prep("t1", given_name="Chidi", ssn=None, birth_order=1)
    second = prep("t2", given_name="Chidi", ssn=None, birth_order=2)
    d = decide({"P": [s(second, first)]}, LINK, REVIEW)
    assert s(second, first).probability >= LINK and d.kind == "review" and d.note
    same = prep("t3", given_name="Chidi", ssn=None, birth_order=1)
    assert decide({"P": [s(same, first)]}, LINK, REVIEW).kind == "link"
