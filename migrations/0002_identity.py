"""Enterprise identity: persons, each record's link, blocking keys, reviews, history, merges.

Also: an identifier (system + value) is no longer unique among live records. Several
sources legitimately send the same national id for one person, and duplicates inside
one source are exactly what the MPI must find; identifier agreement is now evidence
for the matcher, not a reason to refuse a record. Existing records each get a person
of their own, with an empty matching form and no blocking keys, so no other record finds
it as a candidate yet: it gets both when it is next updated (and is matched then, unless
a steward has placed it by hand meanwhile).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import peewee

# The released text of this migration (its docstring named a command that does not exist);
# it did the same: databases that applied it are accepted (mpi.storage.migrate).
SUPERSEDES = ("e2e87803644c1164a26ce6094896fbfe82ef360cffe5ba2734c96916dd589a58",)


def upgrade(db: peewee.Database) -> None:
    class Base(peewee.Model):
        class Meta:
            database = db
            legacy_table_names = False

    class Patient(Base):
        pk = peewee.BigAutoField()
        id = peewee.UUIDField(unique=True)

        class Meta:
            table_name = "patient"

    class Person(Base):
        pk = peewee.BigAutoField()
        id = peewee.UUIDField(unique=True)
        created_at = peewee.DateTimeField()
        updated_at = peewee.DateTimeField()
        merged_into = peewee.ForeignKeyField("self", field="pk", column_name="merged_into_pk",
                                             null=True, index=True)

        class Meta:
            table_name = "person"

    class PatientLink(Base):
        pk = peewee.BigAutoField()
        patient = peewee.ForeignKeyField(Patient, field=Patient.pk, column_name="patient_pk",
                                         unique=True, on_delete="CASCADE")
        person = peewee.ForeignKeyField(Person, field=Person.pk, column_name="person_pk",
                                        index=True)
        match_data = peewee.TextField()
        manual = peewee.BooleanField(default=False)
        how = peewee.CharField(max_length=16)
        probability = peewee.DoubleField(null=True)
        model_version = peewee.CharField(max_length=80, null=True)
        linked_at = peewee.DateTimeField()

        class Meta:
            table_name = "patient_link"

    class BlockingKey(Base):
        key = peewee.CharField(max_length=64)
        patient = peewee.ForeignKeyField(Patient, field=Patient.pk, column_name="patient_pk",
                                         index=True, on_delete="CASCADE")

        class Meta:
            table_name = "blocking_key"
            primary_key = peewee.CompositeKey("key", "patient")

    class NonMatch(Base):
        pk = peewee.BigAutoField()
        patient_a = peewee.ForeignKeyField(Patient, field=Patient.pk,
                                           column_name="patient_a_pk", on_delete="CASCADE")
        patient_b = peewee.ForeignKeyField(Patient, field=Patient.pk,
                                           column_name="patient_b_pk", index=True,
                                           on_delete="CASCADE")
        actor = peewee.CharField(max_length=128)
        created_at = peewee.DateTimeField()

        class Meta:
            table_name = "non_match"
            indexes = ((("patient_a", "patient_b"), True),)

    class ReviewItem(Base):
        pk = peewee.BigAutoField()
        id = peewee.UUIDField(unique=True)
        kind = peewee.CharField(max_length=24)
        status = peewee.CharField(max_length=16)
        patient = peewee.ForeignKeyField(Patient, field=Patient.pk, column_name="patient_pk",
                                         null=True, index=True, on_delete="CASCADE")
        person = peewee.ForeignKeyField(Person, field=Person.pk, column_name="person_pk",
                                        index=True)
        other_person = peewee.ForeignKeyField(Person, field=Person.pk,
                                              column_name="other_person_pk", null=True,
                                              index=True)
        probability = peewee.DoubleField()
        model_version = peewee.CharField(max_length=80)
        explanation = peewee.TextField(null=True)
        created_at = peewee.DateTimeField()
        resolved_at = peewee.DateTimeField(null=True)
        resolved_by = peewee.CharField(max_length=128, null=True)
        resolution = peewee.CharField(max_length=24, null=True)

        class Meta:
            table_name = "review_item"
            indexes = ((("status", "pk"), False),)

    class LinkEvent(Base):
        pk = peewee.BigAutoField()
        person = peewee.ForeignKeyField(Person, field=Person.pk, column_name="person_pk",
                                        index=True)
        patient = peewee.ForeignKeyField(Patient, field=Patient.pk, column_name="patient_pk",
                                         null=True, index=True, on_delete="CASCADE")
        action = peewee.CharField(max_length=32)
        actor = peewee.CharField(max_length=128)
        occurred_at = peewee.DateTimeField()
        probability = peewee.DoubleField(null=True)
        model_version = peewee.CharField(max_length=80, null=True)
        detail = peewee.TextField(null=True)

        class Meta:
            table_name = "link_event"

    class PersonMerge(Base):
        pk = peewee.BigAutoField()
        id = peewee.UUIDField(unique=True)
        survivor = peewee.ForeignKeyField(Person, field=Person.pk, column_name="survivor_pk",
                                          index=True)
        merged = peewee.ForeignKeyField(Person, field=Person.pk, column_name="merged_pk",
                                        index=True)
        moved = peewee.TextField()
        actor = peewee.CharField(max_length=128)
        created_at = peewee.DateTimeField()
        undone_at = peewee.DateTimeField(null=True)

        class Meta:
            table_name = "person_merge"

    db.execute_sql("DROP INDEX patient_identifier_live_uniq")
    db.execute_sql("CREATE INDEX patient_identifier_system_value "
                   "ON patient_identifier (system, value)")
    db.create_tables([Person, PatientLink, BlockingKey, NonMatch, ReviewItem, LinkEvent,
                      PersonMerge], safe=False)

    # Every existing record becomes a person of its own until it is matched again.
    now = datetime.now(UTC).replace(tzinfo=None)
    for (patient_pk,) in Patient.select(Patient.pk).order_by(Patient.pk).tuples():
        person_pk = Person.insert(id=uuid.uuid4(), created_at=now, updated_at=now).execute()
        PatientLink.insert(patient=patient_pk, person=person_pk, match_data="{}",
                           manual=False, how="migrated", linked_at=now).execute()
