"""Migrations: ordered, recorded, idempotent, and they build exactly what the models describe."""

from __future__ import annotations

import ast
import importlib
import re
import threading
from datetime import datetime
from importlib import resources

import peewee
import pytest
from playhouse.schema_diff import diff_models

from mpi.config import parse_database_url
from mpi.storage import migrate
from mpi.storage.db import close_database, connection, database_for
from mpi.storage.models import ALL_MODELS, SchemaMigrationRow
from tests.helpers import plan_as_run


def _columns(db: peewee.Database, table: str, schema: str | None = None) -> list[tuple]:
    return sorted((c.name, _type(db, c.data_type), c.null, c.primary_key)
                  for c in db.get_columns(table, schema))


def _type(db: peewee.Database, declared: str) -> str:
    """The column's type; on SQLite without a varchar's length, which SQLite ignores (a
    migration widening a column changes nothing there, and rewrites no table for it)."""
    declared = declared.lower()
    return re.sub(r"^varchar\(\d+\)$", "varchar", declared) if isinstance(
        db, peewee.SqliteDatabase) else declared


def _indexes(db: peewee.Database, table: str, schema: str | None = None) -> list[tuple]:
    return sorted((tuple(i.columns), i.unique, i.name, _where(i.sql))
                  for i in db.get_indexes(table, schema))


def _where(sql: str | None) -> str:
    """The predicate of a partial index, normalised (schema-qualified names removed)."""
    sql = (sql or "").lower().replace("reference.", "").replace("public.", "")
    return sql.split(" where ", 1)[1].strip() if " where " in sql else ""


def test_migrated_database_matches_the_models(db):
    diff = diff_models(db, list(ALL_MODELS))
    assert not diff, str(diff)


def test_migrated_schema_equals_schema_created_from_models(db, backend, tmp_path,
                                                           postgres_server):
    """Column types, nullability, keys and index names: not only names (diff_models' scope)."""
    schema = None
    if backend == "sqlite":
        reference = database_for(parse_database_url(f"sqlite:///{tmp_path}/ref.db"))
    else:
        with connection(db):
            db.execute_sql("DROP SCHEMA IF EXISTS reference CASCADE")
            db.execute_sql("CREATE SCHEMA reference")
        reference = database_for(parse_database_url(
            postgres_server.url + "?options=-csearch_path%3Dreference"))
        schema = "reference"
    with connection(reference):
        with reference.bind_ctx(ALL_MODELS):
            reference.create_tables(ALL_MODELS)
        for model in ALL_MODELS:
            table = model._meta.table_name
            assert _columns(db, table) == _columns(reference, table, schema), table
            assert _indexes(db, table) == _indexes(reference, table, schema), table
            assert _columns(db, table), table
    close_database(reference)
    if backend == "postgresql":
        db.execute_sql("DROP SCHEMA reference CASCADE")


def test_migrations_are_recorded_and_idempotent(db):
    shipped = migrate.discover()
    assert [m.version for m in shipped] == sorted(m.version for m in shipped)
    assert migrate.pending(db) == []
    assert migrate.apply(db) == []
    rows = db.execute_sql("SELECT version, checksum FROM schema_migration ORDER BY version")
    assert [(v, c) for v, c in rows] == [(m.version, m.checksum) for m in shipped]


def test_a_changed_migration_is_refused(db):
    shipped = migrate.discover()
    tampered = [migrate.Migration(m.version, m.name, "0" * 64, m.module) for m in shipped]
    with pytest.raises(migrate.MigrationError, match="changed after it was applied"):
        migrate.pending(db, tampered)


# The checksums the released texts of 0002 and 0003 had, before this release corrected
# 0002's docstring and copied 0003's key function into it (same effect, new bytes).
RELEASED = {"0002": "e2e87803644c1164a26ce6094896fbfe82ef360cffe5ba2734c96916dd589a58",
            "0003": "fad35d6568ebc00133fcb11cf07a25ed03bcc3d781ae7f60964c9f7882c3ae41"}


def test_a_database_that_applied_an_earlier_equivalent_text_is_accepted(db):
    """Databases migrated by the previous release start: the edited migrations list the
    released texts' checksums in SUPERSEDES. Any other checksum is still refused."""
    for version, checksum in RELEASED.items():
        db.execute_sql("UPDATE schema_migration SET checksum = "
                       + ("%s" if isinstance(db, peewee.PostgresqlDatabase) else "?")
                       + " WHERE version = "
                       + ("%s" if isinstance(db, peewee.PostgresqlDatabase) else "?"),
                       (checksum, version))
    assert migrate.pending(db) == []
    assert migrate.apply(db) == []
    shipped = {m.version: m for m in migrate.discover()}
    for version, checksum in RELEASED.items():
        assert shipped[version].checksum != checksum
        assert shipped[version].supersedes == {checksum}
    other = [migrate.Migration(m.version, m.name, m.checksum, m.module)
             for m in shipped.values()]  # the same files without SUPERSEDES
    with pytest.raises(migrate.MigrationError, match="0002_identity changed after"):
        migrate.pending(db, other)


def test_supersedes_must_be_a_tuple_of_digests():
    assert migrate._supersedes(b"SUPERSEDES = ('" + b"a" * 64 + b"',)\n") == {"a" * 64}
    assert migrate._supersedes(b"X = 1\n") == frozenset()
    with pytest.raises(migrate.MigrationError, match="sha256"):
        migrate._supersedes(b"SUPERSEDES = ('not a digest',)\n")


def test_a_migration_unknown_to_this_release_is_refused(db):
    with pytest.raises(migrate.MigrationError, match="does not ship"):
        migrate.pending(db, [])


def test_partial_unique_indexes_only_bind_live_records(db):
    db.execute_sql("SELECT 1")
    names = {i.name: i for i in db.get_indexes("patient")}
    assert names["patient_source_live_uniq"].unique
    assert "deleted_at" in names["patient_source_live_uniq"].sql.lower()
    # Identifiers are evidence for matching, not unique (migration 0002).
    idents = {i.name: i for i in db.get_indexes("patient_identifier")}
    assert not idents["patient_identifier_system_value"].unique


def test_concurrent_first_start_applies_each_migration_once(tmp_path, postgres_server):
    """Several processes starting at once (gunicorn on a fresh database) do not collide."""
    targets = [f"sqlite:///{tmp_path}/race.db"]
    base = database_for(parse_database_url(postgres_server.url))
    with connection(base):
        base.execute_sql("DROP DATABASE IF EXISTS race")
        base.execute_sql("CREATE DATABASE race")
    close_database(base)
    targets.append(postgres_server.url.rsplit("/", 1)[0] + "/race")
    for url in targets:
        applied: list[list[str]] = []
        errors: list[BaseException] = []

        def run(url: str = url, applied: list = applied, errors: list = errors) -> None:
            db = database_for(parse_database_url(url), max_connections=1, timeout=30)
            try:
                with connection(db):
                    applied.append([m.version for m in migrate.apply(db)])
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)
            finally:
                close_database(db)

        threads = [threading.Thread(target=run) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        assert sorted(v for versions in applied for v in versions) == [
            m.version for m in migrate.discover()], url


def test_a_database_ahead_of_the_release_is_accepted_where_it_is_safe(db):
    """After a newer release migrated the database, this one still serves (rolling update,
    code rollback): pending() with allow_newer accepts it; migrating does not."""
    shipped = migrate.discover()
    with SchemaMigrationRow.bind_ctx(db):
        SchemaMigrationRow.create(version="9999", name="from_the_future", checksum="0" * 64,
                                  applied_at=datetime(2026, 1, 1))
    try:
        assert migrate.pending(db, shipped, allow_newer=True) == []
        assert migrate.newer(db, shipped) == ["9999"]
        with pytest.raises(migrate.MigrationError, match="does not ship"):
            migrate.pending(db, shipped)
        with pytest.raises(migrate.MigrationError, match="does not ship"):
            migrate.apply(db, shipped)
    finally:  # the session's PostgreSQL outlives this test
        with SchemaMigrationRow.bind_ctx(db):
            SchemaMigrationRow.delete().where(SchemaMigrationRow.version == "9999").execute()


def test_migrations_import_nothing_from_the_application():
    """A migration is frozen: it carries copies of what it needs (models, 0003's key
    function), so later changes to the application never change what it does."""
    for migration in migrate.discover():
        path = resources.files(migrate.PACKAGE) / f"{migration.version}_{migration.name}.py"
        tree = ast.parse(path.read_text(encoding="utf-8"))
        imported = [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
                    for alias in node.names]
        imported += [node.module or "" for node in ast.walk(tree)
                     if isinstance(node, ast.ImportFrom) and not node.level]
        relative = [node for node in ast.walk(tree)
                    if isinstance(node, ast.ImportFrom) and node.level]
        assert not relative, migration.name
        assert not [m for m in imported if m.split(".")[0] == "mpi"], migration.name


def test_0003_recomputes_every_live_records_blocking_keys(tmp_path, postgres_server,
                                                          monkeypatch):
    """Blocking keys are derived: a release that changes the key function re-keys the
    records already stored (0003: the SSN keys), from their stored matching form, with the
    key function of its own release (test_migration_0003_keys checks that one)."""
    from mpi.storage.models import BlockingKeyRow, PatientLinkRow, PatientRow, PersonRow

    rekey = importlib.import_module(f"{migrate.PACKAGE}.0003_ssn_blocking_keys")
    monkeypatch.setattr(rekey, "PAGE", 2)  # several pages from a handful of records
    base = database_for(parse_database_url(postgres_server.url))
    with connection(base):
        base.execute_sql("DROP DATABASE IF EXISTS rekey")
        base.execute_sql("CREATE DATABASE rekey")
    close_database(base)
    data = {"record_id": "r1", "source": "ehr", "given_name": "Ada", "family_name": "Obi",
            "birth_date": "1980-05-07", "postal_code": "02139", "ssn": "123-45-6789",
            "identifiers": []}
    expected = ["a:19800507:02139", "d:19800507:AD", "d:19800507:OB", "g:19800507:ada",
                "g:19800507:adaline", "g:19800507:adeline", "g:19800507:andriane",
                "n:AD:OB:1980", "p:01239:AD", "p:01239:OB",
                "s01:123456", "s02:123789", "s12:456789"]
    other = {**data, "record_id": "r4", "given_name": "Bill", "phone": "+1 617 555 0199",
             "ssn": None, "identifiers": [["http://hospital.example/mrn", "MRN-7"]]}
    now = datetime(2026, 1, 1)
    for url in (f"sqlite:///{tmp_path}/rekey.db",
                postgres_server.url.rsplit("/", 1)[0] + "/rekey"):
        db = database_for(parse_database_url(url))
        shipped = migrate.discover()
        upto = [m for m in shipped if m.version <= "0002"]
        with connection(db), db.bind_ctx(ALL_MODELS):
            migrate.apply(db, upto)
            pks = []
            for i, (deleted, match) in enumerate([(None, data), (now, data), (None, {}),
                                                  (None, other)]):
                pk = PatientRow.insert(
                    id=f"00000000-0000-4000-8000-00000000000{i}", source="ehr",
                    source_id=f"r{i}", active=True, deceased=False, version=1,
                    created_at=now, updated_at=now, deleted_at=deleted).execute()
                person = PersonRow.insert(id=f"00000000-0000-4000-9000-00000000000{i}",
                                          created_at=now, updated_at=now).execute()
                PatientLinkRow.insert(patient=pk, person=person, match_data=match,
                                      manual=False, how="new", linked_at=now).execute()
                pks.append(pk)
            # Keys from the old key function (the SSN with one digit deleted, ...).
            BlockingKeyRow.insert_many([{"key": k, "patient": pks[0]}
                                        for k in ("s:123456789", "s-:12456789")]).execute()
            migrate.apply(db, shipped)

            def stored(pk: int) -> list[str]:
                return sorted(row.key for row in BlockingKeyRow.select(BlockingKeyRow.key)
                              .where(BlockingKeyRow.patient == pk))

            assert stored(pks[0]) == expected, url
            assert stored(pks[3]) == rekey.blocking_keys(other), url
            assert {"t:6175550199", "i:http://hospital.example/mrn:mrn-7"} <= set(
                stored(pks[3])), url
            others = BlockingKeyRow.select().where(BlockingKeyRow.patient << pks[1:3]).count()
            assert others == 0, url  # deleted record, and a record with no matching form
        close_database(db)


def _new_databases(name: str, tmp_path, postgres_server) -> tuple[str, str]:
    """URLs of a new SQLite file and a new PostgreSQL database, both called ``name``."""
    base = database_for(parse_database_url(postgres_server.url))
    with connection(base):
        base.execute_sql(f"DROP DATABASE IF EXISTS {name}")
        base.execute_sql(f"CREATE DATABASE {name}")
    close_database(base)
    return (f"sqlite:///{tmp_path}/{name}.db",
            postgres_server.url.rsplit("/", 1)[0] + f"/{name}")


def test_0019_gives_records_without_a_birth_date_their_undated_name_key(tmp_path,
                                                                         postgres_server):
    """From 0019 a record with a birth date looks up the family name and initial among
    the records without one (``u:``): the records stored before get that key, derived
    from their ``f:`` key; a record with a ``d:`` key (a birth date) gets none."""
    from mpi.storage.models import BlockingKeyRow, PatientRow

    now = datetime(2026, 1, 1)
    held = {"dated": ["d:19710309:MACAN", "f:MACAN:t", "m:MACAN:TANDAV"],
            "undated": ["f:MACAN:t", "l:4 quarry lane:MACAN"], "nameless": ["t:5550199"]}
    for url in _new_databases("undated", tmp_path, postgres_server):
        db = database_for(parse_database_url(url))
        shipped = migrate.discover()
        with connection(db), db.bind_ctx(ALL_MODELS):
            migrate.apply(db, [m for m in shipped if m.version <= "0018"])
            pks = {}
            for i, (name, keys) in enumerate(held.items()):
                pks[name] = PatientRow.insert(
                    id=f"00000000-0000-4000-8000-00000000000{i}", source="ehr",
                    source_id=name, active=True, deceased=False, version=1,
                    created_at=now, updated_at=now).execute()
                BlockingKeyRow.insert_many([{"key": k, "patient": pks[name]}
                                            for k in keys]).execute()
            migrate.apply(db, shipped)
            after = {name: sorted(row.key for row in BlockingKeyRow.select().where(
                BlockingKeyRow.patient == pk)) for name, pk in pks.items()}
        close_database(db)
        assert after == {**held, "undated": sorted([*held["undated"], "u:MACAN:t"])}, url


def test_0022_copies_each_records_birth_date_beside_its_names(tmp_path, postgres_server):
    """From 0022 each name carries its record's birth date (for the family-name and
    birth-date search): the names stored before get it, the first day of a month or year
    known alone included; a record without one leaves its names without."""
    from datetime import date

    from mpi.storage.models import PatientRow

    now = datetime(2026, 1, 1)
    records = {"day": (date(1971, 3, 9), None), "year": (date(1971, 1, 1), 4),
               "none": (None, None)}
    for url in _new_databases("born", tmp_path, postgres_server):
        db = database_for(parse_database_url(url))
        shipped = migrate.discover()
        with connection(db), db.bind_ctx(ALL_MODELS):
            migrate.apply(db, [m for m in shipped if m.version <= "0021"])
            for i, (name, (born, precision)) in enumerate(records.items()):
                pk = PatientRow.insert(
                    id=f"00000000-0000-4000-8000-00000000000{i}", source="ehr",
                    source_id=name, active=True, deceased=False, version=1, birth_date=born,
                    birth_date_precision=precision, created_at=now, updated_at=now).execute()
                for position, family in enumerate(("macan", "ross")):
                    db.execute_sql(
                        "INSERT INTO patient_name (patient_pk, position, family, family_norm, "
                        f"given, prefix, suffix) VALUES ({db.param}, {db.param}, {db.param}, "
                        f"{db.param}, '[]', '[]', '[]')", (pk, position, family, family))
            migrate.apply(db, shipped)
            rows = db.execute_sql(
                "SELECT p.source_id, n.birth_date FROM patient_name n JOIN patient p "
                "ON p.pk = n.patient_pk ORDER BY p.source_id, n.position").fetchall()
        close_database(db)
        copied = {(name, date.fromisoformat(str(d)) if d is not None else None)
                  for name, d in rows}
        assert len(rows) == 6 and copied == {(n, born) for n, (born, _) in records.items()}, url


def _prepared_statements() -> dict[str, tuple[str, tuple]]:
    """Every statement the service prepares whose plan could walk a table (PostgreSQL text,
    ``%s`` placeholders), with values to explain it with."""
    from mpi.storage.identity import KEY_ROWS_SQL, MEMBERS_SQL
    from mpi.storage.patients import _LIVE_BY_SOURCE, PERSON_RECORDS_SQL, _one_record_sql

    some = "00000000-0000-4000-8000-000000000001"
    by_source, _ = _LIVE_BY_SOURCE._build().sql()
    return {"candidate keys": (KEY_ROWS_SQL, (["x:1"], 2000)),
            "record by source": (by_source, ("ehr", "r1")),
            "candidates' records": (MEMBERS_SQL, ([1, 2],)),
            "persons' records": (PERSON_RECORDS_SQL, ([some],)),
            "one record": (_one_record_sql(True), (some,))}


def _walks(plan: dict) -> list[str]:
    """The scans in an EXPLAIN (FORMAT JSON) plan that read a whole table or index."""
    found = []
    if plan["Node Type"] == "Seq Scan":
        found.append(f"Seq Scan on {plan['Relation Name']}")
    if plan["Node Type"] in ("Index Scan", "Index Only Scan", "Bitmap Index Scan") \
            and "Index Cond" not in plan:
        found.append(f"{plan['Node Type']} of all {plan['Index Name']}")
    for child in plan.get("Plans", ()):
        found += _walks(child)
    return found


@pytest.mark.parametrize("state", ["as migrated", "analyzed empty", "vacuumed"])
def test_a_fresh_database_plans_the_prepared_look_ups_on_the_indexes(postgres_server, state):
    """The migrations analyze only the tables holding rows: statistics of an empty table say
    it stays empty, and a fresh database planned the candidate look-up, prepared once per
    connection while its tables were a page or two, as a scan of the whole blocking-key
    table per key, and kept that plan as they grew (10 ms a look-up after 1,000 records).
    With no statistics at all, PostgreSQL takes "deleted_at IS NULL" to hold for 0.5 % of
    the rows, and the persons' records were planned as a walk over every live record (20
    ms at 26,000 records; autovacuum's first ANALYZE, up to a minute later, ended it), as
    were the candidates' records in a copy of a registry with its statistics removed (40
    ms). Whatever the statistics, fresh ones, none, or those of
    the empty tables (a database analyzed before its first record), every prepared
    statement's generic plan (a prepared statement's from its 6th run) walks the indexes
    from the values it is given."""
    name = "fresh_plans_" + state.split()[0]
    base = database_for(parse_database_url(postgres_server.url))
    with connection(base):
        base.execute_sql(f"DROP DATABASE IF EXISTS {name}")
        base.execute_sql(f"CREATE DATABASE {name}")
    close_database(base)
    db = database_for(parse_database_url(postgres_server.url.rsplit("/", 1)[0] + "/" + name),
                      max_connections=1)
    with connection(db), db.bind_ctx(ALL_MODELS):
        statements = _prepared_statements()
        migrate.apply(db, migrate.discover())
        counted = dict(db.execute_sql("SELECT relname, reltuples FROM pg_class").fetchall())
        for table in ("blocking_key", "patient_link", "patient", "patient_name", "person"):
            assert counted[table] == -1, table  # never analyzed
        assert counted["schema_migration"] > 0
        tables = [t for t in db.get_tables() if t != "schema_migration"]
        for table in tables:  # autovacuum stays away while the test runs
            db.execute_sql(f'ALTER TABLE "{table}" SET (autovacuum_enabled = false)')
        if state == "analyzed empty":
            db.execute_sql("ANALYZE")
        for sql in (  # the first registrations, before any statistics of them
            "INSERT INTO patient (id, source, source_id, active, deceased, version, "
            "created_at, updated_at) SELECT gen_random_uuid(), 'ehr', 'r' || g, true, "
            "false, 1, now(), now() FROM generate_series(1, 20000) g",
            "INSERT INTO person (id, created_at, updated_at) "
            "SELECT gen_random_uuid(), now(), now() FROM generate_series(1, 20000)",
            "INSERT INTO patient_link (patient_pk, person_pk, match_data, manual, how, "
            "linked_at) SELECT pk, pk, '{}', false, 'new', now() FROM patient",
            "INSERT INTO blocking_key (key, patient_pk) SELECT 'x:' || pk, pk FROM patient",
            "INSERT INTO patient_name (patient_pk, position, use, family, given, prefix, "
            "suffix, family_norm) SELECT pk, 0, 'official', 'Ng', '[\"Ann\"]', '[]', '[]', "
            "'ng' FROM patient",
            "INSERT INTO patient_identifier (patient_pk, position, system, value) "
            "SELECT pk, 0, 'urn:x', 'v' || pk FROM patient",
            "INSERT INTO patient_address (patient_pk, position, line, city) "
            "SELECT pk, 0, '[\"1 Main St\"]', 'Leeds' FROM patient",
            "INSERT INTO patient_telecom (patient_pk, position, system, value) "
            "SELECT pk, 0, 'phone', '555' || pk FROM patient",
            "SET plan_cache_mode = force_generic_plan"):
            db.execute_sql(sql)
        if state == "vacuumed":  # row counts and the visibility map, still no statistics
            for table in tables:
                db.execute_sql(f'VACUUM "{table}"')
        walked = {}
        for i, (label, (sql, values)) in enumerate(statements.items()):
            (plan,) = plan_as_run(db, f"s{i}", sql, values, explain="EXPLAIN (FORMAT JSON)")
            walked[label] = _walks(plan[0]["Plan"])
        for table in tables:
            db.execute_sql(f'ALTER TABLE "{table}" RESET (autovacuum_enabled)')
    close_database(db)
    assert walked == {label: [] for label in statements}
