"""The one database proxy and the factory that binds it at start-up.

``DATABASE_URL`` chooses the backend: an embedded SQLite file (WAL mode) or
PostgreSQL through psycopg 3. Both are pooled per process (peewee's pool:
``connect()`` borrows a connection, ``close()`` returns it) and neither
connects on its own (``autoconnect=False``), so a bad database shows at the
first ``connect()`` rather than deep inside a query.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import peewee
from playhouse.pool import PooledPostgresqlDatabase, PooledSqliteDatabase

from mpi.config import DatabaseTarget, Settings

database_proxy = peewee.DatabaseProxy()

# Fixed key for PostgreSQL advisory locks taken by this service ("MPI" in ASCII + purpose).
LOCK_MIGRATIONS = 0x4D5049_01
LOCK_CHANGE_LOG = 0x4D5049_02

#: psycopg's prepare_threshold: more executions of one statement than a connection lives.
PREPARE_ONLY_WHEN_ASKED = 2**31 - 1

SQLITE_PRAGMAS = {
    "journal_mode": "wal",
    "foreign_keys": 1,
    "synchronous": "normal",
}


def make_database(settings: Settings) -> peewee.Database:
    """A pooled, not yet connected database for ``settings.database_url``."""
    return database_for(settings.database, max_connections=settings.database_max_connections,
                        timeout=settings.database_timeout,
                        prepared_statements=settings.database_prepared_statements)


def database_for(target: DatabaseTarget, *, max_connections: int = 10,
                 timeout: float = 10.0, prepared_statements: bool = True) -> peewee.Database:
    if target.kind == "sqlite":
        path = Path(target.path)
        path.parent.mkdir(parents=True, exist_ok=True)
        pragmas = dict(SQLITE_PRAGMAS, busy_timeout=int(timeout * 1000))
        return PooledSqliteDatabase(
            str(path),
            pragmas=pragmas,
            max_connections=max_connections,
            stale_timeout=600,
            timeout=timeout,
            autoconnect=False,
            check_same_thread=False,
        )
    options = dict(target.options)
    options.setdefault("connect_timeout", str(int(max(timeout, 1))))
    options.setdefault("application_name", "mpi")
    return PostgresPool(
        target.dbname,
        host=target.host,
        port=target.port,
        user=target.user or None,
        password=target.password or None,
        max_connections=max_connections,
        stale_timeout=600,
        timeout=timeout,
        autoconnect=False,
        prefer_psycopg3=True,
        # No automatic server-side prepared statements: after five runs psycopg would
        # switch a query to a generic plan, and for look-ups by a list of keys
        # (candidates) that plan scans whole tables: 0.7 ms became 16 ms. Only a
        # statement executed with ``prepare=True`` is prepared (``execute_prepared``).
        # (None would also ignore prepare=True.)
        # ``prepared_statements=False`` (DATABASE_PREPARED_STATEMENTS, for a PgBouncer that
        # cannot keep them) turns that off too.
        prepare_threshold=PREPARE_ONLY_WHEN_ASKED if prepared_statements else None,
        **options,
    )


_Postgres: Any = peewee.PostgresqlDatabase  # (peewee is untyped: its signatures as Any)


class _GenericPlans(_Postgres):
    """A new connection plans its prepared statements once, generically
    (``plan_cache_mode``), when prepared statements are on: every statement the service
    prepares has a plan that does not depend on its values (:func:`execute_prepared`, a
    few rows' INSERT), but PostgreSQL compares a generic plan's estimate with the custom
    plans' and, for a look-up by an array of keys it estimates at ten, kept planning the
    match candidates' look-up at every execution: 99 µs of planning for 45 of running it.
    (A pooled connection lent again is not new: this runs once per connection.)"""

    def _connect(self) -> Any:
        conn = super()._connect()
        if self.connect_params.get("prepare_threshold") is not None \
                and conn.info.server_version >= 120000:  # (plan_cache_mode: PostgreSQL 12)
            conn.execute("SET plan_cache_mode = force_generic_plan")
        return conn


class PostgresPool(PooledPostgresqlDatabase, _GenericPlans):
    """peewee's PostgreSQL pool without the test query on every loan.

    peewee checks out a pooled connection only after a ``SELECT 1`` round trip: a third of
    a record read's round trips. Here a loan looks at what the driver already knows (the
    socket closed, the transaction status unknown); a connection that broke since it was
    pooled shows at its first statement, and the unit of work then drops the pool's idle
    connections and, for a read, makes the read again on a new one
    (:meth:`mpi.storage.work.UnitOfWork.read`). New connections: :class:`_GenericPlans`.

    A transaction whose last statements carried its COMMIT (a unit of work's flush:
    :meth:`mpi.storage.work.UnitOfWork._flush_together`) has nothing left to commit when
    peewee ends it: no second COMMIT is sent (PostgreSQL would only warn that no
    transaction is in progress, a round trip later).
    """

    def commit(self) -> None:
        from psycopg.pq import TransactionStatus

        conn = self._state.conn
        if conn is not None and not conn.closed \
                and conn.info.transaction_status == TransactionStatus.IDLE:
            return
        super().commit()

    def _is_closed(self, conn: Any) -> bool:
        if conn.closed or self._adapter.txn_status(conn) == self._adapter.txn_unknown:
            return True
        if self._adapter.txn_status(conn) != self._adapter.txn_idle:
            try:  # left inside a transaction: roll back, as peewee does
                conn.rollback()
            except Exception:
                return True
        return False


def close_database(db: peewee.Database) -> None:
    """Close every connection of ``db`` (its pool, if pooled)."""
    close_all = getattr(db, "close_all", None)  # the pooled databases
    if close_all is not None:
        close_all()
    elif not db.is_closed():
        db.close()


def unwrapped(db: peewee.Database) -> peewee.Database:
    """The database itself behind the models' proxy (or ``db`` as it is)."""
    return db.obj if isinstance(db, peewee.DatabaseProxy) else db


def reopened(db: peewee.Database) -> peewee.Database:
    """A new, unconnected PostgreSQL database with ``db``'s connection settings and none of
    its connections: what a forked child process uses. A child must never use or close a
    connection its parent opened (they share the socket: closing it in the child would end
    the parent's session)."""
    target = unwrapped(db)
    if not isinstance(target, PostgresPool):
        raise TypeError("only a PostgreSQL database can be reopened in a child process")
    return PostgresPool(target.database, max_connections=2, stale_timeout=600,
                        timeout=30, autoconnect=False, prefer_psycopg3=True,
                        **target.connect_params)


def uuid_text(value: Any) -> str:
    """A uuid column's value as the API writes it (``8-4-4-4-12`` hex): psycopg gives a
    ``uuid.UUID``, SQLite the text peewee stored. Candidate look-ups convert thousands of
    them per decision at a million records: a ``UUID`` is not parsed again from its text
    (2.7 us against 0.7 us each)."""
    return str(value) if isinstance(value, uuid.UUID) else str(uuid.UUID(str(value)))


def is_postgres(db: peewee.Database) -> bool:
    return isinstance(unwrapped(db), peewee.PostgresqlDatabase)


@contextlib.contextmanager
def write_transaction(db: peewee.Database) -> Iterator[None]:
    """One transaction for a write that touches several tables.

    SQLite takes the write lock up front (``BEGIN IMMEDIATE``) so two writers
    queue on ``busy_timeout`` instead of one failing when it upgrades a read
    lock. Nested calls become savepoints.
    """
    target = unwrapped(db)
    if isinstance(target, peewee.SqliteDatabase) and not target.in_transaction():
        with target.atomic(lock_type="IMMEDIATE"):
            yield
    else:
        with target.atomic():
            yield


@contextlib.contextmanager
def connection(db: peewee.Database) -> Iterator[peewee.Database]:
    """Borrow a connection for the duration of a block (CLI tools, tests)."""
    opened = db.connect(reuse_if_open=True)
    try:
        yield db
    finally:
        if opened and not db.is_closed():
            db.close()


def execute_prepared(db: peewee.Database, sql: str, params: Sequence[Any]) -> Any:
    """Run a fixed statement that PostgreSQL plans once per connection (a prepared
    statement; after five runs its generic plan): for look-ups whose best plan does not
    depend on the values, such as a record by its unique id, where planning was 0.47 ms
    of a 0.65 ms statement. The cursor, as ``execute_sql`` returns it. On SQLite, a plain
    ``execute_sql``."""
    target = unwrapped(db)
    if not isinstance(target, peewee.PostgresqlDatabase):
        return target.execute_sql(sql, params)
    with peewee.__exception_wrapper__:  # type: ignore[attr-defined]
        cursor = target.cursor()
        cursor.execute(sql, params, prepare=True)
        return cursor


def execute_for_values(db: peewee.Database, sql: str, params: Sequence[Any]
                       ) -> list[tuple[Any, ...]]:
    """Run a search whose best plan depends on its values (a ``LIKE`` prefix, a date range,
    how common a name is), planned for those values; its rows.

    A connection of this service plans statements with parameters generically
    (:class:`_GenericPlans` sets ``plan_cache_mode`` for the session, and PostgreSQL
    applies it to unnamed statements too): without its value, ``family_norm LIKE $1``
    gives the index no prefix range, and a PDQm search by family name and birth year
    walked every record born that year (52 ms a search at 1,170,000 records, against
    3.3 ms planned for the values, most of it planning). On PostgreSQL the values are
    bound into the statement's text by psycopg (client-side binding, quoted by the
    driver), so the plan is made for them; on SQLite, a plain ``execute_sql``."""
    target = unwrapped(db)
    if not isinstance(target, peewee.PostgresqlDatabase):
        return list(target.execute_sql(sql, params).fetchall())
    import psycopg

    wrapper = peewee.__exception_wrapper__  # type: ignore[attr-defined]
    with wrapper, psycopg.ClientCursor(target.connection()) as cursor:
        cursor.execute(sql, params)
        return list(cursor.fetchall())


def execute_prepared_after(db: peewee.Database, first: tuple[str, Sequence[Any]],
                           sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
    """Run ``first`` (SQL, parameters: a statement whose result is not wanted, such as
    taking locks), then ``sql``, and return ``sql``'s rows: on PostgreSQL both prepared
    and sent together, in one round trip (a pipeline: the server runs them in order, so
    ``sql`` starts, and in READ COMMITTED takes its snapshot, once ``first`` is done).
    On SQLite, one after the other."""
    target = unwrapped(db)
    if not isinstance(target, peewee.PostgresqlDatabase):
        target.execute_sql(*first)
        return list(target.execute_sql(sql, params).fetchall())
    with peewee.__exception_wrapper__:  # type: ignore[attr-defined]
        connection = target.connection()
        with connection.pipeline(), connection.cursor() as before, \
                connection.cursor() as cursor:
            before.execute(first[0], first[1], prepare=True)
            cursor.execute(sql, params, prepare=True)
            return list(cursor.fetchall())


def analyze(db: peewee.Database, tables: Sequence[str] | None = None, *,
            vacuum: Sequence[str] = ()) -> None:
    """Bring the planner's statistics up to date for ``tables`` (default: every table).

    PostgreSQL has none for rows loaded in bulk until autovacuum gets round to them
    (minutes later, if it is on): meanwhile the planner guesses, and the candidate
    look-up that takes 2 ms after ANALYZE took 30 ms at 20,000 records (a hash join over
    the whole link table). Whatever loads or rebuilds rows in bulk calls this: ``mpi
    import`` (as it goes and at its end), ``mpi rekey``, the migrations.

    ``vacuum`` (PostgreSQL; outside any transaction): of ``tables``, those to VACUUM as
    well, for the rows just loaded into them. Until then their pages are not marked
    all-visible, and an index-only scan visits the table for each of their rows: at
    820,000 records, half of the candidate look-up's time for a batch of 1,000 (505 ->
    233 ms, ``EXPLAIN (ANALYZE, BUFFERS)``, with migration 0020's index). It reads only
    the pages written since the last vacuum. SQLite has no such map (and its VACUUM
    rewrites the whole file): there it is ignored.
    """
    target = unwrapped(db)
    if isinstance(target, peewee.PostgresqlDatabase):
        vacuumed = [t for t in tables or () if t in vacuum]
        if vacuumed:
            target.execute_sql("VACUUM (ANALYZE) " + ", ".join(f'"{t}"' for t in vacuumed))
        rest = [t for t in tables or () if t not in vacuumed]
        if tables and not rest:
            return
        names = ", ".join(f'"{t}"' for t in rest)  # none given: every table
        target.execute_sql(f"ANALYZE {names}".rstrip())
    else:  # SQLite: its ANALYZE fills sqlite_stat1 for the query planner
        for table in tables or [""]:
            target.execute_sql(f'ANALYZE "{table}"' if table else "ANALYZE")


class PreparedSelect:
    """A fixed peewee SELECT run as a prepared statement (:func:`execute_prepared`).

    ``build`` makes the query with placeholder values; its SQL is built once, on first use
    (when the database is bound), and each call binds its own values, in the order the
    placeholders appear. A message of the HL7 feed makes four such look-ups (its sender,
    its earlier acknowledgement, a domain, the record it names): peewee building each
    statement again, and PostgreSQL planning it again, cost more than running it."""

    def __init__(self, model: type[peewee.Model], build: Callable[[], Any]) -> None:
        self._model = model
        self._build = build
        # By database class: tests run one process against SQLite and PostgreSQL.
        self._compiled: dict[type, tuple[str, list[Any], int]] = {}

    def rows(self, *values: Any) -> list[Any]:
        """The query's rows as ``model`` instances, with ``values`` (in storage form: a
        field's ``db_value``, where that differs) for its placeholders."""
        model = self._model
        db = model._meta.database  # type: ignore[attr-defined]
        target = unwrapped(db)
        compiled = self._compiled.get(type(target))
        if compiled is None:
            query = self._build()
            sql, params = query.sql()
            fields = [model._meta.fields[c.name] for c in query._returning]  # type: ignore[attr-defined]
            compiled = self._compiled[type(target)] = (sql, fields, len(params))
        sql, fields, count = compiled
        if len(values) != count:
            raise TypeError(f"{count} value(s) expected, {len(values)} given")
        return _instances(model, fields, execute_prepared(db, sql, values).fetchall())


def _instances(model: type[peewee.Model], fields: Sequence[Any],
               rows: Iterable[Sequence[Any]]) -> list[Any]:
    """``rows`` of ``fields`` (in storage form) as ``model`` instances."""
    return [model(**{f.name: f.python_value(v) for f, v in zip(fields, row, strict=True)})
            for row in rows]


def select_for_values(query: Any) -> list[Any]:
    """A peewee SELECT of one model's fields, run planned for its values
    (:func:`execute_for_values`): its rows as model instances."""
    model = query.model
    fields = [model._meta.fields[c.name] for c in query._returning]
    sql, params = query.sql()
    return _instances(model, fields, execute_for_values(model._meta.database, sql, params))


def planned_rows(db: peewee.Database, table: str) -> int:
    """How many rows the planner's statistics say ``table`` has (0: none taken)."""
    target = unwrapped(db)
    if isinstance(target, peewee.PostgresqlDatabase):
        # reltuples: -1 until the table is first analyzed or vacuumed (PostgreSQL 14+).
        row = target.execute_sql("SELECT reltuples FROM pg_class WHERE oid = %s::regclass",
                                 (table,)).fetchone()
        return max(0, int(row[0])) if row else 0
    if not target.table_exists("sqlite_stat1"):
        return 0
    # Each of the table's rows there starts with the rows counted ("30000 1 1").
    counted = [int(str(stat).split()[0]) for (stat,) in target.execute_sql(
        "SELECT stat FROM sqlite_stat1 WHERE tbl = ?", (table,)).fetchall()]
    return max(counted, default=0)


def tuples(query: Any) -> list[tuple[Any, ...]]:
    """A query's rows as plain tuples (typed for callers; peewee is untyped)."""
    return list(query.tuples())
