"""The unit of work: ONE write is one object.

Every service method that changes or audits something runs in one::

    with work.begin(actor) as tx:            # opens the transaction, takes the clock once
        ...repository reads and writes...     # at tx.now
        tx.audit(AuditTag.PATIENT_UPDATE, patient_id, old=..., new=...)
        tx.emit(EventType.PATIENT_UPDATED, patient_id, version=..., payload=...)
                                              # on leaving: audit rows, then change events
                                              # (the last write), then COMMIT

``audit`` and ``emit`` only collect; the rows are written when the block ends without an
error, audit rows first and change events last (``mpi.storage.changes`` says why last),
then the transaction commits. An error anywhere rolls everything back. A lost connection
or an exhausted pool becomes :class:`StorageUnavailable` here, in this one place. A
deadlock or a serialization failure (SQLSTATE 40P01, 40001) is not an outage: it becomes
:class:`ConcurrentChange`, and a service method marked :func:`retried` runs its unit again
(a few times, after a short random pause) before giving up with it. Writers take their
locks in one order (the linking lock, then record rows, then blocking keys:
``mpi.storage.identity``), so a retry is a last line, not the plan.

Reads are audited too (reading a record is access to health information). A unit whose
audit rows are all reads (:attr:`AuditTag.is_read`) and which emits nothing may commit
on PostgreSQL without waiting for the disk flush (``SET LOCAL synchronous_commit TO
off``) unless ``synchronous_reads`` is set (``AUDIT_SYNCHRONOUS_READS``): the rows are
in the write-ahead log at once and on disk within ``wal_writer_delay`` (200 ms by
default) x 3. A crash of the *database server* in that window can lose the newest
read-audit rows; it never corrupts anything and never touches a write's durability.
Measured on these machines, waiting for the flush was most of a lookup's tail latency
(``nox -s bench -- identity``). A record read's rows may also wait in the process to be
written with other reads' rows, in one transaction (``AUDIT_READ_WINDOW``:
:mod:`mpi.storage.readaudit`).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import random
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from typing import Any, ParamSpec, TypeVar

import peewee

from mpi import metrics
from mpi.domain.audit import Actor, AuditTag
from mpi.domain.errors import ConcurrentChange, StorageUnavailable
from mpi.domain.events import EventType
from mpi.storage.audit import audit_insert, audit_rows, write_audit_rows
from mpi.storage.bulk import COPY_MIN_ROWS, bulk_insert, execute_few
from mpi.storage.changes import append_events, append_statements
from mpi.storage.db import connection, execute_prepared, is_postgres, unwrapped, write_transaction
from mpi.storage.models import AuditEventRow
from mpi.storage.readaudit import ReadAudits

Clock = Callable[[], datetime]
log = logging.getLogger(__name__)

#: SQLSTATEs after which the same unit of work may simply run again: a serialization
#: failure and a detected deadlock (PostgreSQL's class 40, "transaction rollback").
RETRYABLE_SQLSTATES = frozenset({"40001", "40P01"})
#: How often a :func:`retried` method runs at most, and the first pause's upper bound
#: (doubled each time, drawn at random so two writers do not collide again in step).
ATTEMPTS = 5
#: What a unit that only records reads runs on PostgreSQL (module docstring).
SET_ASYNC_COMMIT = "SET LOCAL synchronous_commit TO off"
#: The same for a single statement in autocommit (a read's audit row): its own implicit
#: transaction commits without waiting for the flush.
RETURNING_ASYNC_COMMIT = " RETURNING set_config('synchronous_commit', 'off', true)"
FIRST_PAUSE = 0.02

P = ParamSpec("P")
R = TypeVar("R")


def sqlstate(exc: BaseException) -> str | None:
    """The SQLSTATE of a database error, looking through peewee's wrapping."""
    seen: set[int] = set()
    todo: list[object] = [exc]
    while todo:
        err = todo.pop()
        if not isinstance(err, BaseException) or id(err) in seen:
            continue
        seen.add(id(err))
        code = getattr(err, "sqlstate", None) or getattr(err, "pgcode", None)
        if isinstance(code, str):
            return code
        todo.extend([*err.args[:1], err.__cause__, err.__context__])
    return None


def _fits(rows: list[dict[str, Any]]) -> bool:
    """Whether every text value of these audit rows fits its column, without a NUL
    (PostgreSQL refuses it): what a batch of many reads' rows must not fail on. A read
    whose rows do not fit writes them itself, and fails alone."""
    return not any(isinstance(value, str)
                   and (len(value) > _AUDIT_TEXT_LIMITS[name] or "\x00" in value)
                   for row in rows for name, value in row.items()
                   if name in _AUDIT_TEXT_LIMITS)


_AUDIT_TEXT_LIMITS = {name: field.max_length
                      for name, field in AuditEventRow._meta.fields.items()  # type: ignore[attr-defined]
                      if isinstance(field, peewee.CharField)}


def retried(method: Callable[P, R]) -> Callable[P, R]:
    """Run ``method`` (a service method that opens its own unit of work) again when the
    database made it give way to a concurrent writer; after :data:`ATTEMPTS` runs the
    :class:`ConcurrentChange` goes to the caller (HTTP 409 with ``Retry-After``)."""

    @functools.wraps(method)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        for attempt in range(ATTEMPTS - 1):
            try:
                return method(*args, **kwargs)
            except ConcurrentChange:
                time.sleep(random.uniform(0, FIRST_PAUSE * 2 ** attempt))
        return method(*args, **kwargs)

    return run


class Transaction:
    """One open unit of work: who acts, when (one clock reading), and what it records."""

    __slots__ = ("_audits", "_events", "actor", "now")

    def __init__(self, actor: Actor, now: datetime):
        self.actor = actor
        self.now = now
        self._audits: list[tuple[AuditTag, str | None, Any, Any]] = []
        self._events: list[tuple[EventType, str, int | None, Any]] = []

    def audit(self, tag: AuditTag, entity_id: str | None, *, old: Any = None,
              new: Any = None) -> None:
        """An audit row about ``entity_id`` (of the tag's entity type)."""
        self._audits.append((tag, entity_id, old, new))

    def emit(self, event_type: EventType, entity_id: str, *, version: int | None = None,
             payload: Any = None) -> None:
        """A change event about ``entity_id`` (of the type's entity type)."""
        self._events.append((event_type, entity_id, version, payload))

    @property
    def reads_only(self) -> bool:
        """Whether everything this unit records is a read."""
        return bool(self._audits) and not self._events and all(
            tag.is_read for tag, _, _, _ in self._audits)


class UnitOfWork:
    """Opens units of work on ``db`` (see the module docstring)."""

    def __init__(self, db: peewee.Database, *, clock: Clock, synchronous_reads: bool,
                 read_audit_window: float = 0.0):
        self._db = db
        self.clock = clock
        self.synchronous_reads = synchronous_reads
        self._postgres = is_postgres(db)
        self._local = threading.local()
        # AUDIT_READ_WINDOW: reads' audit rows written behind them, in batches
        # (mpi.storage.readaudit); never with synchronous reads (each on disk first).
        self._behind = (ReadAudits(self._write_reads, window=read_audit_window)
                        if read_audit_window > 0 and not synchronous_reads else None)

    @contextlib.contextmanager
    def attached(self, write: Callable[[Transaction], None]) -> Iterator[None]:
        """Run ``write(tx)`` at the end of each unit of work this thread opens meanwhile,
        in its transaction: what a caller above the services must record with the change
        or not at all (an HL7 message's acknowledgement, kept for a resend)."""
        self._local.attached = write
        try:
            yield
        finally:
            self._local.attached = None

    @contextlib.contextmanager
    def begin(self, actor: Actor) -> Iterator[Transaction]:
        if self._db.in_transaction():
            raise RuntimeError("a unit of work is already open on this connection; "
                               "pass its Transaction down instead of opening another")
        try:
            with contextlib.ExitStack() as opened:
                self._open(opened)
                tx = Transaction(actor, self.clock())
                yield tx
                self._flush(tx)
            metrics.committed(tag for tag, _, _, _ in tx._audits)
        except (peewee.OperationalError, peewee.InterfaceError) as exc:
            if sqlstate(exc) in RETRYABLE_SQLSTATES:
                raise ConcurrentChange("another change to the same records was being made "
                                       "at the same moment; nothing was written, send the "
                                       "request again") from exc
            self._forget_idle()
            raise StorageUnavailable("the database is unavailable") from exc

    def _open(self, opened: contextlib.ExitStack) -> None:
        """Open the unit's transaction. Its BEGIN is the first statement a pooled
        connection sends (the pool does not test it): if the connection broke while
        pooled, nothing was done yet, so the unit opens again on a new connection
        (the pool's other idle ones dropped) instead of failing."""
        try:
            opened.enter_context(write_transaction(self._db))
        except (peewee.OperationalError, peewee.InterfaceError):
            if self._db.is_connection_usable():
                raise
            self._reconnect()
            opened.enter_context(write_transaction(self._db))

    @contextlib.contextmanager
    def reading(self) -> Iterator[None]:
        """Database errors as :class:`StorageUnavailable`, for what is read outside a unit
        of work (a look-up after a refused write, say)."""
        try:
            yield
        except (peewee.OperationalError, peewee.InterfaceError) as exc:
            self._forget_idle()
            raise StorageUnavailable("the database is unavailable") from exc

    def read(self, actor: Actor, fetch: Callable[[Transaction], R]) -> R:
        """A read and its audit rows: ``fetch(tx)`` reads (without a transaction around
        it, so each statement is its own snapshot: give it ONE statement to read, then
        it costs one round trip and locks nothing) and records what it read with
        ``tx.audit``. With a read-audit window (AUDIT_READ_WINDOW) the rows wait to be
        written with other reads' rows (:mod:`mpi.storage.readaudit` says what that
        promises); without one, or when they cannot wait, they commit before the result
        is returned, in one more round trip (:meth:`_record_reads`).

        A connection found broken while reading (the database restarted since it was
        pooled: the pool does not test connections before lending them) is replaced and
        the read made once more; a broken connection while recording is an outage
        (:class:`StorageUnavailable`).
        """
        if self._db.in_transaction():
            raise RuntimeError("read() runs outside a transaction")
        for attempt in (1, 2):
            tx = Transaction(actor, self.clock())
            try:
                result = fetch(tx)
                break
            except (peewee.OperationalError, peewee.InterfaceError) as exc:
                if attempt == 1 and not self._db.is_connection_usable():
                    self._reconnect()
                    continue
                self._forget_idle()
                raise StorageUnavailable("the database is unavailable") from exc
        if tx._events or not tx.reads_only:
            raise RuntimeError("a read unit records reads, and nothing else")
        if self._behind is not None:
            rows = audit_rows(tx._audits, tx.actor, tx.now)
            if _fits(rows) and self._behind.add(rows):
                return result
        self._record_reads(tx)
        return result

    def flush_reads(self) -> None:
        """Write the audit rows of this process's reads that wait (AUDIT_READ_WINDOW) now:
        before the audit trail is read."""
        if self._behind is not None:
            with self.reading():
                self._behind.flush()

    def close(self) -> None:
        """At the process's end: write what waits (:meth:`ReadAudits.close`)."""
        if self._behind is not None:
            self._behind.close()

    def _write_reads(self, units: Sequence[list[dict[str, Any]]]) -> None:
        """The audit rows of many reads (each read's list) in ONE transaction; on
        PostgreSQL without waiting for the disk flush (``synchronous_reads`` is never set
        here). The database away: they all wait for the next try. A row the database
        refuses (they were checked to fit: it should not happen) does not hold up the
        others: each read's rows are then written alone, and a read's rows refused again
        are dropped, counted in the log (never their content)."""
        try:
            self._insert_reads([row for rows in units for row in rows])
            return
        except (peewee.OperationalError, peewee.InterfaceError):
            raise
        except peewee.DatabaseError as exc:
            refused = type(exc).__name__
        dropped = 0
        for rows in units:
            try:
                self._insert_reads(rows)
            except peewee.DatabaseError:
                dropped += 1
        if dropped:
            log.error("the audit rows of %d read(s) were refused by the database (%s) and "
                      "dropped", dropped, refused)

    def _insert_reads(self, rows: list[dict[str, Any]]) -> None:
        with connection(self._db), write_transaction(self._db):
            if self._postgres:
                self._db.execute_sql(SET_ASYNC_COMMIT)
            bulk_insert(AuditEventRow, rows)

    def _record_reads(self, tx: Transaction) -> None:
        """Commit ``tx``'s read-audit rows. On PostgreSQL that is ONE statement outside any
        transaction (autocommit: it commits by itself), so one round trip; unless
        ``synchronous_reads``, the statement itself turns the disk flush off for its own
        implicit transaction (``set_config(..., true)`` in RETURNING, read at its commit;
        the session's setting is untouched)."""
        if not self._postgres:
            with self.reading(), write_transaction(self._db):
                self._flush(tx)
            return
        sql, params = audit_insert(tx._audits, tx.actor, tx.now, param="%s")
        if not self.synchronous_reads:
            sql += RETURNING_ASYNC_COMMIT
        try:
            execute_prepared(self._db, sql, params)  # one row, nearly always: one shape
        except (peewee.OperationalError, peewee.InterfaceError) as exc:
            self._forget_idle()
            raise StorageUnavailable("the database is unavailable") from exc

    def _reconnect(self) -> None:
        """Replace this thread's broken connection with a new one (and drop the pool's
        idle ones: if the database went away they are broken too)."""
        self._forget_idle()
        self._db.close()
        self._db.connect()

    def _forget_idle(self) -> None:
        """After a database error: close the pool's idle connections (if the database
        went away they are broken too; new ones are opened as needed). This, not a
        test query on every loan, is how broken connections leave the pool."""
        close_idle = getattr(self._db, "close_idle", None)
        if close_idle is not None:
            close_idle()

    def _flush(self, tx: Transaction) -> None:
        asynchronous = self._postgres and not self.synchronous_reads and tx.reads_only
        attached = getattr(self._local, "attached", None)
        if attached is not None and not tx.reads_only:
            attached(tx)
        if self._postgres and max(len(tx._audits), len(tx._events)) < COPY_MIN_ROWS:
            self._flush_together(tx, asynchronous)
            return
        if asynchronous:
            self._db.execute_sql(SET_ASYNC_COMMIT)
        write_audit_rows(tx._audits, tx.actor, tx.now)
        append_events(self._db, tx._events, tx.actor, tx.now)

    def _flush_together(self, tx: Transaction, asynchronous: bool) -> None:
        """A unit's few audit rows and change events (a record's create or update, an HL7
        message) on PostgreSQL in ONE round trip, where they took three (the audit rows,
        the change log's lock, the events): the statements go in a pipeline and run in
        the order sent, so the lock is still taken just before the events are appended
        and held through COMMIT; an error in any of them fails the unit as before. The
        COMMIT goes with them (the unit writes nothing after its flush; the pool's
        ``commit`` then sees no transaction left: :class:`mpi.storage.db.PostgresPool`),
        a round trip fewer. Many rows (an import batch) go by COPY, which a pipeline
        cannot carry."""
        statements: list[tuple[str, list[Any]]] = []
        if tx._audits:
            statements.append(audit_insert(tx._audits, tx.actor, tx.now, param="%s"))
        statements += append_statements(tx._events, tx.actor, tx.now)
        if not statements:
            return
        target = unwrapped(self._db)
        with peewee.__exception_wrapper__:  # type: ignore[attr-defined]
            connection = target.connection()
            with connection.pipeline(), connection.cursor() as cursor:
                if asynchronous:
                    cursor.execute(SET_ASYNC_COMMIT)
                for sql, params in statements:
                    execute_few(cursor, sql, params)
                self._commit_with(cursor)

    def _commit_with(self, cursor: Any) -> None:
        """The unit's COMMIT, sent with its flush's statements (a pipeline's cursor)."""
        cursor.execute("COMMIT")
