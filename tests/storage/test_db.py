"""Database helpers (both backends)."""

from __future__ import annotations

import uuid
from datetime import datetime

import pytest

from mpi.storage.db import analyze, planned_rows, uuid_text
from mpi.storage.models import PersonRow

NOW = datetime(2026, 1, 1, 12, 0)


def test_planned_rows_are_what_the_statistics_know(db):
    PersonRow.insert_many([{"id": uuid.uuid4(), "created_at": NOW, "updated_at": NOW}
                           for _ in range(40)]).execute()
    assert planned_rows(db, "person") == 0  # loaded, never analyzed
    analyze(db, ["person"])
    assert planned_rows(db, "person") == 40


def test_a_prepared_select_binds_each_calls_values_and_gives_model_rows(db):
    from mpi.storage.db import PreparedSelect

    made = [uuid.uuid4() for _ in range(3)]
    PersonRow.insert_many([{"id": i, "created_at": NOW, "updated_at": NOW}
                           for i in made]).execute()
    by_id = PreparedSelect(PersonRow, lambda: PersonRow.select().where(PersonRow.id == ""))
    for person_id in made:  # the same statement, new values each time
        (row,) = by_id.rows(PersonRow.id.db_value(person_id))
        assert row.id == person_id and row.created_at == NOW
    assert by_id.rows(PersonRow.id.db_value(uuid.uuid4())) == []
    with pytest.raises(TypeError):
        by_id.rows()


@pytest.mark.parametrize("persons", [1, 3, 80])
def test_rows_inserted_together_and_keys_returned(db, persons):
    """A few rows per table: one statement on PostgreSQL; many: a COPY per table; the
    generated keys come back with the insert, or are read back."""
    from mpi.storage.bulk import insert_returning, insert_together
    from mpi.storage.models import BlockingKeyRow, PatientLinkRow, PatientRow

    ids = [uuid.uuid4() for _ in range(persons)]
    returned = insert_returning(PersonRow, [{"id": i, "created_at": NOW, "updated_at": NOW}
                                            for i in ids], ("id", "pk"))
    stored = {r.id: r.pk for r in PersonRow.select()}
    if returned is not None:
        assert {uuid.UUID(str(i)): pk for i, pk in returned} == stored
    assert set(stored) == set(ids)
    patients = [PatientRow.create(id=uuid.uuid4(), source="ehr", source_id=f"S{n}",
                                  created_at=NOW, updated_at=NOW) for n in range(persons)]
    insert_together([
        (PatientLinkRow, [{"patient": p.pk, "person": stored[i], "match_data": {"n": n},
                           "manual": False, "how": "new", "linked_at": NOW}
                          for n, (p, i) in enumerate(zip(patients, ids, strict=True))]),
        (BlockingKeyRow, []),  # an empty table is left out
        (BlockingKeyRow, [{"patient": p.pk, "key": f"k:{p.pk}"} for p in patients])])
    links = {r.patient_id: r for r in PatientLinkRow.select()}
    assert [links[p.pk].match_data for p in patients] == [{"n": n} for n in range(persons)]
    assert BlockingKeyRow.select().count() == persons


def test_uuid_text_reads_either_backends_column_value():
    value = uuid.UUID("12345678-9abc-def0-1234-56789abcdef0")
    canonical = "12345678-9abc-def0-1234-56789abcdef0"
    assert uuid_text(value) == canonical  # psycopg
    assert uuid_text(value.hex) == canonical  # SQLite, as peewee stores it
    assert uuid_text(canonical.upper()) == canonical


def test_uuid_text_of_stored_ids_is_what_the_api_writes(db):
    """Both backends: a person's id read back raw is the id it was created with."""
    made = PersonRow.create(id=uuid.uuid4(), created_at=NOW, updated_at=NOW)
    raw = db.execute_sql(f"SELECT id FROM person WHERE pk = {db.param}", (made.pk,)).fetchone()
    assert uuid_text(raw[0]) == str(made.id)
