"""Audit log. Tags read ``source:subject:action``, e.g. ``patient:record:update``.

Rows are written inside the caller's transaction, so an audited change and
its audit row commit or roll back together.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from mpi.storage.bulk import bulk_insert
from mpi.storage.models import AuditEventRow


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
    def record(self, action: str, actor: Actor, *, entity_type: str, entity_id: str | None,
               now: datetime, old: Any = None, new: Any = None) -> None:
        AuditEventRow.insert(
            occurred_at=now, action=action, actor=actor.user_id, entity_type=entity_type,
            entity_id=entity_id, request_id=actor.request_id, ip=actor.ip,
            user_agent=actor.user_agent, old_value=old, new_value=new,
        ).execute()

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
