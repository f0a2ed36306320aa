"""Migrations: ordered, recorded, idempotent, and they build exactly what the models describe."""

from __future__ import annotations

import threading
from datetime import datetime

import peewee
import pytest
from playhouse.schema_diff import diff_models

from mpi.config import parse_database_url
from mpi.storage import migrate
from mpi.storage.db import connection, database_for
from mpi.storage.models import ALL_MODELS, SchemaMigrationRow


def _columns(db: peewee.Database, table: str, schema: str | None = None) -> list[tuple]:
    return sorted((c.name, c.data_type.lower(), c.null, c.primary_key)
                  for c in db.get_columns(table, schema))


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
    reference.close_all()
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
    base.close_all()
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
                db.close_all()

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
