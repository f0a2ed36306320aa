"""The change log read back: in commit order, each field converted; records' payloads
optionally as their stored JSON text (the search indexer decodes them where it writes)."""

from __future__ import annotations

import json
from datetime import datetime

from mpi.domain.audit import Actor
from mpi.domain.events import EventType
from mpi.storage.changes import ChangeRepository
from mpi.storage.work import UnitOfWork

NOW = datetime(2026, 1, 1, 12, 30, 15)
ACTOR = Actor("u1", request_id="req-1")
RECORD = {"id": "p1", "names": [{"family": "Ölund", "given": ["Åsa"]}], "version": 1}


def _log(db) -> None:
    with UnitOfWork(db, clock=lambda: NOW, synchronous_reads=True).begin(ACTOR) as tx:
        tx.emit(EventType.PATIENT_CREATED, "p1", version=1, payload=RECORD)
        tx.emit(EventType.PATIENT_LINKED, "p1", payload={"person_id": "P1"})
        tx.emit(EventType.PATIENT_DELETED, "p1", version=2)


def test_events_are_read_in_order_with_every_field(db):
    _log(db)
    events = ChangeRepository().read(after=0, limit=10)
    assert [(e.event_type, e.entity_type, e.entity_id, e.entity_version) for e in events] == [
        ("PatientCreated", "patient", "p1", 1), ("PatientLinked", "patient", "p1", None),
        ("PatientDeleted", "patient", "p1", 2)]
    assert [e.payload for e in events] == [RECORD, {"person_id": "P1"}, None]
    assert {(e.occurred_at, e.actor, e.request_id) for e in events} == {(NOW, "u1", "req-1")}
    assert [e.id for e in events] == sorted(e.id for e in events)
    assert ChangeRepository().read(after=events[0].id, limit=1) == events[1:2]
    assert ChangeRepository().of_entity("patient", "p1", ["PatientCreated"]) == events[:1]


def test_the_payloads_of_the_types_asked_for_are_left_as_their_json_text(db):
    _log(db)
    decoded = ChangeRepository().read(after=0, limit=10)
    raw = ChangeRepository().read(after=0, limit=10, undecoded={EventType.PATIENT_CREATED})
    assert isinstance(raw[0].payload, str) and json.loads(raw[0].payload) == RECORD
    assert "Ölund" in raw[0].payload  # the text as stored, not escaped again
    assert raw[1:] == decoded[1:]  # the other types decoded as usual
    assert [(e.id, e.occurred_at, e.event_type, e.entity_id, e.entity_version, e.actor)
            for e in raw] == [(e.id, e.occurred_at, e.event_type, e.entity_id,
                               e.entity_version, e.actor) for e in decoded]
