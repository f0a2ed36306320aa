"""What every request needs: a request id, an access-log line and its metrics, a database
connection."""

from __future__ import annotations

import logging
import re
import time
import uuid
from typing import Any

import falcon
import peewee
from playhouse.pool import MaxConnectionsExceeded

from mpi import metrics

access_log = logging.getLogger("mpi.access")

_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


class RequestContext:
    """Request id (``X-Request-ID`` accepted or generated, echoed back) and the access log.

    The log line names the route template, never the path or query string:
    those carry patient ids and search terms.
    """

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        req.context.started = time.perf_counter()
        incoming = req.get_header("X-Request-ID")
        req.context.request_id = (incoming if incoming and _REQUEST_ID_RE.match(incoming)
                                  else uuid.uuid4().hex)
        resp.set_header("X-Request-ID", req.context.request_id)

    def process_response(self, req: falcon.Request, resp: falcon.Response, resource: Any,
                         req_succeeded: bool) -> None:
        started = getattr(req.context, "started", None)
        elapsed = time.perf_counter() - started if started else None
        duration_ms = round(elapsed * 1000, 2) if elapsed is not None else None
        route = req.uri_template or "unmatched"
        method = req.method if req.method in _METHODS else "other"
        metrics.HTTP_REQUESTS.labels(route, method, str(resp.status_code)).inc()
        if elapsed is not None:
            metrics.HTTP_DURATION.labels(route, method).observe(elapsed)
        access_log.info(
            "%s %s %s", req.method, req.uri_template or "-", resp.status_code,
            extra={
                "request_id": getattr(req.context, "request_id", None),
                "method": req.method,
                "route": req.uri_template or "-",
                "status": resp.status_code,
                "duration_ms": duration_ms,
            },
        )


class DatabaseConnection:
    """Borrow a pooled connection for resources that use the database; return it after.

    A resource that does not touch the database (liveness, the OpenAPI
    document) sets ``uses_database = False`` and never waits on the pool.
    """

    def __init__(self, db: peewee.Database):
        self._db = db

    def process_resource(self, req: falcon.Request, resp: falcon.Response, resource: Any,
                         params: dict[str, Any]) -> None:
        if resource is not None and getattr(resource, "uses_database", True):
            try:
                with metrics.pool_wait():
                    self._db.connect(reuse_if_open=True)
            except MaxConnectionsExceeded:
                metrics.POOL_EXHAUSTED.inc()
                raise
            req.context.db_connected = True
            metrics.pool_in_use(self._db)

    def process_response(self, req: falcon.Request, resp: falcon.Response, resource: Any,
                         req_succeeded: bool) -> None:
        if getattr(req.context, "db_connected", False) and not self._db.is_closed():
            if self._db.in_transaction():  # pragma: no cover - atomic() always closes its own
                self._db.rollback()
            self._db.close()
            metrics.pool_in_use(self._db)
