"""Live records by birth date, with their precision, key and id in the index:
``patient (birth_date, birth_date_precision, pk, id) WHERE deleted_at IS NULL``.

A FHIR/PDQm search by family-name prefix and birth year (``family=wal&birthdate=1969``)
joins the records born that year with those holding such a name. The birth-date index
alone gave their places in the table, and PostgreSQL then visited each of them (about
9,500 pages for one year at 1,300,000 records) to read whether it is live, how precise
its birth date is and its id: 27 ms a search with every page in memory, 188 ms with some
read from disk. From this index alone (an index-only scan) it took 4.5 ms.

It replaces ``patient (birth_date)``: every search by birth date is of live records, and
this index serves them all (its leading column is the same), so a new record updates
one birth-date index, not two. Building it reads the table once and blocks writes to it
meanwhile (under a second at 1,300,000 records). An older release's searches by birth
date are served by it too.
"""

from __future__ import annotations

import peewee

# The released text analyzed ``patient`` itself, also when empty: PostgreSQL then took the
# statistics of an empty table for a fresh database. ``mpi.storage.migrate`` analyzes every
# table that holds rows once the migrations are applied; a database that applied the
# released text is accepted (``mpi.storage.migrate``).
SUPERSEDES = ("b17c1e4b28891d65e8e2d2fb978049fe88bd6f6e300a7f9ae52efe803194e1ea",)


def upgrade(db: peewee.Database) -> None:
    db.execute_sql("CREATE INDEX patient_live_birth_date ON patient "
                   "(birth_date, birth_date_precision, pk, id) WHERE (\"deleted_at\" IS NULL)")
    db.execute_sql("DROP INDEX patient_birth_date")
