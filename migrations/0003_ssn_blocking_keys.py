"""Blocking keys recomputed: the SSN keys changed from ten one-digit-deleted keys to three
keys of two SSN parts each (``mpi.matching.blocking``).

Blocking keys are derived data: every live record's keys are recomputed from its stored
matching form (``patient_link.match_data``) with this release's key function, so records
stored before still meet new ones on their SSN. Records linked before enterprise identity
existed (empty matching form) hold no keys and are left so; they get keys on their next
update. No link changes.
"""

from __future__ import annotations

import json

import peewee

PAGE = 5000


def upgrade(db: peewee.Database) -> None:
    from mpi.identity.matcher import to_match_record
    from mpi.matching.blocking import blocking_keys
    from mpi.storage.bulk import bulk_insert

    class BlockingKey(peewee.Model):
        key = peewee.CharField(max_length=64)
        patient = peewee.BigIntegerField(column_name="patient_pk")

        class Meta:
            database = db
            table_name = "blocking_key"
            primary_key = peewee.CompositeKey("key", "patient")

    # Fixed SQL text: db.param is the driver's placeholder and PAGE a constant.
    select = ("SELECT pl.patient_pk, pl.match_data FROM patient_link pl "  # noqa: S608
              "JOIN patient p ON p.pk = pl.patient_pk "
              f"WHERE p.deleted_at IS NULL AND pl.patient_pk > {db.param} "
              f"ORDER BY pl.patient_pk LIMIT {PAGE}")
    db.execute_sql("DELETE FROM blocking_key")
    last = 0
    while rows := db.execute_sql(select, (last,)).fetchall():
        keys = []
        for patient_pk, raw in rows:
            data = json.loads(raw)
            if data:
                keys += [{"key": key, "patient": patient_pk}
                         for key in sorted(set(blocking_keys(to_match_record(data))))]
        bulk_insert(BlockingKey, keys)
        last = rows[-1][0]
