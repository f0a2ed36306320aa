"""Every write is one transaction: record rows, audit row and change event commit together."""

from __future__ import annotations

import pytest

from mpi.audit.log import Actor
from mpi.events.log import ChangeLog
from mpi.services.patients import PatientService
from mpi.storage.models import AuditEventRow, ChangeEventRow, PatientNameRow, PatientRow
from tests.helpers import patient


class Boom(Exception):
    pass


class FailingChangeLog(ChangeLog):
    """Fails as the last write of a transaction, after every other row was written."""

    def append(self, *args, **kwargs):
        super().append(*args, **kwargs)
        raise Boom

    def append_many(self, *args, **kwargs):
        super().append_many(*args, **kwargs)
        raise Boom


def _counts() -> tuple[int, ...]:
    return tuple(m.select().count() for m in (PatientRow, PatientNameRow, AuditEventRow,
                                              ChangeEventRow))


def _body(**changes) -> bytes:
    return __import__("json").dumps(patient(**changes)).encode()


def test_a_failed_create_leaves_nothing(db, clock):
    service = PatientService(db, clock=clock, changes=FailingChangeLog(db))
    with pytest.raises(Boom):
        service.create(service.parse(_body()), Actor())
    assert _counts() == (0, 0, 0, 0)


def test_a_failed_update_leaves_the_old_version(db, clock):
    good = PatientService(db, clock=clock)
    created = good.create(good.parse(_body()), Actor())
    before = _counts()
    bad = PatientService(db, clock=clock, changes=FailingChangeLog(db))
    with pytest.raises(Boom):
        bad.update(created.id, bad.parse(_body(names=[{"family": "Changed"}])), Actor(),
                   expected_version=1)
    assert _counts() == before
    assert good.repository.get(created.id) == created


def test_a_failed_delete_leaves_the_record_live(db, clock):
    good = PatientService(db, clock=clock)
    created = good.create(good.parse(_body()), Actor())
    bad = PatientService(db, clock=clock, changes=FailingChangeLog(db))
    with pytest.raises(Boom):
        bad.delete(created.id, Actor(), expected_version=None)
    assert good.repository.get(created.id).version == 1
