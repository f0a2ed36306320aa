"""The rest of what a FHIR Patient carries: marital status, managing organization,
languages (``communication``) and contacts (next of kin, emergency contacts), kept with
the record and shown, never matched or searched.

Expand only: new nullable columns; existing records have none of this data.
"""

from __future__ import annotations

import peewee


def upgrade(db: peewee.Database) -> None:
    db.execute_sql("ALTER TABLE patient ADD COLUMN marital_status VARCHAR(8)")
    db.execute_sql("ALTER TABLE patient ADD COLUMN managing_organization VARCHAR(200)")
    db.execute_sql("ALTER TABLE patient ADD COLUMN communication TEXT")
    db.execute_sql("ALTER TABLE patient ADD COLUMN contacts TEXT")
