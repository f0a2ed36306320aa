"""Database helpers (both backends)."""

from __future__ import annotations

import uuid
from datetime import datetime

import pytest

from mpi.storage.db import analyze, execute_for_values, planned_rows, uuid_text
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


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_few_rows_insert_is_prepared_and_many_rows_are_copied(db):
    """A record's few rows per table go in as a prepared INSERT (planning them took a
    third of their time), planned generically from the start; many rows (an import
    batch) go by COPY, never prepared."""
    from mpi.storage.bulk import insert_returning, insert_together
    from mpi.storage.models import BlockingKeyRow, PatientRow

    assert db.execute_sql("SHOW plan_cache_mode").fetchone()[0] == "force_generic_plan"
    for n in range(3):  # the same shape each time: one statement, prepared once
        person = uuid.uuid4()
        insert_returning(PersonRow, [{"id": person, "created_at": NOW, "updated_at": NOW}],
                         ("id", "pk"))
        patient = PatientRow.create(id=uuid.uuid4(), source="ehr", source_id=f"P{n}",
                                    created_at=NOW, updated_at=NOW)
        insert_together([(BlockingKeyRow, [{"patient": patient.pk, "key": "a:1"}]),
                         (BlockingKeyRow, [{"patient": patient.pk, "key": "b:1"}])])
    insert_returning(PersonRow, [{"id": uuid.uuid4(), "created_at": NOW, "updated_at": NOW}
                                 for _ in range(50)], ("id", "pk"))
    prepared = sorted(s for (s,) in db.execute_sql(
        "SELECT statement FROM pg_prepared_statements").fetchall())
    assert len(prepared) == 2, prepared
    assert prepared[0].startswith('INSERT INTO "person"') and "RETURNING" in prepared[0]
    assert prepared[1].startswith('WITH t0 AS (INSERT INTO "blocking_key"')
    assert PersonRow.select().count() == 53 and BlockingKeyRow.select().count() == 6


def test_without_prepared_statements_plans_are_left_to_postgresql(postgres_url):
    """DATABASE_PREPARED_STATEMENTS=false (a PgBouncer that cannot keep them): nothing is
    prepared, and the server's own plan_cache_mode is left alone."""
    from mpi.config import parse_database_url
    from mpi.storage.bulk import insert_returning
    from mpi.storage.db import close_database, database_for, database_proxy

    db = database_for(parse_database_url(postgres_url), prepared_statements=False)
    database_proxy.initialize(db)
    try:
        with db.connection_context():
            assert db.execute_sql("SHOW plan_cache_mode").fetchone()[0] == "auto"
            insert_returning(PersonRow, [{"id": uuid.uuid4(), "created_at": NOW,
                                          "updated_at": NOW}], ("id", "pk"))
            assert db.execute_sql("SELECT count(*) FROM pg_prepared_statements"
                                  ).fetchone()[0] == 0
    finally:
        close_database(db)


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


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_search_runs_on_a_plan_made_for_its_values(db):
    """The service's connections plan statements with parameters generically
    (``plan_cache_mode``), unnamed ones included: ``family_norm LIKE $1`` then gives the
    index no prefix range, and a PDQm search walked a whole year's records (52 ms at
    1,170,000 records). ``execute_for_values`` binds the values into the statement's text,
    so its plan holds the prefix's range. (EXPLAIN of a statement with parameters plans
    for them, which hid this: ``EXPLAIN EXECUTE`` shows what runs.)"""
    assert db.execute_sql("SHOW plan_cache_mode").fetchone()[0] == "force_generic_plan"
    db.execute_sql("SET enable_seqscan = off")
    db.execute_sql("PREPARE by_family(text) AS "
                   "SELECT patient_pk FROM patient_name WHERE family_norm LIKE $1")
    generic = "\n".join(r[0] for r in db.execute_sql(
        "EXPLAIN EXECUTE by_family('fam12%%')", ()).fetchall())
    assert "family_norm >=" not in generic, generic
    planned = "\n".join(r[0] for r in execute_for_values(
        db, "EXPLAIN SELECT patient_pk FROM patient_name WHERE family_norm LIKE %s",
        ("fam12%",)))
    assert "family_norm >= 'fam12'" in planned, planned
    assert execute_for_values(db, "SELECT count(*) FROM patient_name WHERE family_norm LIKE %s",
                              ("it's%",)) == [(0,)]  # quoted by the driver
