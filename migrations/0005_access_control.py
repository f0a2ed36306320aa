"""Access control: API tokens, and the end user a client acts for on every audit row.

``api_token`` holds the tokens of ``AUTH_MODE=token`` (``mpi token create``): a name, the
SHA-256 of the secret (the secret itself is shown once and never stored), its scopes and
the sources it may write, and when it was created, last used and revoked.

``audit_event.on_behalf_of`` records ``X-User-ID``: the end user on whose behalf the
authenticated client says it acts. The actor column keeps the client itself; the trail
of a user (``GET /audit/user``) finds rows by either, so both are indexed.

``audit_event.entity_id`` grows from 64 to 128 characters: the read of a user's trail is
audited with the user id as its entity, and user ids may be 128 characters long (a longer
one was a 500 on PostgreSQL; SQLite ignores lengths).

Expand only: a new table, a new nullable column, an index and a wider column, so a
release without access control keeps working against the migrated database.
"""

from __future__ import annotations

import peewee


def upgrade(db: peewee.Database) -> None:
    class ApiToken(peewee.Model):
        pk = peewee.BigAutoField()
        name = peewee.CharField(max_length=64, unique=True)
        token_hash = peewee.CharField(max_length=64, unique=True)
        scopes = peewee.TextField()
        sources = peewee.TextField()
        created_at = peewee.DateTimeField()
        last_used_at = peewee.DateTimeField(null=True)
        revoked_at = peewee.DateTimeField(null=True)

        class Meta:
            database = db
            legacy_table_names = False
            table_name = "api_token"

    db.create_tables([ApiToken], safe=False)
    db.execute_sql("ALTER TABLE audit_event ADD COLUMN on_behalf_of VARCHAR(128)")
    db.execute_sql("CREATE INDEX audit_event_on_behalf_of_pk ON audit_event "
                   "(on_behalf_of, pk)")
    if isinstance(db, peewee.PostgresqlDatabase):
        db.execute_sql("ALTER TABLE audit_event ALTER COLUMN entity_id TYPE VARCHAR(128)")
