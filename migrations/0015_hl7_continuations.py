"""PDQ continuation pointers kept in the database, so any listener answers them.

``hl7_continuation``: a pointer (DSC-1) a PDQ response handed out, with who may use it
(the sender and the query tag), a digest of the query it continues, how far the answer
got and the page size, and, for a fuzzy query, the ranked record ids (no record content).
A pointer is used once and expires after ten minutes; expired ones are pruned with the
acknowledgements (the index on ``expires_at``). Before, pointers lived in the listener
process: a restarted listener, or another instance, answered AE 204.

Expand only: a new table; an older release ignores it.
"""

from __future__ import annotations

import peewee


def upgrade(db: peewee.Database) -> None:
    class Hl7Continuation(peewee.Model):
        pk = peewee.BigAutoField()
        pointer = peewee.CharField(max_length=32, unique=True)
        sender = peewee.CharField(max_length=64)
        tag = peewee.CharField(max_length=199)
        query = peewee.CharField(max_length=64)
        position = peewee.IntegerField()
        quantity = peewee.IntegerField()
        ranked = peewee.TextField(null=True)
        expires_at = peewee.DateTimeField()

        class Meta:
            database = db
            legacy_table_names = False
            table_name = "hl7_continuation"
            indexes = ((("expires_at",), False),)

    db.create_tables([Hl7Continuation], safe=False)
