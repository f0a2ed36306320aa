"""Partial birth dates (FHIR ``birthDate`` as ``YYYY`` or ``YYYY-MM``).

``patient.birth_date_precision`` says how much of ``birth_date`` is known: NULL the day
(every existing record: their dates are full, so nothing is carried over), 7 the month, 4
the year; ``birth_date`` then holds the first day of that month or year, so range
searches and the index on it serve partial dates too.

Expand only: a new nullable column; an older release reads a partial date as its first
day.
"""

from __future__ import annotations

import peewee


def upgrade(db: peewee.Database) -> None:
    small = "SMALLINT" if isinstance(db, peewee.PostgresqlDatabase) else "INTEGER"
    db.execute_sql(f"ALTER TABLE patient ADD COLUMN birth_date_precision {small}")
