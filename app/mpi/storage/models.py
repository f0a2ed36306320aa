"""peewee models: the tables as the application sees them.

The schema itself is created and changed only by the files in
``migrations/``; ``tests/storage/test_migrations.py`` checks that a migrated
database matches these models. Model rows never leave the storage layer:
repositories turn them into domain objects.
"""

from __future__ import annotations

from typing import Any

import peewee

from mpi.storage.db import database_proxy
from mpi.storage.fields import JSONTextField


class BaseModel(peewee.Model):
    class Meta:
        database = database_proxy
        legacy_table_names = False


class PatientRow(BaseModel):
    """One record as a source system knows it."""

    pk = peewee.BigAutoField()
    replaced_by_pk: Any
    id = peewee.UUIDField(unique=True)
    source = peewee.CharField(max_length=100)
    source_id = peewee.CharField(max_length=200)
    active = peewee.BooleanField(default=True)
    gender = peewee.CharField(max_length=16, null=True)
    birth_date = peewee.DateField(null=True)  # indexed for live records: below
    # None: birth_date is the day; 7 or 4: only its month or year is known (birth_date is
    # then the period's first day), as YYYY-MM or YYYY.
    birth_date_precision = peewee.SmallIntegerField(null=True)
    deceased = peewee.BooleanField(default=False)
    deceased_date = peewee.DateField(null=True)
    mothers_maiden_name = peewee.CharField(max_length=200, null=True)
    multiple_birth = peewee.BooleanField(null=True)
    multiple_birth_order = peewee.SmallIntegerField(null=True)
    marital_status = peewee.CharField(max_length=8, null=True)
    managing_organization = peewee.CharField(max_length=200, null=True)
    # Not matched on, never searched: kept as JSON with the record.
    communication = JSONTextField(null=True)
    contacts = JSONTextField(null=True)
    version = peewee.IntegerField(default=1)
    created_at = peewee.DateTimeField()
    updated_at = peewee.DateTimeField()
    deleted_at = peewee.DateTimeField(null=True)
    # The record a source merged this one into (FHIR link replaced-by), if any.
    replaced_by = peewee.ForeignKeyField("self", field="pk", column_name="replaced_by_pk",
                                         null=True, index=True, object_id_name="replaced_by_pk")

    class Meta:
        table_name = "patient"


# (source, source_id) is unique among live records only: a deleted record frees its pair.
PatientRow.add_index(
    PatientRow.index(PatientRow.source, PatientRow.source_id, unique=True,
                     name="patient_source_live_uniq")
    .where(PatientRow.deleted_at.is_null())
)
# A search by birth date (PDQm: family name and birth year) finds its live records, their
# keys and ids in this index alone, without visiting the table (migration 0017). Every
# search by birth date is of live records, so this is the column's only index.
PatientRow.add_index(
    PatientRow.index(PatientRow.birth_date, PatientRow.birth_date_precision, PatientRow.pk,
                     PatientRow.id, name="patient_live_birth_date")
    .where(PatientRow.deleted_at.is_null())
)


def _belongs_to_patient(backref: str) -> peewee.ForeignKeyField:
    """The child tables' link to their patient (deleted with it, indexed)."""
    return peewee.ForeignKeyField(PatientRow, field=PatientRow.pk, column_name="patient_pk",
                                  backref=backref, on_delete="CASCADE", index=True)


class PatientNameRow(BaseModel):
    pk = peewee.BigAutoField()
    patient = _belongs_to_patient("name_rows")
    position = peewee.SmallIntegerField()
    use = peewee.CharField(max_length=16, null=True)
    family = peewee.CharField(max_length=200, null=True)
    family_norm = peewee.CharField(max_length=200, null=True)
    given = JSONTextField()
    # The given names folded for search (``storage.patients.given_norm``).
    given_norm = peewee.TextField(null=True)
    prefix = JSONTextField()
    suffix = JSONTextField()
    # The record's birth date (the first day of its month or year when only that is
    # known), written with the name: a family-name and birth-date search (PDQm) narrows the
    # names by both in one index (migration 0022). None when the record has none, and in
    # names an older release wrote: a search counts those as possibly born then.
    birth_date = peewee.DateField(null=True)

    class Meta:
        table_name = "patient_name"
        # A family-name prefix search reads the records' keys from the index alone, and a
        # family name and birth date search its names born then.
        indexes = ((("family_norm", "birth_date", "patient"), False),)


class PatientIdentifierRow(BaseModel):
    pk = peewee.BigAutoField()
    patient = _belongs_to_patient("identifier_rows")
    position = peewee.SmallIntegerField()
    system = peewee.CharField(max_length=256)
    value = peewee.CharField(max_length=128, index=True)
    type = peewee.CharField(max_length=10, null=True)
    use = peewee.CharField(max_length=16, null=True)
    deleted_at = peewee.DateTimeField(null=True)

    class Meta:
        table_name = "patient_identifier"


# Several records may carry one identifier (sources share national ids; duplicates inside
# a source are what matching finds), so the index is for look-ups only.
PatientIdentifierRow.add_index(
    PatientIdentifierRow.index(PatientIdentifierRow.system, PatientIdentifierRow.value,
                               name="patient_identifier_system_value")
)


class PatientAddressRow(BaseModel):
    pk = peewee.BigAutoField()
    patient = _belongs_to_patient("address_rows")
    position = peewee.SmallIntegerField()
    use = peewee.CharField(max_length=16, null=True)
    type = peewee.CharField(max_length=16, null=True)
    line = JSONTextField()
    city = peewee.CharField(max_length=200, null=True)
    district = peewee.CharField(max_length=200, null=True)
    state = peewee.CharField(max_length=200, null=True)
    postal_code = peewee.CharField(max_length=64, null=True)
    country = peewee.CharField(max_length=64, null=True)

    class Meta:
        table_name = "patient_address"


class PatientTelecomRow(BaseModel):
    pk = peewee.BigAutoField()
    patient = _belongs_to_patient("telecom_rows")
    position = peewee.SmallIntegerField()
    system = peewee.CharField(max_length=16)
    # Indexed for a search by phone number or e-mail address (migration 0023).
    value = peewee.CharField(max_length=256, index=True)
    use = peewee.CharField(max_length=16, null=True)
    rank = peewee.IntegerField(null=True)

    class Meta:
        table_name = "patient_telecom"


class AuditEventRow(BaseModel):
    """Who did what to which record: one row per action, reads included."""

    pk = peewee.BigAutoField()
    occurred_at = peewee.DateTimeField()
    action = peewee.CharField(max_length=64)
    actor = peewee.CharField(max_length=128)
    on_behalf_of = peewee.CharField(max_length=128, null=True)
    entity_type = peewee.CharField(max_length=32)
    entity_id = peewee.CharField(max_length=128, null=True)
    request_id = peewee.CharField(max_length=128, null=True)
    ip = peewee.CharField(max_length=64, null=True)
    user_agent = peewee.CharField(max_length=512, null=True)
    old_value = JSONTextField(null=True)
    new_value = JSONTextField(null=True)

    class Meta:
        table_name = "audit_event"
        # The trail's pages, newest first (mpi.storage.audit), each read from an index.
        indexes = (
            (("entity_type", "entity_id", "occurred_at", "pk"), False),
            (("actor", "occurred_at", "pk"), False),
            (("on_behalf_of", "occurred_at", "pk"), False),
            (("occurred_at", "pk"), False),
        )


class ChangeEventRow(BaseModel):
    """The durable change log: ``pk`` is the feed cursor, assigned in commit order."""

    pk = peewee.BigAutoField()
    occurred_at = peewee.DateTimeField()
    event_type = peewee.CharField(max_length=64)
    entity_type = peewee.CharField(max_length=32)
    entity_id = peewee.CharField(max_length=64)
    entity_version = peewee.IntegerField(null=True)
    actor = peewee.CharField(max_length=128)
    request_id = peewee.CharField(max_length=128, null=True)
    payload = JSONTextField(null=True)

    class Meta:
        table_name = "change_event"
        indexes = ((("entity_type", "entity_id", "pk"), False),)


class PersonRow(BaseModel):
    """An enterprise identity: the person one or more records belong to."""

    pk = peewee.BigAutoField()
    merged_into_id: Any
    id = peewee.UUIDField(unique=True)
    created_at = peewee.DateTimeField()
    updated_at = peewee.DateTimeField()
    merged_into = peewee.ForeignKeyField("self", field="pk", column_name="merged_into_pk",
                                         null=True, index=True, object_id_name="merged_into_id")

    class Meta:
        table_name = "person"


class PatientLinkRow(BaseModel):
    """Which person a record belongs to (exactly one), how it got there, and the record's
    matching form (``match_data``) so candidates are scored without loading whole records."""

    pk = peewee.BigAutoField()
    patient_id: Any
    person_id: Any
    patient = peewee.ForeignKeyField(PatientRow, field=PatientRow.pk, column_name="patient_pk",
                                     unique=True, on_delete="CASCADE", object_id_name="patient_id")
    person = peewee.ForeignKeyField(PersonRow, field=PersonRow.pk, column_name="person_pk",
                                    index=True, object_id_name="person_id")
    match_data = JSONTextField()
    manual = peewee.BooleanField(default=False)
    how = peewee.CharField(max_length=16)
    probability = peewee.DoubleField(null=True)
    model_version = peewee.CharField(max_length=80, null=True)
    linked_at = peewee.DateTimeField()

    class Meta:
        table_name = "patient_link"
        # A record's person from the index alone (an index-only scan): the candidate
        # look-up turns each blocking key's records into persons, and visiting the row for
        # it read the table's pages, wide with match_data, one per candidate (migration 0020).
        indexes = ((("patient", "person"), False),)


class BlockingKeyRow(BaseModel):
    """Candidate look-up keys of live records (deleted with the record's retirement).

    The primary key (key, patient) is the look-up index itself: no surrogate id, one
    index fewer to maintain for the ~20 rows each record writes."""

    patient_id: Any
    key = peewee.CharField(max_length=64)
    patient = peewee.ForeignKeyField(PatientRow, field=PatientRow.pk, column_name="patient_pk",
                                     index=True, on_delete="CASCADE", object_id_name="patient_id")

    class Meta:
        table_name = "blocking_key"
        primary_key = peewee.CompositeKey("key", "patient")


class NonMatchRow(BaseModel):
    """A steward said these two records are not the same person (stored with a < b)."""

    pk = peewee.BigAutoField()
    patient_a_id: Any
    patient_b_id: Any
    patient_a = peewee.ForeignKeyField(PatientRow, field=PatientRow.pk,
                                       column_name="patient_a_pk", on_delete="CASCADE",
                                       object_id_name="patient_a_id")
    patient_b = peewee.ForeignKeyField(PatientRow, field=PatientRow.pk,
                                       column_name="patient_b_pk", index=True,
                                       on_delete="CASCADE", object_id_name="patient_b_id")
    actor = peewee.CharField(max_length=128)
    created_at = peewee.DateTimeField()

    class Meta:
        table_name = "non_match"
        indexes = ((("patient_a", "patient_b"), True),)


class ReviewItemRow(BaseModel):
    """A possible match (record vs person) or possible duplicate (person vs person)."""

    pk = peewee.BigAutoField()
    patient_id: Any
    person_id: Any
    other_person_id: Any
    id = peewee.UUIDField(unique=True)
    kind = peewee.CharField(max_length=24)
    status = peewee.CharField(max_length=16)
    patient = peewee.ForeignKeyField(PatientRow, field=PatientRow.pk, column_name="patient_pk",
                                     null=True, index=True, on_delete="CASCADE",
                                     object_id_name="patient_id")
    person = peewee.ForeignKeyField(PersonRow, field=PersonRow.pk, column_name="person_pk",
                                    index=True, object_id_name="person_id")
    other_person = peewee.ForeignKeyField(PersonRow, field=PersonRow.pk,
                                          column_name="other_person_pk", null=True, index=True,
                                          object_id_name="other_person_id")
    probability = peewee.DoubleField()
    model_version = peewee.CharField(max_length=80)
    explanation = JSONTextField(null=True)
    created_at = peewee.DateTimeField()
    resolved_at = peewee.DateTimeField(null=True)
    resolved_by = peewee.CharField(max_length=128, null=True)
    resolution = peewee.CharField(max_length=24, null=True)
    comment = peewee.CharField(max_length=1000, null=True)
    # The source of the record that raised it (its patient's; a record keeps its source),
    # for the steward's queue and its filter by source (migration 0024). None in a review
    # an older release opened during an upgrade: the queue then asks the record.
    source = peewee.CharField(max_length=100, null=True)

    class Meta:
        table_name = "review_item"
        indexes = ((("status", "pk"), False), (("status", "source", "pk"), False))


class LinkEventRow(BaseModel):
    """A person's link history: every link, unlink, merge and undo, with who and why."""

    pk = peewee.BigAutoField()
    person_id: Any
    patient_id: Any
    person = peewee.ForeignKeyField(PersonRow, field=PersonRow.pk, column_name="person_pk",
                                    index=True, object_id_name="person_id")
    patient = peewee.ForeignKeyField(PatientRow, field=PatientRow.pk, column_name="patient_pk",
                                     null=True, index=True, on_delete="CASCADE",
                                     object_id_name="patient_id")
    action = peewee.CharField(max_length=32)
    actor = peewee.CharField(max_length=128)
    occurred_at = peewee.DateTimeField()
    probability = peewee.DoubleField(null=True)
    model_version = peewee.CharField(max_length=80, null=True)
    detail = JSONTextField(null=True)

    class Meta:
        table_name = "link_event"


class PersonMergeRow(BaseModel):
    """A merge of ``merged`` into ``survivor``; ``moved`` lists the records it moved;
    ``how``: steward, source (HL7 ADT^A40) or auto (the engine, on ``probability``)."""

    pk = peewee.BigAutoField()
    survivor_id: Any
    merged_id: Any
    id = peewee.UUIDField(unique=True)
    survivor = peewee.ForeignKeyField(PersonRow, field=PersonRow.pk, column_name="survivor_pk",
                                      index=True, object_id_name="survivor_id")
    merged = peewee.ForeignKeyField(PersonRow, field=PersonRow.pk, column_name="merged_pk",
                                    index=True, object_id_name="merged_id")
    moved = JSONTextField()
    actor = peewee.CharField(max_length=128)
    created_at = peewee.DateTimeField()
    undone_at = peewee.DateTimeField(null=True)
    how = peewee.CharField(max_length=16, default="steward")
    probability = peewee.DoubleField(null=True)
    model_version = peewee.CharField(max_length=80, null=True)

    class Meta:
        table_name = "person_merge"


IDENTITY_MODELS = (PersonRow, PatientLinkRow, BlockingKeyRow, NonMatchRow, ReviewItemRow,
                   LinkEventRow, PersonMergeRow)


class ApiTokenRow(BaseModel):
    """An API token of AUTH_MODE=token: only the SHA-256 of its secret is kept."""

    pk = peewee.BigAutoField()
    name = peewee.CharField(max_length=64, unique=True)
    token_hash = peewee.CharField(max_length=64, unique=True)
    scopes = peewee.TextField()  # space-separated, as in OAuth
    sources = peewee.TextField()  # comma-separated source names, or *
    created_at = peewee.DateTimeField()
    last_used_at = peewee.DateTimeField(null=True)
    revoked_at = peewee.DateTimeField(null=True)

    class Meta:
        table_name = "api_token"


class IdentityDomainRow(BaseModel):
    """An identity domain (assigning authority): an identifier system this registry knows,
    and which sources may assign identifiers in it."""

    pk = peewee.BigAutoField()
    id = peewee.UUIDField(unique=True)
    system = peewee.CharField(max_length=256, unique=True)
    name = peewee.CharField(max_length=200)
    sources = peewee.TextField()  # comma-separated source names, or *
    created_at = peewee.DateTimeField()
    namespace = peewee.CharField(max_length=64, null=True, unique=True)  # HL7 v2 HD-1

    class Meta:
        table_name = "identity_domain"


class Hl7SenderRow(BaseModel):
    """A system that sends HL7 v2 messages (MSH-3 at MSH-4), as a client of its own."""

    pk = peewee.BigAutoField()
    name = peewee.CharField(max_length=64, unique=True)
    application = peewee.CharField(max_length=64)
    facility = peewee.CharField(max_length=64)
    sources = peewee.TextField()  # comma-separated source names, or *
    scopes = peewee.TextField()  # space-separated
    certificate = peewee.CharField(max_length=200, null=True)
    created_at = peewee.DateTimeField()

    class Meta:
        table_name = "hl7_sender"
        indexes = ((("application", "facility"), True),)


class Hl7ReceiptRow(BaseModel):
    """The acknowledgement a sender's message (by MSH-10) got, kept so a resend gets it."""

    pk = peewee.BigAutoField()
    sender = peewee.CharField(max_length=64)
    control_id = peewee.CharField(max_length=199)
    ack = peewee.TextField()
    created_at = peewee.DateTimeField()

    class Meta:
        table_name = "hl7_receipt"
        indexes = ((("sender", "control_id"), True), (("created_at",), False))


class Hl7ContinuationRow(BaseModel):
    """A PDQ continuation pointer (DSC-1): whose, which query (a digest), how far, and
    for a fuzzy query the ranked record ids; used once, until ``expires_at``."""

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
        table_name = "hl7_continuation"
        indexes = ((("expires_at",), False),)


class SchemaMigrationRow(BaseModel):
    """Applied migrations (written by ``mpi.storage.migrate``)."""

    version = peewee.CharField(max_length=16, primary_key=True)
    name = peewee.CharField(max_length=200)
    checksum = peewee.CharField(max_length=64)
    applied_at = peewee.DateTimeField()

    class Meta:
        table_name = "schema_migration"


PATIENT_CHILD_MODELS = (PatientNameRow, PatientIdentifierRow, PatientAddressRow, PatientTelecomRow)
#: The tables a bulk load of records writes (``mpi import``): analyzed as it goes.
REGISTRY_TABLES = tuple(m._meta.table_name for m in (  # type: ignore[attr-defined]
    PatientRow, *PATIENT_CHILD_MODELS, *IDENTITY_MODELS, AuditEventRow, ChangeEventRow))
#: Of those, the tables the candidate look-up reads from their indexes alone (blocking
#: keys, then each record's person): a bulk load vacuums them as well, on PostgreSQL, so
#: the pages it wrote are marked all-visible and the look-up does not visit them.
LOOKUP_TABLES = tuple(m._meta.table_name for m in (  # type: ignore[attr-defined]
    BlockingKeyRow, PatientLinkRow))
ALL_MODELS = (
    PatientRow,
    *PATIENT_CHILD_MODELS,
    AuditEventRow,
    ChangeEventRow,
    *IDENTITY_MODELS,
    ApiTokenRow,
    IdentityDomainRow,
    Hl7SenderRow,
    Hl7ReceiptRow,
    Hl7ContinuationRow,
    SchemaMigrationRow,
)
