"""The unit of work: one clock reading, audit rows then change events last, one commit;
read-only units may skip the disk flush; database errors become StorageUnavailable."""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import peewee
import pytest

from mpi.config import parse_database_url
from mpi.domain.audit import Actor, AuditTag
from mpi.domain.errors import ConcurrentChange, StorageUnavailable
from mpi.domain.events import EventType
from mpi.storage import work as work_module
from mpi.storage.db import close_database, database_for
from mpi.storage.models import AuditEventRow, ChangeEventRow
from mpi.storage.work import UnitOfWork, retried, sqlstate

NOW = datetime(2026, 1, 1)
POSTGRES_ONLY = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
ACTOR = Actor("u1", ip="10.0.0.1", user_agent="ua", request_id="req-1")


class Boom(Exception):
    pass


def _work(db, *, synchronous_reads: bool = False) -> UnitOfWork:
    return UnitOfWork(db, clock=lambda: NOW, synchronous_reads=synchronous_reads)


@contextlib.contextmanager
def _statements() -> Iterator[list[tuple[str, bool]]]:
    """The statements psycopg is asked to run meanwhile (their first three words), and
    whether each went in a pipeline."""
    from psycopg import Cursor, pq

    sent: list[tuple[str, bool]] = []
    execute = Cursor.execute

    def spy(self, query, *args, **kwargs):
        piped = self.connection.pgconn.pipeline_status != pq.PipelineStatus.OFF
        sent.append((" ".join(str(query).split()[:3]), piped))
        return execute(self, query, *args, **kwargs)

    Cursor.execute = spy  # type: ignore[method-assign]
    try:
        yield sent
    finally:
        Cursor.execute = execute  # type: ignore[method-assign]


def _commit_mode(db, backend: str, work: UnitOfWork, tag: AuditTag) -> str:
    """The commit mode the unit of work ends with: set (SET LOCAL) by its flush, which
    sends the COMMIT with it, in one round trip."""
    with _statements() as sent, work.begin(ACTOR) as tx:
        tx.audit(tag, "p1")
    if backend != "postgresql":
        return "sqlite"
    assert db.execute_sql("SHOW synchronous_commit").fetchone()[0] == "on"  # (SET LOCAL)
    assert sent[-1] == ("COMMIT", True)
    return "off" if ("SET LOCAL synchronous_commit", True) in sent else "on"


def test_reads_do_not_wait_for_the_flush_unless_asked(db, backend):
    if backend == "postgresql":
        # The tests' throwaway server runs with synchronous_commit off; a real one has it on.
        db.execute_sql("SET synchronous_commit TO on")
    relaxed, strict = _work(db), _work(db, synchronous_reads=True)
    off, on = ("off", "on") if backend == "postgresql" else ("sqlite", "sqlite")
    reads = [tag for tag in AuditTag if tag.is_read]
    assert len(reads) == 14
    for read in reads:
        assert _commit_mode(db, backend, relaxed, read) == off, read
        assert _commit_mode(db, backend, strict, read) == on, read
    # A write keeps the flush, whatever the setting.
    for write in (tag for tag in AuditTag if not tag.is_read):
        assert _commit_mode(db, backend, relaxed, write) == on, write


def test_a_read_with_a_change_event_keeps_the_flush(db, backend):
    if backend == "postgresql":
        db.execute_sql("SET synchronous_commit TO on")
    work = _work(db)
    with work.begin(ACTOR) as tx:
        tx.audit(AuditTag.PATIENT_READ, "p1")
        tx.emit(EventType.PATIENT_UPDATED, "p1", version=2)
        assert not tx.reads_only


def test_durability_is_declared_per_tag_not_spelled():
    assert AuditTag.PATIENT_READ.is_read and AuditTag.MATCH_QUERY.is_read
    assert not AuditTag.PATIENT_CREATE.is_read and not AuditTag.REVIEW_RESOLVE.is_read
    assert {t.value for t in AuditTag if t.is_read} == {
        "patient:record:read", "patient:record:list", "patient:record:search",
        "identity:review:read", "identity:review:list", "identity:match:query",
        "person:record:read", "person:history:read", "audit:trail:read", "audit:recent:read",
        "audit:user:read", "events:feed:read", "admin:domain:list", "metrics:scrape:read"}
    by_value = AuditTag._value2member_map_  # what AuditTag(value) looks up
    assert by_value["identity:link:auto"] is AuditTag.link("auto")
    assert "patient:record:reed" not in by_value  # a misspelt tag is no tag at all
    with pytest.raises(ValueError):
        AuditTag("patient:record:reed")  # type: ignore[call-arg]  # the lookup, not __new__  # a misspelt tag is no tag at all


def test_rows_are_written_at_the_end_audit_first_events_last(db):
    work = _work(db)
    with work.begin(ACTOR) as tx:
        assert tx.now == NOW
        tx.emit(EventType.PATIENT_CREATED, "p1", version=1, payload={"id": "p1"})
        tx.audit(AuditTag.PATIENT_CREATE, "p1", new={"id": "p1"})
        tx.audit(AuditTag.LINK_NEW, "p1", new={"person_id": "P1"})
        tx.emit(EventType.PATIENT_LINKED, "p1", payload={"person_id": "P1"})
        assert AuditEventRow.select().count() == 0 and ChangeEventRow.select().count() == 0
    audits = list(AuditEventRow.select().order_by(AuditEventRow.pk))
    events = list(ChangeEventRow.select().order_by(ChangeEventRow.pk))
    assert [(a.action, a.entity_type, a.entity_id) for a in audits] == [
        ("patient:record:create", "patient", "p1"), ("identity:link:new", "patient", "p1")]
    assert {(a.actor, a.ip, a.user_agent, a.request_id, a.occurred_at) for a in audits} == {
        ("u1", "10.0.0.1", "ua", "req-1", NOW)}
    assert [(e.event_type, e.entity_type, e.entity_version) for e in events] == [
        ("PatientCreated", "patient", 1), ("PatientLinked", "patient", None)]
    assert events[0].payload == {"id": "p1"} and events[1].actor == "u1"


def test_an_error_in_the_unit_writes_nothing(db):
    with pytest.raises(Boom), _work(db).begin(ACTOR) as tx:
        tx.audit(AuditTag.PATIENT_CREATE, "p1")
        tx.emit(EventType.PATIENT_CREATED, "p1", version=1)
        raise Boom
    assert AuditEventRow.select().count() == 0 and ChangeEventRow.select().count() == 0


@POSTGRES_ONLY
def test_a_writes_audit_rows_and_events_go_in_one_round_trip(db):
    """A write's few audit rows, the change log's lock, its events and the COMMIT are
    sent together, in one pipeline, and answered together at its end (psycopg syncs a
    pipeline once, on leaving it): one round trip where there were four. The lock is
    still taken after the audit rows and before the events, in the unit's transaction,
    held to COMMIT; peewee's commit then finds nothing to commit and sends nothing."""
    work = _work(db)
    notices: list[str] = []
    db.connection().add_notice_handler(lambda notice: notices.append(notice.message_primary))
    with work.begin(ACTOR) as tx:
        tx.audit(AuditTag.PATIENT_CREATE, "p1")
        tx.audit(AuditTag.LINK_NEW, "p1")
        tx.emit(EventType.PATIENT_CREATED, "p1", version=1)
        tx.emit(EventType.PATIENT_LINKED, "p1")
        with _statements() as sent:
            work._flush(tx)
        tx._audits.clear()
        tx._events.clear()
        with _statements() as after:
            pass
    assert sent == [('INSERT INTO "audit_event"', True),
                    ("SELECT pg_advisory_xact_lock(%s)", True),
                    ('INSERT INTO "change_event"', True),
                    ("COMMIT", True)]
    assert after == [] and notices == []  # no second COMMIT ("no transaction in progress")
    held = db.execute_sql("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
                          "AND pid = pg_backend_pid() AND granted").fetchone()[0]
    assert held == 0  # released at the COMMIT
    assert [a.action for a in AuditEventRow.select().order_by(AuditEventRow.pk)] == [
        "patient:record:create", "identity:link:new"]
    assert [e.event_type for e in ChangeEventRow.select().order_by(ChangeEventRow.pk)] == [
        "PatientCreated", "PatientLinked"]


@POSTGRES_ONLY
def test_a_failed_statement_of_a_writes_flush_writes_nothing(db):
    """An audit row that does not fit fails the whole unit at the flush's one round trip:
    the unit's own rows roll back with it, and the connection is clean for the next."""
    from psycopg import pq

    work = _work(db)
    with pytest.raises(peewee.DataError), work.begin(ACTOR) as tx:
        db.execute_sql("INSERT INTO person (id, created_at, updated_at) "
                       "VALUES (gen_random_uuid(), now(), now())")
        tx.audit(AuditTag.PATIENT_CREATE, "x" * 200)  # entity_id is varchar(128)
        tx.emit(EventType.PATIENT_CREATED, "p1", version=1)
    assert db.connection().pgconn.transaction_status == pq.TransactionStatus.IDLE
    counts = db.execute_sql("SELECT (SELECT count(*) FROM person), "
                            "(SELECT count(*) FROM audit_event), "
                            "(SELECT count(*) FROM change_event)").fetchone()
    assert counts == (0, 0, 0)
    with work.begin(ACTOR) as tx:
        tx.audit(AuditTag.PATIENT_CREATE, "p1")
        tx.emit(EventType.PATIENT_CREATED, "p1", version=1)
    assert ChangeEventRow.select().count() == 1


def test_units_do_not_nest(db):
    work = _work(db)
    with work.begin(ACTOR), pytest.raises(RuntimeError, match="already open"), \
            work.begin(ACTOR):
        pass


def test_database_errors_become_storage_unavailable(db):
    work = _work(db)
    with pytest.raises(StorageUnavailable), work.begin(ACTOR):
        raise peewee.OperationalError("server closed the connection unexpectedly")
    with pytest.raises(StorageUnavailable), work.reading():
        raise peewee.InterfaceError("connection already closed")


def test_a_deadlock_is_a_concurrent_change_not_an_outage(postgres_url):
    """Two units lock two advisory keys in opposite orders: PostgreSQL picks one to give
    way (40P01), and that one must say "concurrent change", never "unavailable". (SQLite
    has one writer at a time: it cannot deadlock.)"""
    db = database_for(parse_database_url(postgres_url), max_connections=2)
    work = _work(db)
    both = threading.Barrier(2)
    ended: dict[int, str] = {}

    def unit(first: int, second: int) -> None:
        with db.connection_context():
            try:
                with work.begin(ACTOR):
                    db.execute_sql("SELECT pg_advisory_xact_lock(%s)", (first,))
                    both.wait()
                    db.execute_sql("SELECT pg_advisory_xact_lock(%s)", (second,))
                ended[first] = "ok"
            except ConcurrentChange as exc:
                assert sqlstate(exc) == "40P01"
                ended[first] = "gave way"

    threads = [threading.Thread(target=unit, args=args) for args in ((1, 2), (2, 1))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    close_database(db)
    assert sorted(ended.values()) == ["gave way", "ok"]


def test_sqlstate_looks_through_the_wrapping():
    class PgError(Exception):
        sqlstate = "40001"

    try:
        try:
            raise PgError("could not serialize access")
        except PgError as inner:
            raise peewee.OperationalError(inner) from None
    except peewee.OperationalError as wrapped:
        assert sqlstate(wrapped) == "40001"
    assert sqlstate(peewee.OperationalError("server closed the connection")) is None


def test_retried_runs_again_a_bounded_number_of_times(monkeypatch):
    monkeypatch.setattr(work_module, "FIRST_PAUSE", 0)
    calls: list[int] = []

    @retried
    def gives_way_twice(n: int) -> str:
        calls.append(n)
        if len(calls) < 3:
            raise ConcurrentChange("deadlock")
        return "written"

    assert gives_way_twice(7) == "written" and calls == [7, 7, 7]

    calls.clear()

    @retried
    def always_gives_way() -> None:
        calls.append(0)
        raise ConcurrentChange("deadlock")

    with pytest.raises(ConcurrentChange):
        always_gives_way()
    assert len(calls) == work_module.ATTEMPTS

    calls.clear()

    @retried
    def down() -> None:
        calls.append(0)
        raise StorageUnavailable("gone")

    with pytest.raises(StorageUnavailable):
        down()
    assert calls == [0]  # an outage is not retried here: the caller is told at once



# --- read units: the read, then its audit rows in one round trip -------------------------


def test_a_read_commits_its_audit_rows_before_it_returns(db):
    work = _work(db)

    def fetch(tx):
        tx.audit(AuditTag.PATIENT_READ, "p1")
        return "the record"

    assert work.read(ACTOR, fetch) == "the record"
    (row,) = AuditEventRow.select()
    assert (row.action, row.entity_id, row.actor, row.ip, row.request_id, row.occurred_at) == (
        AuditTag.PATIENT_READ.value, "p1", "u1", "10.0.0.1", "req-1", NOW)
    assert not db.in_transaction()


def test_a_read_that_fails_records_nothing_and_a_read_unit_records_only_reads(db):
    work = _work(db)

    def missing(tx):
        tx.audit(AuditTag.PATIENT_READ, "p1")
        raise Boom

    with pytest.raises(Boom):
        work.read(ACTOR, missing)

    def changes(tx):
        tx.audit(AuditTag.PATIENT_READ, "p1")
        tx.emit(EventType.PATIENT_UPDATED, "p1", version=2)

    with pytest.raises(RuntimeError):
        work.read(ACTOR, changes)
    assert AuditEventRow.select().count() == ChangeEventRow.select().count() == 0


@POSTGRES_ONLY  # SQLite runs in-process: it has no round trips to save
@pytest.mark.parametrize("synchronous_reads", [False, True])
def test_a_reads_audit_is_one_statement_that_commits_by_itself(db, monkeypatch,
                                                              synchronous_reads):
    """After the read, the audit rows go in ONE statement outside any transaction (one
    round trip). Unless reads are synchronous it commits without waiting for the disk:
    right after it the WAL is written further than it is flushed; the session's own
    setting is left as it was."""
    db.execute_sql("SET synchronous_commit TO on")  # the tests' server runs with it off
    work = _work(db, synchronous_reads=synchronous_reads)
    seen: list[tuple[str, bool]] = []
    execute = db.execute_sql

    def spy(sql, params=None, *args, **kwargs):
        seen.append((sql.split()[0], db.in_transaction()))
        return execute(sql, params, *args, **kwargs)

    prepared = work_module.execute_prepared

    def spy_prepared(on, sql, params):
        seen.append((sql.split()[0], db.in_transaction()))
        return prepared(on, sql, params)

    monkeypatch.setattr(work_module, "execute_prepared", spy_prepared)

    def fetch(tx):
        db.execute_sql("SELECT 1")
        tx.audit(AuditTag.PATIENT_READ, "p1")
        tx.audit(AuditTag.PATIENT_READ, "p2")

    unflushed = 0
    for _ in range(20):
        # The WAL written so far: the audit's commit goes after it, so once the commit is
        # flushed the flush position is past it. (Comparing with the WAL written after the
        # commit instead failed now and then: the server's own background records, such as
        # a standby snapshot, may land in between, not yet flushed.)
        before = db.execute_sql("SELECT pg_current_wal_insert_lsn()").fetchone()[0]
        monkeypatch.setattr(db, "execute_sql", spy)
        seen.clear()
        work.read(ACTOR, fetch)
        monkeypatch.setattr(db, "execute_sql", execute)
        assert seen == [("SELECT", False), ("INSERT", False)]
        unflushed += not db.execute_sql("SELECT pg_current_wal_flush_lsn() > %s::pg_lsn",
                                        (before,)).fetchone()[0]
    assert AuditEventRow.select().count() == 40
    # Asynchronous: nearly always unflushed (the WAL writer may flush in between);
    # synchronous: never.
    assert unflushed >= 15 if not synchronous_reads else unflushed == 0
    assert db.execute_sql("SHOW synchronous_commit").fetchone()[0] == "on"


@POSTGRES_ONLY
def test_a_failed_audit_insert_leaves_the_connection_clean(db):
    from psycopg import pq

    work = _work(db)

    def too_long(tx):
        tx.audit(AuditTag.PATIENT_READ, "x" * 200)  # entity_id is varchar(128)

    with pytest.raises(peewee.DataError):
        work.read(ACTOR, too_long)
    assert db.connection().pgconn.transaction_status == pq.TransactionStatus.IDLE
    work.read(ACTOR, lambda tx: tx.audit(AuditTag.PATIENT_READ, "p1"))
    assert [r.entity_id for r in AuditEventRow.select()] == ["p1"]


def _audit_rows(admin, entity_id: str) -> int:
    """Audit rows about ``entity_id``, counted on another connection (committed ones)."""
    with admin.connection_context():
        return admin.execute_sql("SELECT count(*) FROM audit_event WHERE entity_id = %s",
                                 (entity_id,)).fetchone()[0]


def test_a_connection_broken_while_pooled_costs_a_read_nothing(postgres_url):
    """The pool lends connections without a test query; one the server closed meanwhile
    (a restart, an idle timeout) fails at the read's first statement, and the read runs
    again on a new connection; the other idle ones are dropped from the pool."""
    db = database_for(parse_database_url(postgres_url), max_connections=3)
    pool: Any = db
    admin = database_for(parse_database_url(postgres_url), max_connections=1)
    work = _work(db)
    both = threading.Barrier(2)
    pids: list[int] = []
    mark = f"p-{uuid.uuid4()}"

    def pool_one() -> None:  # two threads at once: two pooled connections
        with db.connection_context():
            pids.append(db.execute_sql("SELECT pg_backend_pid()").fetchone()[0])
            both.wait(10)

    try:
        threads = [threading.Thread(target=pool_one) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert len(pool._connections) == 2
        with admin.connection_context():
            for pid in pids:
                admin.execute_sql("SELECT pg_terminate_backend(%s)", (pid,))
        def fetch(tx):
            tx.audit(AuditTag.PATIENT_READ, mark)
            return db.execute_sql("SELECT pg_backend_pid()").fetchone()[0]

        db.connect()  # as the API's middleware does; lent without a test: broken
        try:
            served_by = work.read(ACTOR, fetch)
        finally:
            db.close()
        assert served_by not in pids
        assert len(pool._connections) == 1  # the new one; the other broken one was dropped
        assert _audit_rows(admin, mark) == 1
    finally:
        close_database(db)
        close_database(admin)


def test_the_pool_lends_an_idle_connection_without_a_round_trip():
    from psycopg import pq

    from mpi.storage.db import PostgresPool

    class Conn:
        closed = False
        status = pq.TransactionStatus.IDLE
        rolled_back = False

        @property
        def pgconn(self):
            return self

        @property
        def transaction_status(self):
            return self.status

        def cursor(self):
            raise AssertionError("a query on loan")

        def rollback(self):
            self.rolled_back = True

    pool = PostgresPool("x", autoconnect=False)
    conn = Conn()
    assert not pool._is_closed(conn)
    conn.status = pq.TransactionStatus.INERROR
    assert not pool._is_closed(conn) and conn.rolled_back
    conn.status = pq.TransactionStatus.UNKNOWN
    assert pool._is_closed(conn)
    conn.closed = True
    assert pool._is_closed(conn)


def test_a_unit_on_a_connection_broken_while_pooled_opens_again_on_a_new_one(postgres_url):
    """A write's BEGIN is the first thing a lent connection sends: when the server closed
    it meanwhile (a restart), nothing was done yet and the unit runs on a new connection;
    the write commits, as if nothing happened."""
    db = database_for(parse_database_url(postgres_url), max_connections=2)
    admin = database_for(parse_database_url(postgres_url), max_connections=1)
    work = _work(db)
    mark = f"w-{uuid.uuid4()}"
    from mpi.storage.db import database_proxy

    database_proxy.initialize(db)  # the audit rows' model writes through the proxy
    try:
        db.connect()
        pid = db.execute_sql("SELECT pg_backend_pid()").fetchone()[0]
        db.close()
        with admin.connection_context():
            admin.execute_sql("SELECT pg_terminate_backend(%s)", (pid,))
        db.connect()
        try:
            with work.begin(ACTOR) as tx:
                tx.audit(AuditTag.PATIENT_UPDATE, mark)
                assert db.execute_sql("SELECT pg_backend_pid()").fetchone()[0] != pid
        finally:
            db.close()
        assert _audit_rows(admin, mark) == 1
    finally:
        close_database(db)
        close_database(admin)


# --- AUDIT_READ_WINDOW: reads' audit rows written behind them (mpi.storage.readaudit) -----


def _windowed(db, window: float, *, synchronous_reads: bool = False) -> UnitOfWork:
    return UnitOfWork(db, clock=lambda: NOW, synchronous_reads=synchronous_reads,
                      read_audit_window=window)


def _read(work: UnitOfWork, entity_id: str, actor: Actor = ACTOR) -> str:
    def fetch(tx):
        tx.audit(AuditTag.PATIENT_READ, entity_id)
        return "the record"

    return work.read(actor, fetch)


def test_with_a_window_a_read_answers_first_and_its_rows_follow_in_one_write(db):
    work = _windowed(db, 60)
    other = Actor("u2", on_behalf_of="nurse-9", ip="10.0.0.2", request_id="req-2")
    assert _read(work, "p1") == "the record"
    assert _read(work, "p2", other) == "the record"
    assert AuditEventRow.select().count() == 0  # waiting, not lost
    work.flush_reads()
    rows = list(AuditEventRow.select().order_by(AuditEventRow.pk))
    assert [(r.entity_id, r.actor, r.on_behalf_of, r.ip, r.request_id, r.occurred_at)
            for r in rows] == [("p1", "u1", None, "10.0.0.1", "req-1", NOW),
                               ("p2", "u2", "nurse-9", "10.0.0.2", "req-2", NOW)]
    assert not db.in_transaction()
    work.close()


def test_with_a_window_the_rows_are_written_within_it_and_at_close(db):
    work = _windowed(db, 0.2)
    _read(work, "p1")
    deadline = time.monotonic() + 5
    while AuditEventRow.select().count() == 0:
        assert time.monotonic() < deadline, "the row was not written within the window"
        time.sleep(0.02)
    closing = _windowed(db, 60)
    _read(closing, "p2")
    closing.close()
    assert sorted(str(r.entity_id) for r in AuditEventRow.select()) == ["p1", "p2"]
    work.close()


def test_synchronous_reads_never_wait(db):
    work = _windowed(db, 60, synchronous_reads=True)
    _read(work, "p1")
    assert [r.entity_id for r in AuditEventRow.select()] == ["p1"]


def test_a_read_whose_rows_do_not_fit_writes_them_itself(db, backend):
    """Rows that cannot go in a batch (one refused would hold up the others) are written
    by their read, before it answers, as without a window."""
    work = _windowed(db, 60)
    _read(work, "p1")
    assert not work_module._fits([{"entity_id": "p\x00"}])  # PostgreSQL refuses NUL
    assert work_module._fits([{"entity_id": "p1", "old_value": "x" * 1000, "ip": None}])
    long = "x" * 200  # entity_id is varchar(128)
    if backend == "postgresql":
        with pytest.raises(peewee.DataError):
            _read(work, long)
    else:  # SQLite keeps any length: written at once, by the read itself
        _read(work, long)
        assert [r.entity_id for r in AuditEventRow.select()] == [long]
    work.flush_reads()
    assert sorted(str(r.entity_id) for r in AuditEventRow.select()) == sorted(
        ["p1"] + ([long] if backend == "sqlite" else []))
    work.close()


@POSTGRES_ONLY
def test_a_row_the_database_refuses_does_not_hold_up_the_other_reads(db, caplog):
    from mpi.storage.audit import audit_rows

    work = _windowed(db, 60)
    units = [audit_rows([(AuditTag.PATIENT_READ, entity_id, None, None)], ACTOR, NOW)
             for entity_id in ("p1", "x" * 200, "p3")]
    work._write_reads(units)
    assert sorted(str(r.entity_id) for r in AuditEventRow.select()) == ["p1", "p3"]
    assert "the audit rows of 1 read(s) were refused by the database (DataError)" in caplog.text
    assert "x" * 20 not in caplog.text
    work.close()
