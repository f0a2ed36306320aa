"""Records replaced by another (a source's merge, PIXm ITI-104 "resolve duplicates").

``patient.replaced_by_pk`` points from a record a source deprecated by merging it to the
record that survived (FHIR ``Patient.link`` type ``replaced-by``; the survivor shows
``replaces``). Indexed for the survivor's side.

Expand only: a new nullable column and an index; an older release ignores both.
"""

from __future__ import annotations

import peewee


def upgrade(db: peewee.Database) -> None:
    # The type peewee gives a reference to a BigAutoField on each backend.
    kind = "BIGINT" if isinstance(db, peewee.PostgresqlDatabase) else "INTEGER"
    db.execute_sql(f"ALTER TABLE patient ADD COLUMN replaced_by_pk {kind} "
                   "REFERENCES patient (pk)")
    db.execute_sql("CREATE INDEX patient_replaced_by_pk ON patient (replaced_by_pk)")
