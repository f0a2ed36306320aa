"""Liveness and readiness."""

from __future__ import annotations

import falcon
import peewee

from mpi import SERVICE_NAME, build_commit, version
from mpi.api.access import public
from mpi.api.openapi import operation
from mpi.api.resources.common import send
from mpi.domain.errors import StorageUnavailable
from mpi.domain.health import Health
from mpi.search.service import SearchService
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
    """Readiness: the database answers and its schema is current; and how complete search
    is (``checks.search``), which fails readiness when ``search_max_lag`` (seconds,
    SEARCH_READY_MAX_LAG) is set and the index lags more, or is being rebuilt."""

    uses_database = False  # connects by itself, so that failure is a 503 and not an error

    def __init__(self, db: peewee.Database, search: SearchService | None = None,
                 search_max_lag: float = 0.0):
        self._db = db
        self._search = search
        self._max_lag = search_max_lag
        self._version = version()
        self._shipped = migrate.discover()  # read and hashed once, not on every probe

    @public
    @operation("Readiness", tags=["health"], responses={
        200: ("Ready to serve", Health),
        503: ("The database is unreachable or its schema is not current (or, with "
              "SEARCH_READY_MAX_LAG, search lags more than that)", Health)})
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        checks: dict[str, str] = {}
        search_ok = False
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
                search_ok = self._check_search(checks)
            finally:
                self._db.close()
        except (peewee.PeeweeException, migrate.MigrationError, ValueError) as exc:
            checks.setdefault("database", f"unavailable ({type(exc).__name__})")
            if isinstance(exc, migrate.MigrationError):
                checks["migrations"] = str(exc)
        ready = (checks.get("database") == "ok" and checks.get("migrations") == "ok"
                 and (not self._max_lag or search_ok))
        send(resp, Health(status="ok" if ready else "unavailable", service=SERVICE_NAME,
                          version=self._version, commit=build_commit(), checks=checks),
             falcon.HTTP_200 if ready else falcon.HTTP_503)

    def _check_search(self, checks: dict[str, str]) -> bool:
        """Say in ``checks`` how complete search is; whether it is within the lag allowed."""
        if self._search is None:
            return True
        try:
            fresh = self._search.freshness()
        except StorageUnavailable:
            checks["search"] = "unknown (database unavailable)"
            return False
        if fresh.state == "ok":
            checks["search"] = "ok"
            return True
        if fresh.state == "unavailable":
            checks["search"] = f"unavailable: {fresh.reason}"
            return False
        checks["search"] = (f"behind: {fresh.behind_events} change(s) not yet indexed, the "
                            f"oldest {fresh.behind_seconds:.1f} s old")
        return fresh.behind_seconds is not None and fresh.behind_seconds <= self._max_lag
