"""Liveness and readiness."""

from __future__ import annotations

import falcon
import peewee

from mpi import SERVICE_NAME, build_commit, version
from mpi.api.access import public
from mpi.api.openapi import operation
from mpi.api.resources.common import send
from mpi.domain.health import Health
from mpi.storage import migrate


class HealthResource:
    """Liveness: the process answers. Touches no database."""

    uses_database = False

    def __init__(self) -> None:
        self._body = Health(status="ok", service=SERVICE_NAME, version=version(),
                            commit=build_commit())

    @public
    @operation("Liveness", tags=["health"], responses={200: ("The process is alive", Health)})
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        send(resp, self._body)


class ReadyResource:
    """Readiness: the database answers and its schema is current."""

    uses_database = False  # connects by itself, so that failure is a 503 and not an error

    def __init__(self, db: peewee.Database):
        self._db = db
        self._version = version()
        self._shipped = migrate.discover()  # read and hashed once, not on every probe

    @public
    @operation("Readiness", tags=["health"], responses={
        200: ("Ready to serve", Health),
        503: ("The database is unreachable or its schema is not current", Health)})
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        checks: dict[str, str] = {}
        try:
            self._db.connect(reuse_if_open=True)
            try:
                self._db.execute_sql("SELECT 1")
                checks["database"] = "ok"
                waiting = migrate.pending(self._db, self._shipped, allow_newer=True)
                checks["migrations"] = (
                    "ok" if not waiting else f"{len(waiting)} pending: run mpi migrate")
                ahead = migrate.newer(self._db, self._shipped)
                if ahead:
                    # Ready all the same: expand/contract migrations keep the previous
                    # release working (rolling update, or the code rolled back).
                    checks["schema"] = (f"ahead of this release ({', '.join(ahead)}); "
                                        "fine during a rolling update or code rollback")
            finally:
                self._db.close()
        except (peewee.PeeweeException, migrate.MigrationError, ValueError) as exc:
            checks.setdefault("database", f"unavailable ({type(exc).__name__})")
            if isinstance(exc, migrate.MigrationError):
                checks["migrations"] = str(exc)
        ready = checks.get("database") == "ok" and checks.get("migrations") == "ok"
        send(resp, Health(status="ok" if ready else "unavailable", service=SERVICE_NAME,
                          version=self._version, commit=build_commit(), checks=checks),
             falcon.HTTP_200 if ready else falcon.HTTP_503)
