"""Audit log. Tags read ``source:subject:action``, e.g. ``patient:record:update``.

Rows are written inside the caller's transaction, so an audited change and
its audit row commit or roll back together.

Reads (tags ending in ``read``, ``list``, ``query`` or ``search``) are audited in a
transaction that changes nothing else. Unless ``synchronous_reads`` is set, such a
transaction commits on PostgreSQL without waiting for the disk flush
(``SET LOCAL synchronous_commit TO off``): the row is in the write-ahead log at once and
on disk within ``wal_writer_delay`` (200 ms by default) x 3. A crash of the *database
server* in that window can lose the newest read-audit rows; it never corrupts anything
and never touches a write's durability. Measured on these machines, waiting for the flush
was most of a lookup's tail latency (``nox -s bench -- identity``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from mpi.storage.bulk import bulk_insert
from mpi.storage.db import is_postgres
from mpi.storage.models import AuditEventRow

READ_VERBS = frozenset({"read", "list", "query", "search"})


@dataclass(frozen=True)
class Actor:
    """Who is acting, and from where (until authentication lands: the X-User-ID header)."""

    user_id: str = "anonymous"
    ip: str | None = None
    user_agent: str | None = None
    request_id: str | None = None


@dataclass(frozen=True)
class AuditEntry:
    id: int
    occurred_at: datetime
    action: str
    actor: str
    entity_type: str
    entity_id: str | None
    request_id: str | None
    ip: str | None
    user_agent: str | None
    old_value: Any
    new_value: Any


def _entry(row: AuditEventRow) -> AuditEntry:
    return AuditEntry(row.pk, row.occurred_at, row.action, row.actor, row.entity_type,
                      row.entity_id, row.request_id, row.ip, row.user_agent, row.old_value,
                      row.new_value)


class AuditLog:
    def __init__(self, *, synchronous_reads: bool = True) -> None:
        self.synchronous_reads = synchronous_reads

    def record(self, action: str, actor: Actor, *, entity_type: str, entity_id: str | None,
               now: datetime, old: Any = None, new: Any = None) -> None:
        AuditEventRow.insert(
            occurred_at=now, action=action, actor=actor.user_id, entity_type=entity_type,
            entity_id=entity_id, request_id=actor.request_id, ip=actor.ip,
            user_agent=actor.user_agent, old_value=old, new_value=new,
        ).execute()
        if not self.synchronous_reads and action.rsplit(":", 1)[-1] in READ_VERBS:
            db = AuditEventRow._meta.database  # type: ignore[attr-defined]
            if is_postgres(db):
                # This transaction only reads and audits (module docstring).
                db.execute_sql("SET LOCAL synchronous_commit TO off")

    def record_many(self, entries: Sequence[tuple[str, str | None, Any, Any]], actor: Actor, *,
                    entity_type: str, now: datetime) -> None:
        """Several audit rows at once: (action, entity id, old, new) each."""
        rows = [dict(occurred_at=now, action=action, actor=actor.user_id,
                     entity_type=entity_type, entity_id=entity_id,
                     request_id=actor.request_id, ip=actor.ip, user_agent=actor.user_agent,
                     old_value=old, new_value=new)
                for action, entity_id, old, new in entries]
        bulk_insert(AuditEventRow, rows)

    def for_entity(self, entity_type: str, entity_id: str, *, before: int | None = None,
                   limit: int = 100) -> list[AuditEntry]:
        """Newest first."""
        query = AuditEventRow.select().where(AuditEventRow.entity_type == entity_type,
                                             AuditEventRow.entity_id == entity_id)
        return self._page(query, before, limit)

    def by_actor(self, user_id: str, *, before: int | None = None,
                 limit: int = 100) -> list[AuditEntry]:
        """Newest first."""
        return self._page(AuditEventRow.select().where(AuditEventRow.actor == user_id),
                          before, limit)

    def recent(self, *, before: int | None = None, limit: int = 100) -> list[AuditEntry]:
        """Newest first."""
        return self._page(AuditEventRow.select(), before, limit)

    @staticmethod
    def _page(query: Any, before: int | None, limit: int) -> list[AuditEntry]:
        if before is not None:
            query = query.where(AuditEventRow.pk < before)
        return [_entry(r) for r in query.order_by(AuditEventRow.pk.desc()).limit(limit)]
