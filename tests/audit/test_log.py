"""The audit log: read-audit transactions may commit without waiting for the disk flush."""

from __future__ import annotations

from datetime import datetime

from mpi.audit.log import Actor, AuditLog
from mpi.storage.db import write_transaction
from mpi.storage.models import AuditEventRow

NOW = datetime(2026, 1, 1)


def _commit_mode(db, backend: str, audit: AuditLog, action: str) -> str:
    """The commit mode the audited transaction ends with."""
    with write_transaction(db):
        audit.record(action, Actor("u1"), entity_type="patient", entity_id="p1", now=NOW)
        mode = (db.execute_sql("SHOW synchronous_commit").fetchone()[0]
                if backend == "postgresql" else "sqlite")
    assert AuditEventRow.select().where(AuditEventRow.action == action).count() >= 1
    if backend == "postgresql":  # SET LOCAL ends with its transaction
        assert db.execute_sql("SHOW synchronous_commit").fetchone()[0] == "on"
    return mode


def test_reads_do_not_wait_for_the_flush_unless_asked(db, backend):
    if backend == "postgresql":
        # The tests' throwaway server runs with synchronous_commit off; a real one has it on.
        db.execute_sql("SET synchronous_commit TO on")
    relaxed, strict = AuditLog(synchronous_reads=False), AuditLog()
    off, on = ("off", "on") if backend == "postgresql" else ("sqlite", "sqlite")
    for read in ("patient:record:read", "identity:match:query", "patient:record:search",
                 "patient:record:list"):
        assert _commit_mode(db, backend, relaxed, read) == off, read
        assert _commit_mode(db, backend, strict, read) == on, read
    # A write keeps the flush, whatever the setting.
    for write in ("patient:record:create", "identity:link:auto", "identity:review:open"):
        assert _commit_mode(db, backend, relaxed, write) == on, write
