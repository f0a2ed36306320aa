"""Liveness, readiness, request ids."""

from __future__ import annotations

import falcon.testing

from mpi import version
from mpi.api.app import create_app
from mpi.config import Settings
from mpi.storage.db import database_for
from mpi.wiring import build


def test_health_needs_no_database(client):
    resp = client.simulate_get("/api/v1/health")
    assert resp.status_code == 200
    assert resp.json["status"] == "ok"
    assert resp.json["service"] == "mpi"
    assert resp.json["version"] == version()


def test_ready_checks_database_and_migrations(client):
    resp = client.simulate_get("/api/v1/health/ready")
    assert resp.status_code == 200, resp.text
    checks = resp.json["checks"]
    assert (checks["database"], checks["migrations"]) == ("ok", "ok")
    # No index was built here: readiness says so, and (SEARCH_READY_MAX_LAG=0) stays ready.
    assert checks["search"].startswith("unavailable: the search index is being built")


def test_ready_is_503_when_the_database_is_unreachable():
    settings = Settings.defaults(
        database_url="postgresql://mpi:mpi@127.0.0.1:1/mpi", database_timeout=1.0)
    app = create_app(build(settings, db=database_for(settings.database, timeout=1.0)))
    client = falcon.testing.TestClient(app)
    resp = client.simulate_get("/api/v1/health/ready")
    assert resp.status_code == 503
    assert resp.json["status"] == "unavailable"
    assert resp.json["checks"]["database"].startswith("unavailable")
    assert client.simulate_get("/api/v1/health").status_code == 200
    # Any other route that needs the database is a 503 problem too, never a 500.
    down = client.simulate_get("/api/v1/patients")
    assert down.status_code == 503
    assert down.headers["content-type"] == "application/problem+json"
    assert down.headers["retry-after"] == "5"


def test_ready_is_503_while_migrations_are_pending(tmp_path):
    settings = Settings.defaults(database_url=f"sqlite:///{tmp_path}/fresh.db")
    client = falcon.testing.TestClient(create_app(build(settings)))
    resp = client.simulate_get("/api/v1/health/ready")
    assert resp.status_code == 503
    assert "pending" in resp.json["checks"]["migrations"]


def test_request_id_is_echoed_or_generated(client):
    echoed = client.simulate_get("/api/v1/health", headers={"X-Request-ID": "abc-123"})
    assert echoed.headers["x-request-id"] == "abc-123"
    generated = client.simulate_get("/api/v1/health")
    assert len(generated.headers["x-request-id"]) == 32
    unsafe = client.simulate_get("/api/v1/health", headers={"X-Request-ID": "bad id\n"})
    assert unsafe.headers["x-request-id"] != "bad id\n"


def test_problem_carries_request_id(client):
    resp = client.simulate_get("/api/v1/nowhere", headers={"X-Request-ID": "r-1"})
    assert resp.status_code == 404
    assert resp.json["request_id"] == "r-1"
    assert resp.headers["content-type"] == "application/problem+json"


def test_ready_while_the_database_is_ahead_of_this_release(client, db):
    """A newer release migrated the database (rolling update, or the code rolled back):
    this release keeps serving and says so."""
    from datetime import datetime

    from mpi.storage.models import SchemaMigrationRow

    with SchemaMigrationRow.bind_ctx(db):
        SchemaMigrationRow.create(version="9999", name="newer", checksum="0" * 64,
                                  applied_at=datetime(2026, 1, 1))
    try:
        resp = client.simulate_get("/api/v1/health/ready")
    finally:  # the session's PostgreSQL outlives this test
        with SchemaMigrationRow.bind_ctx(db):
            SchemaMigrationRow.delete().where(SchemaMigrationRow.version == "9999").execute()
    assert resp.status_code == 200, resp.text
    assert resp.json["checks"]["migrations"] == "ok"
    assert resp.json["checks"]["schema"].startswith("ahead of this release (9999)")
