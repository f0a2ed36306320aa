"""mpi relink's service: stored records decided again with the current rules, on both
backends. The registry is loaded with MATCHING_AUTO_MERGE off (as by a release before
it), so billing's record, which proves the desk's and the lab's persons one, left them
two persons and a duplicate review."""

from __future__ import annotations

import dataclasses

import pytest

from mpi.domain.audit import Actor
from mpi.identity.relink import RelinkChange
from mpi.storage.models import (
    AuditEventRow,
    ChangeEventRow,
    LinkEventRow,
    PatientLinkRow,
    PersonMergeRow,
    PersonRow,
)
from mpi.wiring import Services, build
from tests.conftest import Ids
from tests.identity.test_fragments import _person_of, billing, desk, lab

RELINK = Actor("mpi-relink")


@pytest.fixture
def fragmented(settings, db, clock) -> tuple[Services, list[str]]:
    new_id = Ids()  # one sequence for both releases
    before = build(dataclasses.replace(settings, matching_auto_merge=False), db=db,
                   clock=clock, new_id=new_id)
    ids = [before.patients.create(body, Actor("feed")).id for body in (desk(), lab(),
                                                                        billing())]
    assert len({_person_of(i) for i in ids}) == 2
    return build(settings, db=db, clock=clock, new_id=new_id), ids


def _rows() -> tuple[int, ...]:
    return tuple(m.select().count() for m in (PatientLinkRow, PersonMergeRow, LinkEventRow,
                                              AuditEventRow, ChangeEventRow))


def _everything(service: Services, *, dry_run: bool, limit: int = 2) -> list[RelinkChange]:
    changes: list[RelinkChange] = []
    after = 0
    while True:
        page = service.relinking.page(after, limit, RELINK, dry_run=dry_run)
        if page.last_pk is None:
            return changes
        changes += page.changes
        after = page.last_pk


def test_a_dry_run_reports_and_writes_nothing(fragmented):
    service, ids = fragmented
    people = {i: _person_of(i) for i in ids}
    rows = _rows()
    changes = _everything(service, dry_run=True, limit=10)  # one page: exact
    assert len(changes) == 1
    (change,) = changes
    assert change.from_person != change.to_person and change.how == "auto"
    assert change.probability is not None and change.probability >= 0.95
    assert _rows() == rows and {i: _person_of(i) for i in ids} == people


def test_relink_joins_the_fragments_audited_and_is_idempotent(fragmented):
    service, ids = fragmented
    (change,) = _everything(service, dry_run=False)  # pages of 2
    assert len({_person_of(i) for i in ids}) == 1
    assert _person_of(change.patient_id) == change.to_person
    audited = AuditEventRow.select().where(AuditEventRow.actor == "mpi-relink")
    assert "identity:link:auto" in {row.action for row in audited}
    linked = [e.payload for e in ChangeEventRow.select()
              .where(ChangeEventRow.event_type == "PatientLinked")]
    assert linked[-1]["patient_id"] == change.patient_id
    assert linked[-1]["previous_person_id"] == change.from_person
    assert _everything(service, dry_run=False) == []  # nothing left to change


def test_relink_never_moves_what_a_steward_placed(fragmented):
    service, ids = fragmented
    lab_id = ids[1]
    lab_person = _person_of(lab_id)
    # A steward puts the lab record back on its own, by hand: relink leaves it there.
    other = _person_of(ids[0])
    if lab_person == other:
        service.stewards.unlink(other, lab_id, Actor("steward-1"))
    else:
        service.stewards.link(lab_person, lab_id, Actor("steward-1"))
    placed = _person_of(lab_id)
    changes = _everything(service, dry_run=False)
    assert _person_of(lab_id) == placed
    assert all(c.patient_id != lab_id for c in changes)
    assert PersonRow.select().where(PersonRow.merged_into.is_null(False)).count() == 0


def test_relink_merges_persons_a_stored_record_proves_one(settings, db, clock):
    """Each fragment has two records, so none moves alone: billing's record, decided
    again, proves the two persons one and they are merged, as the engine's merge."""
    new_id = Ids()
    before = build(dataclasses.replace(settings, matching_auto_merge=False), db=db,
                   clock=clock, new_id=new_id)
    ids = [before.patients.create(body, Actor("feed")).id
           for body in (desk(1), desk(2), lab(1), lab(2), billing())]
    assert len({_person_of(i) for i in ids}) == 2
    service = build(settings, db=db, clock=clock, new_id=new_id)
    changes = _everything(service, dry_run=False)
    assert len([c for c in changes if c.merged]) == 1
    assert len({_person_of(i) for i in ids}) == 1
    (merge,) = PersonMergeRow.select()
    assert (merge.how, merge.actor) == ("auto", "mpi-relink")
