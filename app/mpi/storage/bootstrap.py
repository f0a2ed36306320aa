"""Start-up: the embedded database migrates itself; PostgreSQL is migrated by ``mpi migrate``."""

from __future__ import annotations

import logging

from mpi.config import Settings
from mpi.storage import migrate
from mpi.storage.db import connection, make_database

log = logging.getLogger("mpi.migrate")


def run_migrations(settings: Settings) -> list[migrate.Migration]:
    """Apply every pending migration to the configured database."""
    db = make_database(settings)
    try:
        with connection(db):
            return migrate.apply(db, on_apply=lambda m: log.info(
                "applied migration %s_%s", m.version, m.name,
                extra={"migration": m.version}))
    finally:
        db.close_all() if hasattr(db, "close_all") else db.close()


def prepare_database(settings: Settings) -> None:
    """What ``serve`` does before it forks workers."""
    if settings.embedded:
        run_migrations(settings)
