"""The change log: one event per committed change, read in commit order.

The feed cursor is the event's id. For a reader that remembers the last id it
saw to miss nothing, ids must become visible in increasing order. PostgreSQL
hands out sequence values at insert time, not at commit, so a transaction
takes a transaction-scoped advisory lock just before it appends its event and
holds it through commit: appends (only the append and the commit, not the
rest of the transaction) are serialised, and ids are visible in commit order.
SQLite already serialises writers.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import peewee

from mpi.audit.log import Actor
from mpi.storage.bulk import bulk_insert
from mpi.storage.db import LOCK_CHANGE_LOG, is_postgres
from mpi.storage.models import ChangeEventRow


@dataclass(frozen=True)
class ChangeEvent:
    id: int
    occurred_at: datetime
    event_type: str
    entity_type: str
    entity_id: str
    entity_version: int | None
    actor: str
    request_id: str | None
    payload: Any

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "occurred_at": self.occurred_at.replace(tzinfo=UTC).isoformat(),
            "type": self.event_type,
            "entity_type": self.entity_type,
            "entity_id": self.entity_id,
            "entity_version": self.entity_version,
            "actor": self.actor,
            "request_id": self.request_id,
            "data": self.payload,
        }


class ChangeLog:
    def __init__(self, db: peewee.Database):
        self._postgres = is_postgres(db)
        self._db = db

    def append(self, event_type: str, actor: Actor, *, entity_type: str, entity_id: str,
               entity_version: int | None, now: datetime, payload: Any = None) -> None:
        """Append inside the caller's transaction; call it as the transaction's last write."""
        if self._postgres:
            self._db.execute_sql("SELECT pg_advisory_xact_lock(%s)", (LOCK_CHANGE_LOG,))
        ChangeEventRow.insert(
            occurred_at=now, event_type=event_type, entity_type=entity_type,
            entity_id=entity_id, entity_version=entity_version, actor=actor.user_id,
            request_id=actor.request_id, payload=payload,
        ).execute()

    def append_many(self, events: list[tuple[str, str, str, int | None, Any]], actor: Actor, *,
                    now: datetime) -> None:
        """Several events at once, in order: (type, entity type, entity id, version, payload).
        Call it as the transaction's last write, like :meth:`append`."""
        if not events:
            return
        if self._postgres:
            self._db.execute_sql("SELECT pg_advisory_xact_lock(%s)", (LOCK_CHANGE_LOG,))
        rows = [dict(occurred_at=now, event_type=kind, entity_type=entity_type,
                     entity_id=entity_id, entity_version=version, actor=actor.user_id,
                     request_id=actor.request_id, payload=payload)
                for kind, entity_type, entity_id, version, payload in events]
        bulk_insert(ChangeEventRow, rows)

    def read(self, *, after: int = 0, limit: int = 100) -> list[ChangeEvent]:
        rows = (ChangeEventRow.select().where(ChangeEventRow.pk > after)
                .order_by(ChangeEventRow.pk).limit(limit))
        return [ChangeEvent(r.pk, r.occurred_at, r.event_type, r.entity_type, r.entity_id,
                            r.entity_version, r.actor, r.request_id, r.payload) for r in rows]

    def last_id(self) -> int:
        row = ChangeEventRow.select(peewee.fn.MAX(ChangeEventRow.pk).alias("m")).scalar()
        return int(row or 0)
