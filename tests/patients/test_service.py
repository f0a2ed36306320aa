"""Every write is one unit of work: record rows, link, audit rows and change events commit
together, or nothing does."""

from __future__ import annotations

import pytest

from mpi.domain.audit import Actor
from mpi.identity.linking import Linking
from mpi.identity.merging import Merging
from mpi.patients.service import PatientService
from mpi.storage.identity import IdentityRepository
from mpi.storage.models import AuditEventRow, ChangeEventRow, PatientNameRow, PatientRow
from mpi.storage.patients import PatientRepository
from mpi.storage.work import UnitOfWork
from mpi.wiring import matching_engine
from tests.conftest import Ids
from tests.helpers import patient


class Boom(Exception):
    pass


class FailingWork(UnitOfWork):
    """Fails at the very end of a unit of work, after every row (change events last) was
    written and before the commit (on PostgreSQL the COMMIT goes with the flush's rows:
    it fails instead of being sent)."""

    def _flush(self, tx):
        super()._flush(tx)
        raise Boom

    def _commit_with(self, cursor):
        raise Boom


def _service(settings, db, clock, work_type=UnitOfWork) -> PatientService:
    """A patient service over ``work_type`` (built by hand: the root builds the real one)."""
    work, ids = work_type(db, clock=clock, synchronous_reads=True), Ids()
    repo = IdentityRepository(db)
    linking = Linking(matching_engine(settings), repo, Merging(repo, new_id=ids), new_id=ids)
    return PatientService(work, PatientRepository(), linking, new_id=ids)


def _counts() -> tuple[int, ...]:
    return tuple(m.select().count() for m in (PatientRow, PatientNameRow, AuditEventRow,
                                              ChangeEventRow))


def _body(**changes) -> bytes:
    return __import__("json").dumps(patient(**changes)).encode()


def test_a_failed_create_leaves_nothing(settings, db, clock):
    service = _service(settings, db, clock, FailingWork)
    with pytest.raises(Boom):
        service.create(service.parse(_body()), Actor())
    assert _counts() == (0, 0, 0, 0)


def test_a_failed_update_leaves_the_old_version(settings, db, clock):
    good = _service(settings, db, clock)
    created = good.create(good.parse(_body()), Actor())
    before = _counts()
    bad = _service(settings, db, clock, FailingWork)
    with pytest.raises(Boom):
        bad.update(created.id, bad.parse(_body(names=[{"family": "Changed"}])), Actor(),
                   expected_version=1)
    assert _counts() == before
    assert PatientRepository().get(created.id) == created


def test_a_failed_delete_leaves_the_record_live(settings, db, clock):
    good = _service(settings, db, clock)
    created = good.create(good.parse(_body()), Actor())
    bad = _service(settings, db, clock, FailingWork)
    with pytest.raises(Boom):
        bad.delete(created.id, Actor(), expected_version=None)
    assert PatientRepository().get(created.id).version == 1
