"""The audit trail read back: newest first by the time things happened (a read's row may be
written after a later change's), page by page with the last row's id as the cursor, each
page read in order from an index."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any
from unittest.mock import patch

import pytest

from mpi.domain.audit import Actor, AuditTag
from mpi.storage.audit import AuditRepository, page_query, write_audit_rows
from mpi.storage.db import execute_for_values
from mpi.storage.models import AuditEventRow
from tests.helpers import rows_read

T0 = datetime(2026, 3, 1, 12, 0)
POSTGRES_ONLY = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)


def _write(seconds: float, tag: AuditTag, entity_id: str, user: str = "u1") -> None:
    write_audit_rows([(tag, entity_id, None, None)], Actor(user, on_behalf_of="nurse"),
                     T0 + timedelta(seconds=seconds))


def test_pages_follow_the_time_things_happened_not_the_order_rows_were_written(db):
    _write(0, AuditTag.PATIENT_CREATE, "p1")
    _write(2, AuditTag.PATIENT_UPDATE, "p1")
    _write(1, AuditTag.PATIENT_READ, "p1")  # written late, as a waiting read's row is
    _write(3, AuditTag.PATIENT_READ, "p1")
    _write(3, AuditTag.PATIENT_DELETE, "p1")  # same instant: the later row first
    _write(1.5, AuditTag.PATIENT_READ, "p2")
    repo = AuditRepository()
    expected = [(3, "patient:record:delete"), (3, "patient:record:read"),
                (2, "patient:record:update"), (1, "patient:record:read"),
                (0, "patient:record:create")]

    def seen(entries):
        return [((e.occurred_at.replace(tzinfo=None) - T0).seconds, e.action) for e in entries]

    assert seen(repo.for_entity("patient", "p1")) == expected
    pages, before = [], None
    while True:  # two at a time, each page after the last row of the one before
        page = repo.for_entity("patient", "p1", before=before, limit=2)
        pages.append(seen(page))
        if len(page) < 2:
            break
        before = page[-1].id
    assert pages == [expected[:2], expected[2:4], expected[4:]]
    assert [e.entity_id for e in repo.recent(limit=3)] == ["p1", "p1", "p1"]
    assert [e.entity_id for e in repo.recent(before=repo.recent(limit=3)[-1].id,
                                             limit=2)] == ["p2", "p1"]
    assert len(repo.by_actor("nurse")) == len(repo.by_actor("u1")) == 6


@POSTGRES_ONLY
def test_each_page_is_read_in_order_from_an_index(db):
    actors = ("u1", "u2", "u3", "u4")
    for n in range(2000):
        _write(n, AuditTag.PATIENT_READ, f"p{n % 4}", actors[n % 4])
    db.execute_sql("ANALYZE audit_event")
    before = AuditRepository().recent(limit=1)[0].id
    queries = {
        "entity": AuditEventRow.select().where(AuditEventRow.entity_type == "patient",
                                               AuditEventRow.entity_id == "p3"),
        "actor": AuditEventRow.select().where(AuditEventRow.actor == "u2"),
        "recent": AuditEventRow.select(),
    }
    for name, query in queries.items():
        sql, params = page_query(query, before, 100).sql()
        plan = "\n".join(row[0] for row in db.execute_sql("EXPLAIN " + sql, params))
        assert "Sort" not in plan, (name, plan)
        assert "occurred_at_pk" in plan, (name, plan)



@POSTGRES_ONLY
def test_what_a_user_did_reads_about_a_page_of_rows_whoever_the_user(db):
    """What a user did (as the client, or as the end user a client acted for) is read a
    page from each index, in order, planned for the user: said as one OR on the
    service's generic plan, it walked the whole trail in time order (160 ms at 808,000
    rows for a user with none). Whether the user has most of the rows, a few or none, the
    statement reads about a page of them."""
    # An interface engine acting for many, and one user now and then: 100,000 rows.
    db.execute_sql(
        "INSERT INTO audit_event (occurred_at, action, actor, on_behalf_of, entity_type, "
        "entity_id) SELECT %s::timestamp + n * interval '1 second', 'patient:record:read', "
        "CASE WHEN n % 50 = 0 THEN 'clerk' ELSE 'engine' END, "
        "CASE WHEN n % 7 = 0 THEN 'clerk' ELSE 'u' || n % 40 END, 'patient', 'p' || n "
        "FROM generate_series(0, 99999) AS n".replace("%", "%%").replace("%%s", "%s"),
        (T0,))
    db.execute_sql("ANALYZE audit_event")
    repo = AuditRepository()
    newest = repo.recent(limit=1)[0].id
    for user in ("engine", "clerk", "nobody"):
        captured: list[Any] = []
        with patch.object(AuditRepository, "_page", staticmethod(
                lambda query, before, limit, into=captured:
                into.append(page_query(query, before, limit)) or [])):
            repo.by_actor(user, before=newest, limit=20)
        sql, params = captured[0].sql()
        ((plan,),) = execute_for_values(db, "EXPLAIN (ANALYZE, FORMAT JSON) " + sql, params)
        assert rows_read(plan[0]["Plan"], "audit_event") <= 80, (user, plan)
    # And the answer is the newest rows of either kind, each once, in order.
    every = [r.pk for r in AuditEventRow.select().order_by(AuditEventRow.pk.desc())
             .where((AuditEventRow.actor == "clerk") | (AuditEventRow.on_behalf_of == "clerk"))]
    pages, before = [], None
    while page := repo.by_actor("clerk", before=before, limit=500):
        pages += [e.id for e in page]
        before = page[-1].id
    assert len(every) == 14286 + 2000 - 286  # the multiples of 7 or of 50 below 100,000
    assert pages == every

