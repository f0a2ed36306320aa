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

from mpi.storage.fields import JSONTextField

COPY_MIN_ROWS = 8


def bulk_insert(model: type[peewee.Model], rows: Sequence[dict[str, Any]]) -> None:
    """Insert ``rows`` (dicts keyed by field name, all with the same keys) into ``model``."""
    if not rows:
        return
    meta = model._meta  # type: ignore[attr-defined]
    db = meta.database
    if isinstance(db, peewee.DatabaseProxy):
        db = db.obj
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
    if isinstance(db, peewee.DatabaseProxy):
        db = db.obj
    if isinstance(db, peewee.PostgresqlDatabase):
        return "= ANY(%s)", (list(values),)
    import json

    return "IN (SELECT value FROM json_each(?))", (json.dumps(list(values)),)
