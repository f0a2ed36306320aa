"""Patient repository: batch loading and uniqueness among live records (both backends)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import peewee
import pytest
from playhouse.test_utils import count_queries

from mpi.domain.patient import PatientInput
from mpi.storage.models import PatientIdentifierRow, PatientLinkRow, PatientRow, PersonRow
from mpi.storage.patients import PatientFilter, PatientRepository, normalize_name
from tests.helpers import MRN, patient

NOW = datetime(2026, 1, 1, 12, 0)


def _input(**changes) -> PatientInput:
    return PatientInput.model_validate_json(__import__("json").dumps(patient(**changes)))


def test_listing_a_page_costs_the_same_queries_whatever_its_size(db):
    repo = PatientRepository()
    for i in range(30):
        repo.insert(_input(source_id=f"S{i}",
                           identifiers=[{"system": MRN, "value": f"M{i}"}]),
                    patient_id=uuid.uuid4(), now=NOW)
    with count_queries() as small:
        repo.list_page(PatientFilter(), after=None, limit=2)
    with count_queries() as large:
        page = repo.list_page(PatientFilter(), after=None, limit=25)
    assert len(page.items) == 25
    # One statement: the page's keys and each record with its child rows, person and
    # merges (what a read of one record costs).
    assert small.count == large.count == 1


def test_a_listed_record_is_the_record_a_read_gives(db):
    """A page assembles each record as a read of that record does: child rows in order,
    the person, the records it replaces and the one that replaced it; deleted ones left
    out; the filters and the cursor as before."""
    repo = PatientRepository()
    made = []
    for i in range(12):
        made.append(repo.insert(_input(
            source_id=f"L{i}",
            identifiers=[{"system": MRN, "value": f"M{i}"},
                         {"system": "urn:oid:2.16.840.1.113883.4.1", "value": f"9{i:08d}"}],
            names=[{"use": "official", "family": ("Nguyen", "Smith")[i % 2],
                    "given": ["Ann", "Marie"][: 1 + i % 2]},
                   {"use": "maiden", "family": "Old" + str(i), "given": ["Ann"]}],
            telecom=[{"system": "phone", "value": f"555-010{i % 10}", "rank": 1 + i % 3}]),
            patient_id=uuid.uuid4(), now=NOW))
    rows = {r.id: r for r in PatientRow.select()}
    person = PersonRow.create(id=uuid.uuid4(), created_at=NOW, updated_at=NOW)
    for i in (0, 4):
        PatientLinkRow.create(patient=rows[uuid.UUID(made[i].id)].pk, person=person.pk,
                              match_data={}, how="new", linked_at=NOW)
    repo.set_replaced_by(rows[uuid.UUID(made[1].id)], rows[uuid.UUID(made[2].id)])
    repo.set_replaced_by(rows[uuid.UUID(made[3].id)], rows[uuid.UUID(made[2].id)])
    repo.soft_delete(rows[uuid.UUID(made[5].id)], expected_version=None, now=NOW)

    listed, after = [], None
    while True:
        page = repo.list_page(PatientFilter(), after=after, limit=5)
        listed += page.items
        if page.next_cursor is None:
            break
        after = page.next_cursor
    expected = [repo.read(p.id) for p in made if p.id != made[5].id]
    assert listed == expected
    assert listed[2].replaces == sorted([made[1].id, made[3].id])
    assert listed[1].replaced_by == made[2].id
    assert [n.family for n in listed[0].names] == ["Nguyen", "Old0"]
    assert listed[0].person_id == listed[4].person_id == str(person.id)
    assert listed[3].person_id is None

    smiths = repo.list_page(PatientFilter(family="smith"), after=None, limit=50).items
    assert smiths == [repo.read(p.id) for p in made if p.id != made[5].id
                      and made.index(p) % 2 == 1]
    by_mrn = repo.list_page(PatientFilter(identifier_system=MRN, identifier_value="M7"),
                            after=None, limit=50).items
    assert [p.id for p in by_mrn] == [made[7].id]
    assert repo.list_page(PatientFilter(identifier_value="M5"), after=None, limit=5).items == []


def test_live_source_record_unique_index_is_enforced_by_the_database(db):
    repo = PatientRepository()
    repo.insert(_input(), patient_id=uuid.uuid4(), now=NOW)
    with pytest.raises(peewee.IntegrityError), db.atomic():
        PatientRow.insert(id=uuid.uuid4(), source="st-marys-ehr", source_id="A-1001",
                          created_at=NOW, updated_at=NOW).execute()


def test_two_live_records_may_carry_one_identifier(db):
    repo = PatientRepository()
    first = repo.insert(_input(), patient_id=uuid.uuid4(), now=NOW)
    second = repo.insert(_input(source_id="A-2002"), patient_id=uuid.uuid4(), now=NOW)
    assert second.identifiers == first.identifiers
    assert PatientIdentifierRow.select().count() == 2


def test_deleted_record_frees_its_source_id(db):
    repo = PatientRepository()
    first = repo.insert(_input(), patient_id=uuid.uuid4(), now=NOW)
    repo.soft_delete(repo.get_row(first.id), expected_version=None, now=NOW)
    second = repo.insert(_input(), patient_id=uuid.uuid4(), now=NOW)
    assert second.identifiers == first.identifiers
    assert repo.find_live_id_by_source("st-marys-ehr", "A-1001") == second.id


@pytest.mark.parametrize(("raw", "norm"), [("Müller", "muller"), ("  SMITH ", "smith"),
                                           ("Ðiṅh", "ðinh"), (None, None)])
def test_normalize_name(raw, norm):
    assert normalize_name(raw) == norm


def _rich_input() -> PatientInput:
    return _input(
        names=[{"use": "official", "family": "Smith", "given": ["John", "Q"], "prefix": ["Dr"]},
               {"use": "maiden", "family": "Jones", "given": ["Johnny"]}],
        identifiers=[{"system": MRN, "value": "M1", "type": "MR", "use": "usual"},
                     {"system": "urn:oid:2.16.840.1.113883.4.1", "value": "123-45-6789"}],
        addresses=[{"use": "home", "line": ["1 High St", "Apt 2"], "city": "Springfield",
                    "postal_code": "62701", "country": "US"},
                   {"use": "work", "line": ["9 Low Rd"], "city": "Shelbyville"}],
        telecom=[{"system": "phone", "value": "+1-217-555-0101", "use": "home", "rank": 1},
                 {"system": "email", "value": "j@example.org"}],
        deceased=True, deceased_date="2020-02-02")


def test_a_record_is_read_in_one_statement_exactly_as_loaded(db, backend, monkeypatch):
    import mpi.storage.patients as module

    prepared: list[str] = []
    run = module.execute_prepared

    def spy(on: Any, sql: str, params: Any) -> Any:
        prepared.append(sql)
        return run(on, sql, params)

    monkeypatch.setattr(module, "execute_prepared", spy)
    repo = PatientRepository()
    stored = repo.insert(_rich_input(), patient_id=uuid.uuid4(), now=NOW)
    with count_queries() as counted:
        read = repo.read(stored.id)
    # One statement, prepared on PostgreSQL (past peewee's query counter), plain on SQLite.
    assert len(prepared) == 1 and counted.count == (1 if backend == "sqlite" else 0)
    assert read == repo.get(stored.id) == stored.model_copy(update={"person_id": None})
    assert [n.family for n in read.names] == ["Smith", "Jones"]


def test_the_one_statement_read_keeps_the_positions_not_the_storage_order(db):
    """Child rows come back in their ``position`` order even when stored the other way
    round (SQLite's aggregate promises no order)."""
    from mpi.storage.models import PatientNameRow

    repo = PatientRepository()
    stored = repo.insert(_rich_input(), patient_id=uuid.uuid4(), now=NOW)
    rows: list[Any] = list(PatientNameRow.select().where(PatientNameRow.patient == repo.get_row(
        stored.id).pk).order_by(PatientNameRow.position.desc()).dicts())
    PatientNameRow.delete().execute()
    for row in rows:
        row.pop("pk")
        PatientNameRow.insert(**row).execute()
    assert [n.family for n in repo.read(stored.id).names] == ["Smith", "Jones"]


def test_the_one_statement_read_says_missing_or_deleted(db):
    from mpi.domain.errors import Deleted, NotFound

    repo = PatientRepository()
    with pytest.raises(NotFound):
        repo.read(uuid.uuid4())
    with pytest.raises(NotFound):
        repo.read("not-a-uuid")
    stored = repo.insert(_input(), patient_id=uuid.uuid4(), now=NOW)
    repo.soft_delete(repo.get_row(stored.id), expected_version=None, now=NOW)
    with pytest.raises(Deleted):
        repo.read(stored.id)


def test_a_read_takes_no_row_lock(postgres_url):
    """A writer holding the record's row (FOR UPDATE, as an update does) does not hold up
    a reader: the read sees the last committed version at once. (It used FOR SHARE.)"""
    from mpi.config import parse_database_url
    from mpi.storage.db import close_database, database_for, database_proxy

    db = database_for(parse_database_url(postgres_url), max_connections=2)
    other = database_for(parse_database_url(postgres_url), max_connections=1)
    database_proxy.initialize(db)
    repo = PatientRepository()
    try:
        with db.connection_context():
            stored = repo.insert(_input(source_id=f"L-{uuid.uuid4()}"),
                                 patient_id=uuid.uuid4(), now=NOW)
            with other.connection_context(), other.atomic():
                other.execute_sql("SELECT 1 FROM patient WHERE id = %s FOR UPDATE",
                                  (uuid.UUID(stored.id),))
                db.execute_sql("SET statement_timeout TO '2s'")  # a wait would fail, not hang
                assert repo.read(stored.id).version == 1
                db.execute_sql("RESET statement_timeout")
    finally:
        close_database(db)
        close_database(other)


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_the_read_statement_is_prepared_and_no_other_select_is(db):
    """PostgreSQL plans the record read once per connection (planning was 0.47 ms of its
    0.65 ms); a select not asked to be prepared never is, however often it runs (a
    generic plan for a list of keys scans whole tables). The record's INSERTs are
    prepared too (their plan does not depend on the values)."""
    repo = PatientRepository()
    stored = repo.insert(_input(), patient_id=uuid.uuid4(), now=NOW)
    for _ in range(10):
        repo.read(stored.id)
        repo.list_page(PatientFilter(source="st-marys-ehr"), after=None, limit=5)
    statements = [s for (s,) in db.execute_sql(
        "SELECT statement FROM pg_prepared_statements").fetchall()]
    selects = [s for s in statements if s.startswith("SELECT")]
    assert len(selects) == 1 and "patient_telecom" in selects[0]
    assert all(s.startswith(("SELECT", "INSERT", "WITH t0 AS (INSERT")) for s in statements)


def test_without_prepared_statements_the_read_prepares_nothing(postgres_url):
    """DATABASE_PREPARED_STATEMENTS=false (a PgBouncer that cannot keep them): the same
    read, planned each time."""
    from mpi.config import Settings
    from mpi.storage.db import close_database, database_proxy, make_database

    settings = Settings.defaults(database_url=postgres_url, database_prepared_statements=False)
    db = make_database(settings)
    database_proxy.initialize(db)
    try:
        with db.connection_context():
            repo = PatientRepository()
            stored = repo.insert(_input(source_id=f"NP-{uuid.uuid4()}"),
                                 patient_id=uuid.uuid4(), now=NOW)
            for _ in range(8):
                assert repo.read(stored.id).id == stored.id
            assert db.execute_sql("SELECT count(*) FROM pg_prepared_statements"
                                  ).fetchone()[0] == 0
    finally:
        close_database(db)


def test_read_many_is_one_statement_in_the_order_asked_without_deleted(db):
    repo = PatientRepository()
    made = [repo.insert(_input(source_id=f"R{i}"), patient_id=uuid.uuid4(), now=NOW)
            for i in range(4)]
    repo.soft_delete(repo.get_row(made[1].id), expected_version=None, now=NOW)
    wanted = [made[3].id, made[1].id, made[0].id, str(uuid.uuid4())]
    with count_queries() as counted:
        found = repo.read_many(wanted)
    assert [p.id for p in found] == [made[3].id, made[0].id]
    assert found[0] == repo.read(made[3].id) and counted.count == 1


def test_get_live_many_is_the_one_statement_read_by_id(db):
    repo = PatientRepository()
    made = [repo.insert(_input(source_id=f"L{i}"), patient_id=uuid.uuid4(), now=NOW)
            for i in range(3)]
    repo.soft_delete(repo.get_row(made[1].id), expected_version=None, now=NOW)
    with count_queries() as counted:
        found = repo.get_live_many([made[2].id, made[1].id, "not-a-uuid", made[0].id])
    assert counted.count == 1
    assert found == {made[2].id: repo.read(made[2].id), made[0].id: repo.read(made[0].id)}
    assert repo.get_live_many(["not-a-uuid"]) == {}


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_page_looks_its_records_up_by_key_not_by_reading_the_table(db):
    """PostgreSQL planned the page's "pk IN (keys)" as a hash semi-join over a sequential
    scan of every record, on every page: an index build reads a million-record registry a
    thousand records at a time. The page's records are looked up in the key's index."""
    PatientRow.insert_many([dict(id=uuid.uuid4(), source="bulk", source_id=f"B{i}",
                                 created_at=NOW, updated_at=NOW) for i in range(5000)]).execute()
    db.execute_sql("ANALYZE patient")
    from mpi.storage.patients import _page_sql

    keys, params = (PatientRow.select(PatientRow.pk).where(PatientRow.deleted_at.is_null(),
                                                           PatientRow.pk > 100)
                    .order_by(PatientRow.pk).limit(1001).sql())
    plan = "\n".join(r[0] for r in db.execute_sql("EXPLAIN " + _page_sql(True, keys), params))
    assert "Seq Scan on patient p" not in plan, plan
    assert "Index Scan using patient_pkey on patient p" in plan, plan
    page = PatientRepository().list_page(PatientFilter(), after=None, limit=1000)
    assert len(page.items) == 1000 and page.items[0].source_id == "B0"


def test_a_search_page_holds_what_the_records_documents_are_made_of(db):
    """An index rebuild reads records through ``search_page``, not as whole records: what
    it gives of each live record is the record's own ``to_dict()`` values for those
    fields, so every search document is the one the record makes; in key order, a share
    at a time (``through``), deleted records left out."""
    from mpi.search.schema import document

    repo = PatientRepository()
    variants: list[dict[str, Any]] = [
        {},
        {"birth_date": None, "birth_date_partial": "1967"},
        {"birth_date": None, "birth_date_partial": "1967-03", "gender": None},
        {"birth_date": None, "names": [{"family": "Nguyễn"}, {"given": ["Ann", "Lee"]}]},
        {"names": [{"use": "official", "family": "O'Brien-Smith", "given": ["Seán"],
                    "prefix": ["Dr"], "suffix": ["Jr"]},
                   {"use": "maiden", "family": "Kowalski", "given": []}],
         "deceased": True, "deceased_date": "2020-02-02", "marital_status": "M",
         "multiple_birth_order": 2},
        {"identifiers": [], "addresses": [], "telecom": []},
        {"identifiers": [{"system": MRN, "value": "MRN-7"},
                         {"system": "urn:x", "value": "x 1", "use": "old"}],
         "addresses": [{"city": "Lyon"}, {"line": ["1 A St", "Flat 2"], "district": "D",
                                          "state": "ST", "postal_code": "00001"}],
         "telecom": [{"system": "email", "value": "Ann@Example.org", "rank": 2},
                     {"system": "fax", "value": "(02) 5550 1234"}]},
    ]
    made = [repo.insert(_input(source_id=f"D{i}", **changes), patient_id=uuid.uuid4(),
                        now=NOW)
            for i, changes in enumerate(variants * 3)]
    rows = {r.id: r for r in PatientRow.select()}
    person = PersonRow.create(id=uuid.uuid4(), created_at=NOW, updated_at=NOW)
    PatientLinkRow.create(patient=rows[uuid.UUID(made[4].id)].pk, person=person.pk,
                          match_data={}, manual=False, how="auto", linked_at=NOW)
    PatientRow.update(deleted_at=NOW).where(PatientRow.id == uuid.UUID(made[5].id)).execute()

    whole = repo.list_page(PatientFilter(), after=None, limit=100).items
    fields, after = repo.search_page(after=None, limit=100)
    assert after is None and len(fields) == len(whole) == len(made) - 1
    assert made[5].id not in {f["id"] for f in fields}
    for own, record in zip(fields, whole, strict=True):
        full = record.to_dict()
        assert own == {k: full[k] for k in own}
        assert document(own) == document(full)
    assert fields[4]["person_id"] == str(person.id) and "person_id" not in fields[3]
    assert {"id", "version", "source", "source_id", "gender", "birth_date", "names",
            "identifiers", "addresses", "telecom"} <= fields[0].keys()
    assert fields[1]["birth_date_partial"] == "1967" and "birth_date" not in fields[1]
    assert fields[2]["birth_date_partial"] == "1967-03" and "gender" not in fields[2]

    keys = sorted(row.pk for row in rows.values())
    first, after = repo.search_page(after=None, limit=4, through=keys[6])
    second, end = repo.search_page(after=after, limit=4, through=keys[6])
    assert after == keys[3] and end is None
    assert [f["id"] for f in first + second] == [r.id for r in whole[:6]]
