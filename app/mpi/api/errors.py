"""Every error leaves as RFC 9457 ``application/problem+json``; domain errors map here, once."""

from __future__ import annotations

import functools
import json
import logging
import traceback
from collections.abc import Callable
from typing import Any

import falcon
import peewee
from playhouse.pool import MaxConnectionsExceeded

from mpi.domain import errors as domain
from mpi.fhir import FHIR_JSON, FHIR_XML
from mpi.fhir.outcome import operation_outcome
from mpi.fhir.xml import to_xml

log = logging.getLogger("mpi.api")

PROBLEM_JSON = "application/problem+json"


class Problem(falcon.HTTPError):
    """An HTTP error with RFC 9457 members and, optionally, one entry per bad field."""

    def __init__(self, status: str, title: str, detail: str | None = None, *,
                 errors: list[domain.FieldProblem] | None = None,
                 extra: dict[str, Any] | None = None, headers: dict[str, str] | None = None):
        super().__init__(status, title=title, description=detail, headers=headers)
        self.errors = errors or []
        self.extra = extra or {}


REALM = "mpi"


def _quoted(text: str) -> str:
    """An RFC 9110 quoted-string (RFC 6750 attribute values are quoted-strings)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def unauthorized(detail: str, *, invalid_token: bool) -> Problem:
    """401 with ``WWW-Authenticate: Bearer`` (RFC 6750 section 3): no token, or a bad one."""
    challenge = f"Bearer realm={_quoted(REALM)}"
    if invalid_token:
        challenge += f", error=\"invalid_token\", error_description={_quoted(detail)}"
    return Problem(falcon.HTTP_401, "Unauthorized", detail,
                   headers={"WWW-Authenticate": challenge})


def forbidden(detail: str, scope: str | None = None) -> Problem:
    """403; with ``scope``, the RFC 6750 insufficient_scope challenge naming it."""
    headers, extra = {}, {}
    if scope is not None:
        headers["WWW-Authenticate"] = (f"Bearer realm={_quoted(REALM)}, "
                                       f"error=\"insufficient_scope\", scope={_quoted(scope)}")
        extra["required_scope"] = scope
    return Problem(falcon.HTTP_403, "Forbidden", detail, extra=extra, headers=headers)


def _problem_body(req: falcon.Request, exc: falcon.HTTPError) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": "about:blank",
        "title": exc.title,
        "status": exc.status_code,
    }
    if exc.description:
        body["detail"] = exc.description
    body["instance"] = req.path
    request_id = getattr(req.context, "request_id", None)
    if request_id:
        body["request_id"] = request_id
    if isinstance(exc, Problem):
        if exc.errors:
            body["errors"] = [{"field": e.field, "reason": e.reason} for e in exc.errors]
        body.update(exc.extra)
    return body


FHIR_PREFIX = "/fhir"


#: Shows an error as a page (the steward's pages).
PageRenderer = Callable[[falcon.Request, falcon.Response, falcon.HTTPError], None]


def serialize_problem(req: falcon.Request, resp: falcon.Response, exc: falcon.HTTPError, *,
                      pages: dict[str, PageRenderer] | None = None) -> None:
    """Falcon error serializer: every HTTPError becomes problem+json, or under ``/fhir``
    a FHIR OperationOutcome, or under a prefix of ``pages`` a page."""
    for prefix, render in (pages or {}).items():
        if req.path == prefix or req.path.startswith(prefix + "/"):
            render(req, resp, exc)
            return
    if req.path == FHIR_PREFIX or req.path.startswith(FHIR_PREFIX + "/"):
        problems = exc.errors if isinstance(exc, Problem) else []
        detail = exc.description or exc.title
        extra = exc.extra if isinstance(exc, Problem) else {}
        outcome = operation_outcome(exc.status_code, detail, problems=problems,
                                    severity=extra.get("fhir_severity"),
                                    code=extra.get("fhir_code"))
        if getattr(req.context, "fhir_format", None) == "xml":
            resp.content_type = FHIR_XML
            resp.data = to_xml(outcome)
        else:
            resp.content_type = FHIR_JSON
            resp.data = json.dumps(outcome).encode()
        resp.append_header("Vary", "Accept")
        return
    resp.content_type = PROBLEM_JSON
    resp.data = json.dumps(_problem_body(req, exc)).encode()
    resp.append_header("Vary", "Accept")


def to_http(exc: domain.DomainError) -> Problem:
    """The one mapping from domain errors to HTTP."""
    if isinstance(exc, domain.InvalidInput):
        return Problem(falcon.HTTP_422, "Invalid request", exc.message, errors=exc.problems)
    if isinstance(exc, domain.MalformedInput):
        return Problem(falcon.HTTP_400, "Malformed request body", exc.message,
                       errors=exc.problems)
    if isinstance(exc, domain.NotFound):
        return Problem(falcon.HTTP_404, "Not found", exc.message)
    if isinstance(exc, domain.Deleted):
        return Problem(falcon.HTTP_410, "Gone", exc.message)
    if isinstance(exc, domain.Conflict):
        extra = {"existing_id": exc.existing_id} if exc.existing_id else {}
        return Problem(falcon.HTTP_409, "Conflict", exc.message,
                       errors=[domain.FieldProblem(exc.field, "already taken by a live record")],
                       extra=extra)
    if isinstance(exc, domain.Forbidden):
        return forbidden(exc.message, exc.scope)
    if isinstance(exc, domain.StateConflict):
        return Problem(falcon.HTTP_409, "Conflict", exc.message)
    if isinstance(exc, domain.ConcurrentChange):
        return Problem(falcon.HTTP_409, "Concurrent change", exc.message,
                       headers={"Retry-After": "1"})
    if isinstance(exc, domain.VersionMismatch):
        return Problem(falcon.HTTP_412, "Precondition failed", exc.message,
                       extra={"current_version": exc.current_version},
                       headers={"ETag": f'"{exc.current_version}"'})
    if isinstance(exc, domain.StorageUnavailable):
        return Problem(falcon.HTTP_503, "Service unavailable", exc.message,
                       headers={"Retry-After": "5"})
    return Problem(falcon.HTTP_400, "Bad request", exc.message)


def handle_domain_error(req: falcon.Request, resp: falcon.Response, exc: domain.DomainError,
                        params: dict[str, Any]) -> None:
    raise to_http(exc)


def handle_unavailable(req: falcon.Request, resp: falcon.Response, exc: Exception,
                       params: dict[str, Any]) -> None:
    log.warning("database unavailable: %s", type(exc).__name__,
                extra={"request_id": getattr(req.context, "request_id", None)})
    raise to_http(domain.StorageUnavailable("the database is unavailable"))


def handle_unexpected(req: falcon.Request, resp: falcon.Response, exc: Exception,
                      params: dict[str, Any]) -> None:
    """Catch-all: log the failure with its request id and return a bare 500.

    Only the exception's type and the stack frames are logged, never its
    message: a database error message can quote the patient data it choked on.
    """
    if isinstance(exc, falcon.HTTPError):  # pragma: no cover - falcon routes these elsewhere
        raise exc
    frames = "".join(traceback.format_tb(exc.__traceback__))
    log.error("unhandled %s\n%s", type(exc).__name__, frames,
              extra={"request_id": getattr(req.context, "request_id", None)})
    raise Problem(falcon.HTTP_500, "Internal server error")


def register(app: falcon.App, pages: dict[str, PageRenderer] | None = None) -> None:
    app.set_error_serializer(functools.partial(serialize_problem, pages=pages))
    app.add_error_handler(Exception, handle_unexpected)
    app.add_error_handler(domain.DomainError, handle_domain_error)
    app.add_error_handler(peewee.OperationalError, handle_unavailable)
    app.add_error_handler(peewee.InterfaceError, handle_unavailable)
    app.add_error_handler(MaxConnectionsExceeded, handle_unavailable)
