"""Patients with names, identifiers, addresses and telecom; the audit log; the change log."""

from __future__ import annotations

import peewee


def upgrade(db: peewee.Database) -> None:
    class Base(peewee.Model):
        class Meta:
            database = db
            legacy_table_names = False

    class Patient(Base):
        pk = peewee.BigAutoField()
        id = peewee.UUIDField(unique=True)
        source = peewee.CharField(max_length=100)
        source_id = peewee.CharField(max_length=200)
        active = peewee.BooleanField(default=True)
        gender = peewee.CharField(max_length=16, null=True)
        birth_date = peewee.DateField(null=True, index=True)
        deceased = peewee.BooleanField(default=False)
        deceased_date = peewee.DateField(null=True)
        version = peewee.IntegerField(default=1)
        created_at = peewee.DateTimeField()
        updated_at = peewee.DateTimeField()
        deleted_at = peewee.DateTimeField(null=True)

        class Meta:
            table_name = "patient"

    Patient.add_index(
        Patient.index(Patient.source, Patient.source_id, unique=True,
                      name="patient_source_live_uniq").where(Patient.deleted_at.is_null())
    )

    def child(name: str) -> peewee.ForeignKeyField:
        return peewee.ForeignKeyField(Patient, field=Patient.pk, column_name="patient_pk",
                                      backref=name, on_delete="CASCADE", index=True)

    class PatientName(Base):
        pk = peewee.BigAutoField()
        patient = child("names")
        position = peewee.SmallIntegerField()
        use = peewee.CharField(max_length=16, null=True)
        family = peewee.CharField(max_length=200, null=True)
        family_norm = peewee.CharField(max_length=200, null=True, index=True)
        given = peewee.TextField()
        prefix = peewee.TextField()
        suffix = peewee.TextField()

        class Meta:
            table_name = "patient_name"

    class PatientIdentifier(Base):
        pk = peewee.BigAutoField()
        patient = child("identifiers")
        position = peewee.SmallIntegerField()
        system = peewee.CharField(max_length=256)
        value = peewee.CharField(max_length=128, index=True)
        type = peewee.CharField(max_length=10, null=True)
        use = peewee.CharField(max_length=16, null=True)
        deleted_at = peewee.DateTimeField(null=True)

        class Meta:
            table_name = "patient_identifier"

    PatientIdentifier.add_index(
        PatientIdentifier.index(PatientIdentifier.system, PatientIdentifier.value, unique=True,
                                name="patient_identifier_live_uniq")
        .where(PatientIdentifier.deleted_at.is_null())
    )

    class PatientAddress(Base):
        pk = peewee.BigAutoField()
        patient = child("addresses")
        position = peewee.SmallIntegerField()
        use = peewee.CharField(max_length=16, null=True)
        type = peewee.CharField(max_length=16, null=True)
        line = peewee.TextField()
        city = peewee.CharField(max_length=200, null=True)
        district = peewee.CharField(max_length=200, null=True)
        state = peewee.CharField(max_length=200, null=True)
        postal_code = peewee.CharField(max_length=64, null=True)
        country = peewee.CharField(max_length=64, null=True)

        class Meta:
            table_name = "patient_address"

    class PatientTelecom(Base):
        pk = peewee.BigAutoField()
        patient = child("telecom")
        position = peewee.SmallIntegerField()
        system = peewee.CharField(max_length=16)
        value = peewee.CharField(max_length=256)
        use = peewee.CharField(max_length=16, null=True)
        rank = peewee.IntegerField(null=True)

        class Meta:
            table_name = "patient_telecom"

    class AuditEvent(Base):
        pk = peewee.BigAutoField()
        occurred_at = peewee.DateTimeField(index=True)
        action = peewee.CharField(max_length=64)
        actor = peewee.CharField(max_length=128)
        entity_type = peewee.CharField(max_length=32)
        entity_id = peewee.CharField(max_length=64, null=True)
        request_id = peewee.CharField(max_length=128, null=True)
        ip = peewee.CharField(max_length=64, null=True)
        user_agent = peewee.CharField(max_length=512, null=True)
        old_value = peewee.TextField(null=True)
        new_value = peewee.TextField(null=True)

        class Meta:
            table_name = "audit_event"
            indexes = (
                (("entity_type", "entity_id", "pk"), False),
                (("actor", "pk"), False),
            )

    class ChangeEvent(Base):
        pk = peewee.BigAutoField()
        occurred_at = peewee.DateTimeField()
        event_type = peewee.CharField(max_length=64)
        entity_type = peewee.CharField(max_length=32)
        entity_id = peewee.CharField(max_length=64)
        entity_version = peewee.IntegerField(null=True)
        actor = peewee.CharField(max_length=128)
        request_id = peewee.CharField(max_length=128, null=True)
        payload = peewee.TextField(null=True)

        class Meta:
            table_name = "change_event"
            indexes = ((("entity_type", "entity_id", "pk"), False),)

    db.create_tables(
        [Patient, PatientName, PatientIdentifier, PatientAddress, PatientTelecom, AuditEvent,
         ChangeEvent],
        safe=False,
    )
