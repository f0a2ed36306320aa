"""Identity domains (assigning authorities): the identifier systems the registry knows.

``identity_domain`` holds each domain's system URI (an OID as ``urn:oid:``), a display
name, and the sources that may assign identifiers in it (comma-separated, or ``*``). PDQm
and PIXm answer a domain that is not registered with their "not found" errors, and a PIXm
feed may write only in domains its source may assign in.

Expand only: a new table; an older release ignores it.
"""

from __future__ import annotations

import peewee


def upgrade(db: peewee.Database) -> None:
    class IdentityDomain(peewee.Model):
        pk = peewee.BigAutoField()
        id = peewee.UUIDField(unique=True)
        system = peewee.CharField(max_length=256, unique=True)
        name = peewee.CharField(max_length=200)
        sources = peewee.TextField()
        created_at = peewee.DateTimeField()

        class Meta:
            database = db
            legacy_table_names = False
            table_name = "identity_domain"

    db.create_tables([IdentityDomain], safe=False)
