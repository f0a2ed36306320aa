"""Fragments reconcile: a record that proves two persons one merges them in its own
transaction, with the production matcher, on both backends.

The three records: the registration desk's (name, birth date, address; no SSN, no phone),
the lab's (a nickname, the SSN and the phone; no birth date, no address) and billing's
(everything). The first two share only their names, so they found two persons; the third
is certain against each, and the two persons as wholes are one.
"""

from __future__ import annotations

import dataclasses
import json
import threading
from datetime import date
from typing import Any

import pytest

from mpi.domain.audit import Actor
from mpi.domain.errors import DomainError
from mpi.domain.patient import PatientInput, parse_patient
from mpi.storage.db import connection
from mpi.storage.models import (
    AuditEventRow,
    ChangeEventRow,
    LinkEventRow,
    NonMatchRow,
    PatientLinkRow,
    PatientRow,
    PersonMergeRow,
    PersonRow,
    ReviewItemRow,
)
from mpi.wiring import Services, build
from tests.conftest import Ids
from tests.helpers import SSN, patient

CLERK, STEWARD = Actor("billing-feed"), Actor("steward-1")


def _input(**changes: Any) -> PatientInput:
    return parse_patient(json.dumps(patient(**changes)).encode(), today=date(2026, 1, 1))


FAMILIES = ("Smith", "Okafor", "Lindqvist", "Moreau", "Tanaka", "Castillo", "Novak",
            "Haddad", "Kowalski", "Byrne", "Petrov", "Mensah")


def _man(who: int, **changes: Any) -> PatientInput:
    """John Paul <family> (one man per ``who``): his own birth date, SSN, phone and
    street."""
    family = FAMILIES[who]
    body = {"birth_date": f"{1950 + 3 * who}-{1 + who % 12:02d}-{10 + who:02d}",
            "names": [{"use": "official", "family": family, "given": ["John", "Paul"]}],
            "identifiers": [{"system": SSN, "value": f"{201 + 53 * who}-{11 + 7 * who}-"
                             f"{1009 + 719 * who}", "type": "SS"}],
            "telecom": [{"system": "phone", "value": f"+1-217-{300 + 41 * who}-"
                         f"{1234 + 577 * who}"}],
            "addresses": [{"line": [f"{12 + who} {family} Road"], "city": "Springfield",
                           "state": "IL", "postal_code": "62701", "country": "US"}]}
    return _input(**{**body, **changes})


def desk(n: int = 1, who: int = 0) -> PatientInput:
    return _man(who, source="desk", source_id=f"D-{n}", identifiers=None, telecom=None)


def lab(n: int = 1, who: int = 0) -> PatientInput:
    return _man(who, source="lab", source_id=f"L-{n}", birth_date=None, addresses=None,
                names=[{"use": "official", "family": FAMILIES[who],
                        "given": ["Johnny", "Paul"]}])


def billing(n: int = 1, who: int = 0) -> PatientInput:
    return _man(who, source="billing", source_id=f"B-{n}")


@pytest.fixture
def service(settings, db, clock) -> Services:
    return build(settings, db=db, clock=clock, new_id=Ids())


def _person_of(patient_id: str) -> str:
    person = (PersonRow.select().join(PatientLinkRow).join(PatientRow)
              .where(PatientRow.id == patient_id).get())
    return str(person.id)


def _events(kind: str) -> list[dict]:
    return [r.payload for r in ChangeEventRow.select().where(ChangeEventRow.event_type == kind)
            .order_by(ChangeEventRow.pk)]


def test_a_record_that_proves_two_persons_one_merges_them(service):
    d = service.patients.create(desk(), Actor("desk"))
    lb = service.patients.create(lab(), Actor("lab"))
    assert d.person_id != lb.person_id  # two fragments of one man
    b = service.patients.create(billing(), CLERK)
    (merge,) = PersonMergeRow.select()
    survivor = str(PersonRow.get_by_id(merge.survivor_id).id)
    merged = str(PersonRow.get_by_id(merge.merged_id).id)
    assert {survivor, merged} == {d.person_id, lb.person_id}
    assert b.person_id == survivor  # the record and its response name the survivor
    assert {_person_of(x.id) for x in (d, lb, b)} == {survivor}
    assert merge.how == "auto" and merge.actor == "billing-feed"
    assert merge.probability >= service.engine.link_threshold
    assert merge.model_version == service.engine.model_version
    view = service.persons.person(merged, STEWARD)
    assert (view.status, view.merged_into) == ("merged", survivor)
    # Audited as the engine's merge, with its evidence; in the change feed; in the history.
    (row,) = AuditEventRow.select().where(AuditEventRow.action == "identity:merge:auto")
    detail = row.new_value
    assert (row.actor, row.entity_id) == ("billing-feed", survivor)
    assert detail["patient_id"] == b.id and detail["how"] == "auto"
    (event,) = _events("PersonsMerged")
    assert event["how"] == "auto" and event["merge_id"] == str(merge.id)
    assert event["probability"] == merge.probability
    history = LinkEventRow.select().where(LinkEventRow.person == merge.merged_id)
    assert "merged" in {e.action for e in history}
    # Nothing left for a steward: no duplicate review was opened.
    assert ReviewItemRow.select().where(ReviewItemRow.status == "open").count() == 0


def test_undoing_an_automatic_merge_keeps_the_two_apart_from_then_on(service):
    d = service.patients.create(desk(), Actor("desk"))
    lb = service.patients.create(lab(), Actor("lab"))
    service.patients.create(billing(), CLERK)
    (merge,) = PersonMergeRow.select()
    undone = service.stewards.undo_merge(str(merge.id), STEWARD)
    assert undone.how == "auto" and undone.undone_at is not None
    assert _person_of(d.id) != _person_of(lb.id)
    assert NonMatchRow.select().count() > 0  # the undo is a steward's "not the same person"
    # The next record that reaches both merges nothing, and asks nobody again.
    again = service.patients.create(billing(2), CLERK)
    assert PersonMergeRow.select().count() == 1
    assert again.person_id in {_person_of(d.id), _person_of(lb.id)}
    assert ReviewItemRow.select().where(ReviewItemRow.kind == "possible_duplicate").count() == 0


def test_persons_a_steward_kept_apart_are_never_merged(service):
    d = service.patients.create(desk(), Actor("desk"))
    lb = service.patients.create(lab(), Actor("lab"))
    assert d.person_id and lb.person_id
    merge = service.stewards.merge(d.person_id, lb.person_id, STEWARD)
    service.stewards.unlink(merge.survivor_id, lb.id, STEWARD)  # "not the same person"
    service.patients.create(billing(), CLERK)
    assert PersonMergeRow.select().where(PersonMergeRow.how == "auto").count() == 0
    assert _person_of(d.id) != _person_of(lb.id)


def test_with_auto_merge_off_a_duplicate_review_is_opened_and_a_merge_closes_it(
        settings, db, clock):
    service = build(dataclasses.replace(settings, matching_auto_merge=False), db=db,
                    clock=clock, new_id=Ids())
    d = service.patients.create(desk(), Actor("desk"))
    lb = service.patients.create(lab(), Actor("lab"))
    service.patients.create(billing(), CLERK)
    assert PersonMergeRow.select().count() == 0
    (review,) = ReviewItemRow.select().where(ReviewItemRow.kind == "possible_duplicate")
    assert review.status == "open"
    # A steward merges the two by hand: the review has nothing left to ask.
    assert d.person_id and lb.person_id
    merge = service.stewards.merge(d.person_id, lb.person_id, STEWARD)
    assert merge.how == "steward" and merge.probability is None
    review = ReviewItemRow.get_by_id(review.pk)
    assert (review.status, review.resolution, review.resolved_by) == (
        "resolved", "merged", "steward-1")
    assert _events("ReviewResolved")[-1]["resolution"] == "merged"


def test_an_import_batch_merges_as_the_service_does_record_by_record(service):
    records = [desk(), lab(), billing(), desk(2)]
    created = service.patients.import_batch(records, CLERK)
    assert all(created)
    batch = {r.source_id: _person_of(r.id) for r in created if r}
    (merge,) = PersonMergeRow.select()
    assert merge.how == "auto"
    assert len(set(batch.values())) == 1
    assert not PersonRow.get_by_id(merge.survivor_id).merged_into_id
    assert PatientLinkRow.select().where(PatientLinkRow.person == merge.merged_id).count() == 0


def test_the_batch_command_and_the_service_agree(service):
    from mpi.identity.engine import to_match_record
    from mpi.identity.records import match_data
    from mpi.matching.batch import dedupe
    from mpi.matching.model import Model

    inputs = [desk(), lab(), billing()]
    created = [service.patients.create(r, CLERK) for r in inputs]
    online = {c.id: _person_of(c.id) for c in created}
    records = [to_match_record(match_data(c)) for c in created]
    batch = dedupe(records, Model.default())
    assert batch.merged_persons == 1
    assert len(set(online.values())) == len(set(batch.clusters.values())) == 1


def test_a_write_into_a_person_merged_a_moment_ago_gives_way_and_is_retried(service,
                                                                           monkeypatch):
    """Between a record's decision and its write, a concurrent merge takes its person
    away (simulated here inside the write's own transaction): the write must not link
    into the merged person; it gives way, and the retry decides again."""
    d = service.patients.create(desk(), Actor("desk"))
    other = service.patients.create(desk(2, who=3), Actor("desk"))
    linking = service.patients._linking
    real = linking.place_new
    attempts: list[int] = []

    def place_then_lose_the_person(records, **options):
        placed = real(records, **options)
        attempts.append(len(placed))
        if len(attempts) == 1:  # the first attempt: the person is merged meanwhile
            mine = PersonRow.get(PersonRow.id == d.person_id)
            mine.merged_into = PersonRow.get(PersonRow.id == other.person_id).pk
            mine.save()
        return placed

    monkeypatch.setattr(linking, "place_new", place_then_lose_the_person)
    b = service.patients.create(billing(), CLERK)
    assert len(attempts) == 2
    assert b.person_id == d.person_id == _person_of(b.id)
    assert not PersonRow.get(PersonRow.id == d.person_id).merged_into_id


# --- PostgreSQL: merges racing writers ---------------------------------------------------------

ROUNDS = len(FAMILIES)


def test_no_record_is_left_in_a_merged_person_when_writers_race_a_merge(pg: Services):
    """Each round: two fragments; then at once the record that merges them and a record
    that joins the fragment being merged away. Whatever the order, every live record
    ends in an active person (a write that joined a person merged a moment ago gives way
    and is retried)."""
    outcomes: list[str] = []
    for n in range(ROUNDS):
        with connection(pg.db):
            pg.patients.create(desk(n, n), Actor("desk"))
            pg.patients.create(lab(n, n), Actor("lab"))
        start = threading.Barrier(3)
        ended: list[str] = []

        def write(body: PatientInput, barrier: threading.Barrier = start,
                  out: list[str] = ended) -> None:
            with connection(pg.db):
                barrier.wait()
                try:
                    pg.patients.create(body, CLERK)
                    out.append("ok")
                except DomainError as exc:
                    out.append(type(exc).__name__)

        threads = [threading.Thread(target=write, args=(body,)) for body in
                   (billing(n, n), desk(100 + n, n), lab(100 + n, n))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        outcomes += ended
        with connection(pg.db):
            stray = (PatientLinkRow.select().join(PersonRow)
                     .where(PersonRow.merged_into.is_null(False)).count())
            assert stray == 0, f"round {n}: {stray} record(s) linked to a merged person"
    assert set(outcomes) == {"ok"}, outcomes
    with connection(pg.db):
        assert PersonMergeRow.select().where(PersonMergeRow.how == "auto").count() == ROUNDS
        assert PersonRow.select().where(PersonRow.merged_into.is_null()).count() == ROUNDS
