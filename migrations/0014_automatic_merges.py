"""Merges the engine makes: how a merge came about, and on what evidence.

``person_merge.how``: ``steward`` (a steward's merge or a resolved duplicate review),
``source`` (a source merged two of its records: HL7 ADT^A40), or ``auto`` (a record
proved two persons one and the engine merged them in the record's transaction);
``probability`` and ``model_version``: the evidence of an automatic merge (the two
persons compared as wholes). Every merge before this release was a steward's or a
source's; they are all marked ``steward``.

Expand only: new columns with a default; an older release ignores them.
"""

from __future__ import annotations

import peewee


def upgrade(db: peewee.Database) -> None:
    db.execute_sql("ALTER TABLE person_merge ADD COLUMN how VARCHAR(16) NOT NULL "
                   "DEFAULT 'steward'")
    double = "DOUBLE PRECISION" if isinstance(db, peewee.PostgresqlDatabase) else "REAL"
    db.execute_sql(f"ALTER TABLE person_merge ADD COLUMN probability {double}")
    db.execute_sql("ALTER TABLE person_merge ADD COLUMN model_version VARCHAR(80)")
