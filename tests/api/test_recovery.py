"""The pool recovers when PostgreSQL drops its connections (failover, restart)."""

from __future__ import annotations

import falcon.testing
import psycopg

from mpi.api.app import create_app
from mpi.config import Settings
from mpi.storage.db import close_database, database_for
from mpi.wiring import build
from tests.helpers import patient


def test_requests_recover_after_connections_are_killed(postgres_url, tmp_path):
    settings = Settings.defaults(database_url=postgres_url, database_max_connections=2)
    db = database_for(settings.database, max_connections=2)
    client = falcon.testing.TestClient(create_app(build(settings, db=db)))
    created = client.simulate_post("/api/v1/patients",
                                   json=patient(source_id="recover-1", identifiers=[]))
    assert created.status_code == 201, created.text

    with psycopg.connect(postgres_url, autocommit=True) as admin:
        killed = admin.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE application_name = 'mpi' AND pid <> pg_backend_pid()").fetchone()
    assert killed and killed[0] >= 1

    statuses = [client.simulate_get(f"/api/v1/patients/{created.json['id']}").status_code
                for _ in range(3)]
    # At most the first request meets the dead connection, and it is a clean 503.
    assert statuses[0] in (200, 503)
    assert statuses[1:] == [200, 200]
    close_database(db)
