"""The audit rows: written by the unit of work (:mod:`mpi.storage.work`), read back here.

Rows are written inside the caller's transaction, so an audited change and its audit
rows commit or roll back together (reads' rows may follow their reads:
``mpi.storage.readaudit``). The trail is read newest first, by the time each thing
happened, a page at a time.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import peewee

from mpi.domain.audit import Actor, AuditEntryOut, AuditTag
from mpi.storage.bulk import bulk_insert, insert_values
from mpi.storage.models import AuditEventRow


def write_audit_rows(entries: Sequence[tuple[AuditTag, str | None, Any, Any]], actor: Actor,
                     now: datetime) -> None:
    """Insert (tag, entity id, old, new) rows for ``actor`` at ``now``."""
    bulk_insert(AuditEventRow, audit_rows(entries, actor, now))


def audit_insert(entries: Sequence[tuple[AuditTag, str | None, Any, Any]], actor: Actor,
                 now: datetime, *, param: str) -> tuple[str, list[Any]]:
    """ONE INSERT of those rows (a VALUES list) and its flat parameters, for a caller that
    sends it itself."""
    return insert_values(AuditEventRow, audit_rows(entries, actor, now), param)


def audit_rows(entries: Sequence[tuple[AuditTag, str | None, Any, Any]], actor: Actor,
               now: datetime) -> list[dict[str, Any]]:
    return [dict(occurred_at=now, action=tag.value, actor=actor.user_id,
                 on_behalf_of=actor.on_behalf_of, entity_type=tag.entity_type,
                 entity_id=entity_id, request_id=actor.request_id, ip=actor.ip,
                 user_agent=actor.user_agent, old_value=old, new_value=new)
            for tag, entity_id, old, new in entries]


class AuditRepository:
    """Reads the audit trail, newest first."""

    def for_entity(self, entity_type: str, entity_id: str, *, before: int | None = None,
                   limit: int = 100) -> list[AuditEntryOut]:
        query = AuditEventRow.select().where(AuditEventRow.entity_type == entity_type,
                                             AuditEventRow.entity_id == entity_id)
        return self._page(query, before, limit)

    def by_actor(self, user_id: str, *, before: int | None = None,
                 limit: int = 100) -> list[AuditEntryOut]:
        """What ``user_id`` did: as the acting client, or as the end user a client acted
        for (``X-User-ID``)."""
        return self._page(AuditEventRow.select().where(
            (AuditEventRow.actor == user_id) | (AuditEventRow.on_behalf_of == user_id)),
            before, limit)

    def recent(self, *, before: int | None = None, limit: int = 100) -> list[AuditEntryOut]:
        return self._page(AuditEventRow.select(), before, limit)

    @staticmethod
    def _page(query: Any, before: int | None, limit: int) -> list[AuditEntryOut]:
        return [AuditEntryOut(id=r.pk, occurred_at=r.occurred_at, action=r.action, actor=r.actor,
                              on_behalf_of=r.on_behalf_of, entity_type=r.entity_type,
                              entity_id=r.entity_id, request_id=r.request_id, ip=r.ip,
                              user_agent=r.user_agent, old_value=r.old_value,
                              new_value=r.new_value)
                for r in page_query(query, before, limit)]


def page_query(query: Any, before: int | None, limit: int) -> Any:
    """A page of ``query``'s rows in the order things happened, newest first (a read's row
    may be written after a later write's: ``mpi.storage.readaudit``); ``before`` is the
    last row of the previous page (its ``pk``, as the API's cursor)."""
    order = peewee.Tuple(AuditEventRow.occurred_at, AuditEventRow.pk)
    if before is not None:
        at = (AuditEventRow.select(AuditEventRow.occurred_at)
              .where(AuditEventRow.pk == before).scalar())
        query = query.where(order < peewee.Tuple(at, before) if at is not None
                            else AuditEventRow.pk < before)
    return query.order_by(AuditEventRow.occurred_at.desc(),
                          AuditEventRow.pk.desc()).limit(limit)
