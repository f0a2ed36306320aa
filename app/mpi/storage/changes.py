"""The change log: one event per committed change, read in commit order.

Events are appended by the unit of work (:mod:`mpi.storage.work`) as the last write of
its transaction. The feed cursor is the event's id. For a reader that remembers the
last id it saw to miss nothing, ids must become visible in increasing order. PostgreSQL
hands out sequence values at insert time, not at commit, so the appending transaction
takes a transaction-scoped advisory lock just before it appends and holds it through
commit: appends (only the append and the commit, not the rest of the transaction) are
serialised, and ids are visible in commit order. SQLite already serialises writers.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import datetime
from typing import Any

import peewee

from mpi.domain.audit import Actor
from mpi.domain.events import ChangeEvent, EventType
from mpi.storage.bulk import bulk_insert, insert_values
from mpi.storage.db import LOCK_CHANGE_LOG, is_postgres
from mpi.storage.models import ChangeEventRow

Events = Sequence[tuple[EventType, str, int | None, Any]]
#: The appending transaction's lock on the change log (PostgreSQL; module docstring).
LOCK_SQL = "SELECT pg_advisory_xact_lock(%s)"


def append_events(db: peewee.Database, events: Events, actor: Actor, now: datetime) -> None:
    """Append (type, entity id, entity version, payload) events, in order, for ``actor``.
    Call it as the transaction's last write (module docstring)."""
    if not events:
        return
    if is_postgres(db):
        db.execute_sql(LOCK_SQL, (LOCK_CHANGE_LOG,))
    bulk_insert(ChangeEventRow, change_rows(events, actor, now))


def append_statements(events: Events, actor: Actor, now: datetime
                      ) -> list[tuple[str, list[Any]]]:
    """What :func:`append_events` sends on PostgreSQL, as (SQL, parameters) for a caller
    that sends them with its other statements in one round trip: the change log's lock,
    then ONE INSERT of the events (a VALUES list), in this order."""
    if not events:
        return []
    return [(LOCK_SQL, [LOCK_CHANGE_LOG]),
            insert_values(ChangeEventRow, change_rows(events, actor, now), "%s")]


def change_rows(events: Events, actor: Actor, now: datetime) -> list[dict[str, Any]]:
    return [dict(occurred_at=now, event_type=kind.value, entity_type=kind.entity_type,
                 entity_id=entity_id, entity_version=version, actor=actor.user_id,
                 request_id=actor.request_id, payload=payload)
            for kind, entity_id, version, payload in events]


_C = ChangeEventRow
#: The columns of an event, in the order of :class:`ChangeEvent`'s fields.
_EVENT_COLUMNS = (_C.pk, _C.occurred_at, _C.event_type, _C.entity_type, _C.entity_id,
                  _C.entity_version, _C.actor, _C.request_id, _C.payload)


class ChangeRepository:
    """Reads the change log in commit order."""

    def read(self, *, after: int = 0, limit: int = 100,
             undecoded: Collection[str] = ()) -> list[ChangeEvent]:
        """The events after ``after``, oldest first; the payloads of the event types in
        ``undecoded`` are left as the JSON text stored (for a reader that decodes them
        where, and if, it needs them: the search indexer's child processes)."""
        return _events(ChangeEventRow.select(*_EVENT_COLUMNS).where(ChangeEventRow.pk > after)
                       .order_by(ChangeEventRow.pk).limit(limit), undecoded)

    def of_entity(self, entity_type: str, entity_id: str, event_types: Sequence[str], *,
                  version: int | None = None, limit: int = 1000) -> list[ChangeEvent]:
        """One entity's events of these types, newest first (the (entity_type, entity_id,
        pk) index), or only those of one version."""
        query = ChangeEventRow.select(*_EVENT_COLUMNS).where(
            ChangeEventRow.entity_type == entity_type, ChangeEventRow.entity_id == entity_id,
            ChangeEventRow.event_type.in_(list(event_types)))
        if version is not None:
            query = query.where(ChangeEventRow.entity_version == version)
        return _events(query.order_by(ChangeEventRow.pk.desc()).limit(limit))

    def backlog(self, after: int | None) -> tuple[int, datetime | None]:
        """What follows event ``after`` (None: the start): how many events at most (the
        newest id minus ``after``; ids may skip a value, never repeat one) and when the
        first of them happened (None: nothing follows). Two index probes, one statement,
        whatever the size of the backlog."""
        start = after or 0
        db = ChangeEventRow._meta.database  # type: ignore[attr-defined]
        table = ChangeEventRow._meta.table_name  # type: ignore[attr-defined]
        row = db.execute_sql(
            f'SELECT (SELECT max(pk) FROM "{table}"), '  # noqa: S608 - names from the model
            f'(SELECT occurred_at FROM "{table}" WHERE pk > {db.param} ORDER BY pk LIMIT 1)',
            (start,)).fetchone()
        first = row[1]
        if first is None:
            return 0, None
        return max(int(row[0] or 0) - start, 1), ChangeEventRow.occurred_at.python_value(first)

    def last_id(self) -> int:
        row = ChangeEventRow.select(peewee.fn.MAX(ChangeEventRow.pk).alias("m")).scalar()
        return int(row or 0)


def _events(query: Any, undecoded: Collection[str] = ()) -> list[ChangeEvent]:
    """The events a query of :data:`_EVENT_COLUMNS` selects, the payloads of the types in
    ``undecoded`` left as their JSON text."""
    sql, params = query.sql()
    db = ChangeEventRow._meta.database  # type: ignore[attr-defined]
    when, decode = ChangeEventRow.occurred_at.python_value, ChangeEventRow.payload.python_value
    return [ChangeEvent(pk, when(at), kind, entity, entity_id, version, actor, request,
                        payload if kind in undecoded else decode(payload))
            for pk, at, kind, entity, entity_id, version, actor, request, payload
            in db.execute_sql(sql, params)]
