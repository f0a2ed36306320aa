"""Bulk inserts without per-row SQL building.

peewee builds the SQL of ``insert_many`` value by value, which costs more than the
database's own work once a batch holds thousands of rows (``mpi import``). Here the
statement is built once per model and the rows go to the driver's ``executemany``
(SQLite, and PostgreSQL for fewer than COPY_MIN_ROWS rows: COPY costs a round trip more
than one INSERT) or to PostgreSQL's ``COPY FROM STDIN``. Values still pass through each
field's ``db_value``, so UUIDs, JSON and dates are stored exactly as peewee stores them.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import Any

import peewee

from mpi.storage.db import unwrapped
from mpi.storage.fields import JSONTextField

COPY_MIN_ROWS = 8
#: :func:`insert_together` puts up to this many rows per table in its one statement (a
#: round trip saved is worth more than COPY's cheaper rows, for a record's dozen keys).
TOGETHER_MAX_ROWS = 64

Rows = Sequence[dict[str, Any]]


def execute_few(cursor: Any, sql: str, params: Sequence[Any]) -> None:
    """Execute a few rows' INSERT on PostgreSQL as a prepared statement (planned once per
    connection and statement shape, the generic plan of a VALUES list being the only
    one): planning a record's INSERTs took a third of their time (pg_stat_statements,
    ~100 µs a create). Shapes are few (a record's rows per table); psycopg keeps the
    newest 100 per connection. Off with DATABASE_PREPARED_STATEMENTS=false (the
    connection's ``prepare_threshold`` None ignores ``prepare``)."""
    cursor.execute(sql, params, prepare=True)


def _database(model: type[peewee.Model]) -> peewee.Database:
    return unwrapped(model._meta.database)  # type: ignore[attr-defined]


def _few_on_postgres(db: peewee.Database, *batches: Rows, limit: int = COPY_MIN_ROWS - 1
                     ) -> bool:
    """Rows that go in as INSERT ... VALUES on PostgreSQL (not COPY): at most ``limit``
    per table?"""
    return (isinstance(db, peewee.PostgresqlDatabase)
            and all(len(rows) <= limit for rows in batches))


def insert_values(model: type[peewee.Model], rows: Rows, param: str) -> tuple[str, list[Any]]:
    """One multi-row ``INSERT ... VALUES (...), (...)`` for ``rows``, and its flat parameters."""
    sql, _, params = insert_statement(model, rows, param=param)
    head, marks = sql.split(" VALUES ", 1)
    return f"{head} VALUES {', '.join([marks] * len(params))}", [v for t in params for v in t]


def insert_returning(model: type[peewee.Model], rows: Rows, columns: Sequence[str]
                     ) -> list[tuple[Any, ...]] | None:
    """Insert a few ``rows`` on PostgreSQL and return ``columns`` of each new row (one
    round trip: the generated keys come back with the insert); None, having inserted
    them with :func:`bulk_insert`, otherwise (many rows, or SQLite: read them back)."""
    db = _database(model)
    if not rows or not _few_on_postgres(db, rows):
        bulk_insert(model, rows)
        return None
    sql, params = insert_values(model, rows, db.param)
    # Column names come from the caller's code, never from input.
    returning = ", ".join(f'"{c}"' for c in columns)
    with peewee.__exception_wrapper__:  # type: ignore[attr-defined]
        cursor = db.cursor()
        try:
            execute_few(cursor, f"{sql} RETURNING {returning}", params)
            return [tuple(r) for r in cursor.fetchall()]
        finally:
            cursor.close()


def insert_together(batches: Sequence[tuple[type[peewee.Model], Rows]]) -> None:
    """Insert rows into several tables, in order. On PostgreSQL, a few rows per table go
    in ONE statement (each table's INSERT a data-modifying WITH clause): one round trip
    where a table at a time took one each (a record's four child tables, a link with its
    keys and history row); otherwise :func:`bulk_insert` per table."""
    todo = [(model, rows) for model, rows in batches if rows]
    if not todo:
        return
    db = _database(todo[0][0])
    if len(todo) == 1 or not _few_on_postgres(db, *(rows for _, rows in todo),
                                              limit=TOGETHER_MAX_ROWS):
        for model, rows in todo:
            bulk_insert(model, rows)
        return
    parts: list[str] = []
    params: list[Any] = []
    for model, rows in todo:
        sql, values = insert_values(model, rows, db.param)
        parts.append(sql)
        params += values
    withs = ", ".join(f"t{i} AS ({sql})" for i, sql in enumerate(parts[:-1]))
    with peewee.__exception_wrapper__:  # type: ignore[attr-defined]
        cursor = db.cursor()
        try:
            execute_few(cursor, f"WITH {withs} {parts[-1]}", params)
        finally:
            cursor.close()


def bulk_insert(model: type[peewee.Model], rows: Rows) -> None:
    """Insert ``rows`` (dicts keyed by field name, all with the same keys) into ``model``."""
    if not rows:
        return
    meta = model._meta  # type: ignore[attr-defined]
    db = _database(model)
    copy = isinstance(db, peewee.PostgresqlDatabase) and len(rows) >= COPY_MIN_ROWS
    sql, columns, params = insert_statement(model, rows, param=db.param, copy=copy)
    # peewee's wrapper turns driver errors into peewee's (IntegrityError, OperationalError).
    with peewee.__exception_wrapper__:  # type: ignore[attr-defined]
        cursor = db.cursor()
        try:
            if copy:
                with cursor.copy(f'COPY "{meta.table_name}" ({columns}) FROM STDIN') as copy:
                    for row in params:
                        copy.write_row(row)
            elif len(params) == 1:
                cursor.execute(sql, params[0])
            else:
                cursor.executemany(sql, params)
        finally:
            cursor.close()


def insert_statement(model: type[peewee.Model], rows: Sequence[dict[str, Any]], *,
                     param: str, copy: bool = False
                     ) -> tuple[str, str, list[tuple[Any, ...]]]:
    """The INSERT for ``rows`` of ``model`` (``param`` is the driver's placeholder), its
    column list, and each row's values in storage form (for ``copy``, only the values
    COPY cannot adapt itself are converted)."""
    meta = model._meta  # type: ignore[attr-defined]
    names = list(rows[0])
    fields = [meta.fields[name] for name in names]
    columns = ", ".join(f'"{f.column_name}"' for f in fields)
    marks = ", ".join([param] * len(fields))
    # Table and column names come from the models, never from input.
    sql = f'INSERT INTO "{meta.table_name}" ({columns}) VALUES ({marks})'  # noqa: S608
    # COPY adapts ints, strings, dates, datetimes, booleans and UUIDs itself; only values
    # with a storage form of their own (JSON text) need the field's conversion there.
    converters = [f.db_value if not copy or isinstance(f, JSONTextField) else None
                  for f in fields]
    # One C-level pick per row; a call per value only for the columns that need one.
    getter = operator.itemgetter(*names)
    params: list[tuple[Any, ...]] = [
        (getter(row),) if len(names) == 1 else getter(row) for row in rows]
    converting = [(i, c) for i, c in enumerate(converters) if c is not None]
    if converting:
        converted = []
        for values in params:
            fixed = list(values)
            for i, convert in converting:
                fixed[i] = convert(fixed[i])
            converted.append(tuple(fixed))
        params = converted
    return sql, columns, params


def any_of(db: peewee.Database, values: Sequence[Any]) -> tuple[str, tuple[Any, ...]]:
    """SQL for "column is one of ``values``" as ONE parameter (``= ANY(%s)`` on PostgreSQL,
    ``IN (SELECT value FROM json_each(?))`` on SQLite): thousands of keys cost one bind."""
    if isinstance(unwrapped(db), peewee.PostgresqlDatabase):
        return "= ANY(%s)", (list(values),)
    import json

    return "IN (SELECT value FROM json_each(?))", (json.dumps(list(values)),)
