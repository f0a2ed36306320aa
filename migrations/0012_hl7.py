"""HL7 v2 over MLLP: who may send, what was acknowledged, and domains' HL7 namespaces.

- ``hl7_sender``: each sending system (MSH-3 sending application at MSH-4 facility) as a
  client of its own: the sources it may write, the scopes it holds and, with client
  certificates, the certificate subject it must present.
- ``hl7_receipt``: the acknowledgement of every message that changed something, by
  sender and MSH-10 control id, written in the transaction of the change: a message
  sent again gets the same acknowledgement and changes nothing; kept for
  HL7_RECEIPT_RETENTION_DAYS (pruned by age, hence the index on ``created_at``).
- ``identity_domain.namespace``: the HL7 v2 namespace id (HD-1) of a domain, for
  assigning authorities sent without their OID.

Expand only: new tables and a nullable column; an older release ignores them.
"""

from __future__ import annotations

import peewee


def upgrade(db: peewee.Database) -> None:
    class Hl7Sender(peewee.Model):
        pk = peewee.BigAutoField()
        name = peewee.CharField(max_length=64, unique=True)
        application = peewee.CharField(max_length=64)
        facility = peewee.CharField(max_length=64)
        sources = peewee.TextField()
        scopes = peewee.TextField()
        certificate = peewee.CharField(max_length=200, null=True)
        created_at = peewee.DateTimeField()

        class Meta:
            database = db
            legacy_table_names = False
            table_name = "hl7_sender"
            indexes = ((("application", "facility"), True),)

    class Hl7Receipt(peewee.Model):
        pk = peewee.BigAutoField()
        sender = peewee.CharField(max_length=64)
        control_id = peewee.CharField(max_length=199)
        ack = peewee.TextField()
        created_at = peewee.DateTimeField()

        class Meta:
            database = db
            legacy_table_names = False
            table_name = "hl7_receipt"
            indexes = ((("sender", "control_id"), True), (("created_at",), False))

    db.create_tables([Hl7Sender, Hl7Receipt], safe=False)
    db.execute_sql("ALTER TABLE identity_domain ADD COLUMN namespace VARCHAR(64)")
    db.execute_sql("CREATE UNIQUE INDEX identity_domain_namespace "
                   "ON identity_domain (namespace)")
