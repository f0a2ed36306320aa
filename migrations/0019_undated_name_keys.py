"""Blocking keys ``u:`` for the records without a birth date: their family name's NYSIIS
and given name's first letter, as their ``f:`` key holds it.

From this release a record with a birth date looks its candidates up by ``u:`` where it
looked them up by ``f:`` (``mpi.matching.blocking.probe_keys``): the family name and
initial find, among all records, those without a birth date, which no key holding the
date can find. Those records hold both keys from now on; this gives the records stored
before theirs, so a record arriving after the upgrade still finds them.

A record has a birth date exactly when it holds a ``d:`` key (every record with an
``f:`` key has a name for one). The keys are derived in SQL from those stored: no record
is read or changed, no link changes. It reads the ``f:`` keys once and writes one row
per record without a birth date.
"""

from __future__ import annotations

import peewee


def upgrade(db: peewee.Database) -> None:
    db.execute_sql(
        "INSERT INTO blocking_key (key, patient_pk) "
        "SELECT 'u:' || substr(f.key, 3), f.patient_pk FROM blocking_key f "
        "WHERE substr(f.key, 1, 2) = 'f:' AND NOT EXISTS (SELECT 1 FROM blocking_key d "
        "WHERE d.patient_pk = f.patient_pk AND substr(d.key, 1, 2) = 'd:')")
