"""The family-name index holds the record's key too: ``patient_name (family_norm,
patient_pk)`` in place of ``patient_name (family_norm)``.

A FHIR/PDQm search by family-name prefix (``family=gal&birthdate=1976``) needs the records
holding such a name: with the key in the index, PostgreSQL reads them from the index alone
(an index-only scan) instead of visiting each name row. At 1,000,000 records that raised
the search from 85 to 172 requests/s on two cores, p99 180 to 70 ms (4 clients). The
prefix search itself (the leading column, under the "C" collation migration 0006 gave it)
is served as before.

Building it reads the names once and blocks writes to them meanwhile. An older release
finds its prefix searches served by the new index as by the old (the same leading column).
"""

from __future__ import annotations

import peewee

# The released text analyzed ``patient_name`` itself, also when empty: PostgreSQL then took the
# statistics of an empty table for a fresh database. ``mpi.storage.migrate`` analyzes every
# table that holds rows once the migrations are applied; a database that applied the
# released text is accepted (``mpi.storage.migrate``).
SUPERSEDES = ("cb7d86a09a559a87102871ee9022e518f0e250bf9c717505702d5a08a50d0f83",)


def upgrade(db: peewee.Database) -> None:
    db.execute_sql("CREATE INDEX patient_name_family_norm_patient_pk "
                   "ON patient_name (family_norm, patient_pk)")
    db.execute_sql("DROP INDEX patient_name_family_norm")
