"""Enterprise identity: linking on write, reviews, stewards' decisions, merges, history.

The matcher here is a fake with fixed scores (tests/identity/fake_engine.py), so each test
states exactly which pairs match; the real matcher has its own tests in tests/matching.
"""

from __future__ import annotations

import json

import pytest

from mpi.domain.audit import Actor
from mpi.domain.errors import StateConflict
from mpi.storage.models import (
    BlockingKeyRow,
    ChangeEventRow,
    PatientLinkRow,
    PersonRow,
    ReviewItemRow,
)
from mpi.storage.patients import PatientRepository
from mpi.wiring import Services, build
from tests.conftest import Ids
from tests.helpers import patient
from tests.identity.fake_engine import FakeEngine

STEWARD = Actor(user_id="steward-1")


class Boom(Exception):
    pass


REPO = PatientRepository()


@pytest.fixture
def service(settings, db, clock) -> Services:
    return build(settings, db=db, clock=clock, new_id=Ids(), engine=FakeEngine())


def _create(service: Services, source_id: str, *, given: str = "John",
            family: str = "Smith", born: str = "1980-05-17", source: str = "st-marys-ehr"):
    body = patient(source=source, source_id=source_id, birth_date=born,
                   names=[{"use": "official", "family": family, "given": [given]}])
    return service.patients.create(service.patients.parse(json.dumps(body).encode()), Actor())


def _events(kind: str) -> list[dict]:
    return [r.payload for r in ChangeEventRow.select().where(ChangeEventRow.event_type == kind)
            .order_by(ChangeEventRow.pk)]


def test_a_new_record_with_no_candidate_founds_a_person(service):
    created = _create(service, "A-1")
    assert created.person_id is not None
    person = service.persons.person(created.person_id, Actor())
    assert [r.patient.id for r in person.records] == [created.id]
    assert person.records[0].how == "new"
    linked = _events("PatientLinked")
    assert linked[0]["person_id"] == created.person_id and linked[0]["how"] == "new"
    assert _events("PatientCreated")[0]["person_id"] == created.person_id


def test_a_certain_match_links_to_the_same_person_with_score_and_model_version(service):
    first = _create(service, "A-1", source="ehr")
    second = _create(service, "L-9", source="lab")
    assert second.person_id == first.person_id
    person = service.persons.person(first.person_id, Actor())
    auto = next(r for r in person.records if r.patient.id == second.id)
    assert (auto.how, auto.probability, auto.model_version) == ("auto", 0.99, "fake-1")
    # The PIX view: the SSN both sources sent appears once with both records.
    (ssn,) = person.identifiers
    assert sorted(ssn.patient_ids) == sorted([first.id, second.id])
    assert sorted(ssn.sources) == ["ehr", "lab"]
    assert REPO.get(second.id).person_id == first.person_id


def test_a_probable_match_opens_a_review_and_founds_its_own_person(service):
    first = _create(service, "A-1")
    second = _create(service, "A-2", given="Jon")
    assert second.person_id != first.person_id
    (review,) = ReviewItemRow.select()
    assert (review.kind, review.status, review.probability) == ("possible_match", "open", 0.7)
    assert str(PersonRow.get_by_id(review.person_id).id) == first.person_id
    opened = _events("ReviewOpened")
    assert opened[0]["patient_id"] == second.id and opened[0]["person_id"] == first.person_id


def test_resolving_a_review_as_link_moves_the_record_and_the_engine_keeps_it(service, clock):
    first = _create(service, "A-1")
    second = _create(service, "A-2", given="Jon")
    page = service.stewards.reviews(STEWARD, status="open", kind=None, person_id=None,
                                    after=None, limit=10)
    resolved = service.stewards.resolve_review(page.items[0].id, "link", STEWARD)
    assert (resolved.status, resolved.resolution, resolved.resolved_by) == (
        "resolved", "link", "steward-1")
    assert REPO.get(second.id).person_id == first.person_id
    # An update that would now score low does not undo the steward's decision.
    body = patient(source="st-marys-ehr", source_id="A-2",
                   names=[{"family": "Smith", "given": ["Completely-Different"]}],
                   birth_date="1990-01-01")
    service.patients.update(second.id, service.patients.parse(json.dumps(body).encode()), Actor(),
                   expected_version=1)
    assert REPO.get(second.id).person_id == first.person_id
    with pytest.raises(StateConflict):
        service.stewards.resolve_review(page.items[0].id, "not_a_match", STEWARD)


def test_not_a_match_is_never_proposed_or_linked_again(service):
    first = _create(service, "A-1")
    second = _create(service, "A-2", given="Jon")
    (review,) = service.stewards.reviews(STEWARD, status="open", kind=None, person_id=None,
                                         after=None, limit=10).items
    service.stewards.resolve_review(review.id, "not_a_match", STEWARD)
    # Even an update that makes the record identical to the other one stays apart.
    body = patient(source="st-marys-ehr", source_id="A-2",
                   names=[{"use": "official", "family": "Smith", "given": ["John"]}])
    updated = service.patients.update(
        second.id, service.patients.parse(json.dumps(body).encode()), Actor(),
        expected_version=1)
    assert updated.person_id != first.person_id
    assert ReviewItemRow.select().where(ReviewItemRow.status == "open").count() == 0


def test_a_record_matching_two_persons_joins_the_best_and_opens_a_duplicate_review(service):
    a = _create(service, "A-1")
    b = _create(service, "A-2", given="Jon")            # review against a; own person
    (review,) = ReviewItemRow.select()
    service.stewards.resolve_review(str(review.id), "new_person", STEWARD)
    # b's person gets a record identical to a: certain for both persons.
    c = _create(service, "A-3", given="Jon")
    assert c.person_id == b.person_id
    d = _create(service, "A-4")
    assert d.person_id == a.person_id
    # No chaining: one record never merges the persons it touches; a steward decides.
    assert service.persons.person(a.person_id, Actor()).records[0].patient.id == a.id
    assert len({a.person_id, b.person_id}) == 2


def test_unlink_gives_the_record_its_own_person_and_keeps_it_apart(service):
    first = _create(service, "A-1")
    second = _create(service, "A-2")
    assert first.person_id == second.person_id
    person = service.stewards.unlink(first.person_id, second.id, STEWARD)
    assert person.id != first.person_id and [r.patient.id for r in person.records] == [
        second.id]
    assert person.records[0].manual
    assert _events("PatientUnlinked")[0]["previous_person_id"] == first.person_id
    # A third identical record joins the first person; the unlinked one is not pulled back.
    third = _create(service, "A-3")
    assert third.person_id in (first.person_id, person.id)
    assert REPO.get(second.id).person_id == person.id
    with pytest.raises(StateConflict):
        service.stewards.unlink(person.id, second.id, STEWARD)  # its only record


def test_merge_and_undo(service):
    a = _create(service, "A-1")
    b = _create(service, "B-1", family="Jones")
    merge = service.stewards.merge(a.person_id, b.person_id, STEWARD)
    assert merge.moved_patient_ids == [b.id]
    assert REPO.get(b.id).person_id == a.person_id
    merged = service.persons.person(b.person_id, Actor())
    assert (merged.status, merged.merged_into, merged.records) == ("merged", a.person_id, [])
    with pytest.raises(StateConflict):
        service.stewards.link(b.person_id, a.id, STEWARD)
    undone = service.stewards.undo_merge(merge.id, STEWARD)
    assert undone.undone_at is not None
    assert REPO.get(b.id).person_id == b.person_id
    assert service.persons.person(b.person_id, Actor()).status == "active"
    with pytest.raises(StateConflict):
        service.stewards.undo_merge(merge.id, STEWARD)
    history = service.persons.history(a.person_id, Actor(), before=None, limit=10)
    assert [h.action for h in history.items][:2] == ["merge_undone", "merged"]
    assert [e["merge_id"] for e in _events("PersonsMerged")] == [merge.id]
    assert [e["merge_id"] for e in _events("MergeUndone")] == [merge.id]


def test_manual_link_moves_a_record_and_is_audited(service):
    a = _create(service, "A-1")
    b = _create(service, "B-1", family="Jones")
    view = service.stewards.link(a.person_id, b.id, STEWARD)
    assert sorted(r.patient.id for r in view.records) == sorted([a.id, b.id])
    link = PatientLinkRow.get(PatientLinkRow.patient == REPO.get_row(b.id).pk)
    assert link.manual and link.how == "manual"


def test_deleting_a_record_removes_it_from_candidates_and_closes_its_reviews(service):
    _create(service, "A-1")
    second = _create(service, "A-2", given="Jon")
    service.patients.delete(second.id, Actor(), expected_version=None)
    assert BlockingKeyRow.select().count() == 1
    (review,) = ReviewItemRow.select()
    assert (review.status, review.resolution) == ("resolved", "record_deleted")


def test_a_failure_while_linking_leaves_nothing(settings, db, clock):
    class FailingEngine(FakeEngine):
        def decide(self, *args, **kwargs):
            raise Boom

    service = build(settings, db=db, clock=clock, new_id=Ids(), engine=FailingEngine())
    with pytest.raises(Boom):
        _create(service, "A-1")
    assert (PersonRow.select().count(), PatientLinkRow.select().count(),
            BlockingKeyRow.select().count(), ChangeEventRow.select().count()) == (0, 0, 0, 0)


@pytest.mark.parametrize("batch", [False, True], ids=["one-at-a-time", "import-batch"])
def test_a_key_held_by_more_persons_than_the_cap_selects_nothing(service, monkeypatch, batch):
    """Three Smiths born apart found three persons; with the cap at two, the family key
    then selects nothing, so a fourth record (the first Smith again) meets no one:
    record by record, and as the import's batch decides it (where the batch's own
    records take the key past the cap)."""
    from mpi.identity import linking

    monkeypatch.setattr(linking, "MAX_BLOCK", 2)
    people = [("Ann", "1990-01-02"), ("Bob", "1980-03-04"), ("Cid", "1970-05-06"),
              ("Ann", "1990-01-02")]
    bodies = [patient(source_id=f"S-{i}", birth_date=born,
                      names=[{"use": "official", "family": "Smith", "given": [given]}])
              for i, (given, born) in enumerate(people)]
    inputs = [service.patients.parse(json.dumps(b).encode()) for b in bodies]
    if batch:
        created = service.patients.import_batch(inputs, Actor())
    else:
        created = [service.patients.create(i, Actor()) for i in inputs]
    assert len({c.person_id for c in created if c}) == 4
    # With the cap above the four persons, the same record joins one of the Anns.
    monkeypatch.setattr(linking, "MAX_BLOCK", 4)
    again = service.patients.create(service.patients.parse(json.dumps(
        patient(source_id="S-9", birth_date="1990-01-02",
                names=[{"use": "official", "family": "Smith", "given": ["Ann"]}])).encode()),
        Actor())
    assert created[0] is not None and again.person_id in {created[0].person_id,
                                                           created[3] and created[3].person_id}
