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
from mpi.storage.db import select_for_values
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
        for (``X-User-ID``).

        The page of each (from its own index, in order), then the newest of both. Said as
        one condition (``actor = $1 OR on_behalf_of = $1``) on a generic plan, a user with
        few rows took a walk over the whole trail in time order: 160 ms for a user with
        none at 808,000 audit rows, and growing with the trail."""
        older = _older_than(before)
        acting, acted_for = (
            _newest_first(AuditEventRow.select(AuditEventRow.pk).where(column == user_id),
                          older, limit).alias(name)
            for column, name in ((AuditEventRow.actor, "acting"),
                                 (AuditEventRow.on_behalf_of, "acted_for")))
        # Each side a subquery of its own: SQLite takes no LIMIT on a UNION's part.
        either = (AuditEventRow.select(acting.c.pk).from_(acting)
                  | AuditEventRow.select(acted_for.c.pk).from_(acted_for))
        return self._page(AuditEventRow.select().where(AuditEventRow.pk.in_(either)),
                          None, limit)

    def recent(self, *, before: int | None = None, limit: int = 100) -> list[AuditEntryOut]:
        return self._page(AuditEventRow.select(), before, limit)

    @staticmethod
    def _page(query: Any, before: int | None, limit: int) -> list[AuditEntryOut]:
        """The page, planned for its values (:func:`select_for_values`): a user's rows,
        an entity's and the newest can each be few or millions, which a generic plan
        cannot tell."""
        rows = select_for_values(page_query(query, before, limit))
        return [AuditEntryOut(id=r.pk, occurred_at=r.occurred_at, action=r.action, actor=r.actor,
                              on_behalf_of=r.on_behalf_of, entity_type=r.entity_type,
                              entity_id=r.entity_id, request_id=r.request_id, ip=r.ip,
                              user_agent=r.user_agent, old_value=r.old_value,
                              new_value=r.new_value)
                for r in rows]


def page_query(query: Any, before: int | None, limit: int) -> Any:
    """A page of ``query``'s rows in the order things happened, newest first (a read's row
    may be written after a later write's: ``mpi.storage.readaudit``); ``before`` is the
    last row of the previous page (its ``pk``, as the API's cursor)."""
    return _newest_first(query, _older_than(before), limit)


def _older_than(before: int | None) -> Any:
    """The rows after ``before`` in :func:`page_query`'s order (None: every row)."""
    if before is None:
        return None
    at = (AuditEventRow.select(AuditEventRow.occurred_at)
          .where(AuditEventRow.pk == before).scalar())
    if at is None:
        return AuditEventRow.pk < before
    return peewee.Tuple(AuditEventRow.occurred_at, AuditEventRow.pk) < peewee.Tuple(at, before)


def _newest_first(query: Any, older: Any, limit: int) -> Any:
    if older is not None:
        query = query.where(older)
    # The limit in the statement's text (an int): as a parameter, a generic plan takes it
    # for a tenth of the rows, and joined the union's keys to the trail by reading it whole.
    return query.order_by(AuditEventRow.occurred_at.desc(),
                          AuditEventRow.pk.desc()).limit(peewee.SQL(str(int(limit))))
