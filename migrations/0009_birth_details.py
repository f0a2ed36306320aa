"""Mother's maiden name and multiple birth on the record (FHIR's patient-mothersMaidenName
extension and multipleBirth[x]; PDQm searches and matches on the first, the twin guard
reads the second).

Expand only: new nullable columns; existing records carry none of them (nothing to carry
over: the model had no such data), an older release ignores them.
"""

from __future__ import annotations

import peewee


def upgrade(db: peewee.Database) -> None:
    # The types peewee gives these fields on each backend.
    postgres = isinstance(db, peewee.PostgresqlDatabase)
    boolean, small = ("BOOLEAN", "SMALLINT") if postgres else ("INTEGER", "INTEGER")
    db.execute_sql("ALTER TABLE patient ADD COLUMN mothers_maiden_name VARCHAR(200)")
    db.execute_sql(f"ALTER TABLE patient ADD COLUMN multiple_birth {boolean}")
    db.execute_sql(f"ALTER TABLE patient ADD COLUMN multiple_birth_order {small}")
