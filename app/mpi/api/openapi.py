"""The OpenAPI document, generated from the routes and their responders.

Each responder carries an :class:`Operation` (``@operation(...)``); request
and response bodies are pydantic models, so the schemas in the document are
the ones the code validates and serializes with. Nothing here is a second,
hand-kept copy of the API.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from mpi.api.access import PUBLIC, declared_scope, declared_transaction
from mpi.domain.access import IHE_SCOPES, MPI_SCOPES, RESOURCES

F = TypeVar("F", bound=Callable[..., Any])

METHODS = ("get", "post", "put", "patch", "delete")

PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "RFC 9457 problem details",
    "required": ["type", "title", "status"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "instance": {"type": "string"},
        "request_id": {"type": "string"},
        "errors": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["field", "reason"],
                "properties": {"field": {"type": "string"}, "reason": {"type": "string"}},
            },
        },
        "existing_id": {"type": "string"},
        "required_scope": {"type": "string"},
        "current_version": {"type": "integer"},
    },
}


@dataclass(frozen=True)
class Param:
    name: str
    where: str  # "query" | "header" | "path"
    description: str
    schema: dict[str, Any] = field(default_factory=lambda: {"type": "string"})
    required: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "in": self.where, "description": self.description,
                "required": self.required or self.where == "path", "schema": self.schema}


Body = type[BaseModel] | None


@dataclass(frozen=True)
class Operation:
    summary: str
    responses: dict[int, tuple[str, Body]]
    tags: tuple[str, ...] = ()
    request: Body = None
    params: tuple[Param, ...] = ()
    response_headers: dict[int, tuple[str, ...]] = field(default_factory=dict)
    content_type: str = "application/json"


def operation(summary: str, *, responses: dict[int, tuple[str, Body]],
              tags: Iterable[str] = (), request: Body = None, params: Iterable[Param] = (),
              response_headers: dict[int, tuple[str, ...]] | None = None,
              content_type: str = "application/json") -> Callable[[F], F]:
    """Attach OpenAPI metadata to a responder (``on_get``, ``on_post``, ...)."""

    def mark(fn: F) -> F:
        fn.__openapi__ = Operation(  # type: ignore[attr-defined]
            summary=summary, responses=responses, tags=tuple(tags), request=request,
            params=tuple(params), response_headers=response_headers or {},
            content_type=content_type)
        return fn

    return mark


BEARER_SCHEME: dict[str, Any] = {
    "type": "http",
    "scheme": "bearer",
    "description": (
        "An API token (AUTH_MODE=token) or an OAuth 2.0 access token from the identity "
        "provider (AUTH_MODE=jwt). Each operation lists the scope it needs. SMART on FHIR "
        f"system scopes cover {' and '.join(RESOURCES)}: v2 system/Patient.cruds (any "
        "in-order subset of c, r, u, d, s), v1 system/Patient.read (= rs), .write (= cud); "
        "IHE IUA scopes, each the whole of one IHE transaction (an operation lists it as "
        "an alternative): " + "; ".join(f"{k}: {v}" for k, v in IHE_SCOPES.items()) + "; "
        "the MPI's own: " + "; ".join(f"{k}: {v}" for k, v in MPI_SCOPES.items()) + "."),
}

HEADER_DOCS = {
    "Location": "URL of the created resource",
    "ETag": "The record's version, quoted; send it back in If-Match",
    "X-Request-ID": "The request's id (the one sent, or a generated one)",
}

_CONVERTER_RE = re.compile(r"\{(\w+)(?::[^}]+)?\}")


def openapi_path(template: str) -> str:
    """``/patients/{patient_id:uuid}`` -> ``/patients/{patient_id}``."""
    return _CONVERTER_RE.sub(r"{\1}", template)


def responders(resource: object) -> dict[str, Operation]:
    """The documented responders of a resource, by HTTP method."""
    found = {}
    for method in METHODS:
        fn = getattr(resource, f"on_{method}", None)
        if fn is not None:
            meta = getattr(fn, "__openapi__", None)
            if meta is None:
                raise TypeError(f"{type(resource).__name__}.on_{method} has no @operation")
            if declared_scope(fn) is None:
                raise TypeError(f"{type(resource).__name__}.on_{method} declares no scope "
                                "(@requires(scope) or @public)")
            found[method] = meta
    return found


def build(routes: Iterable[tuple[str, object]], *, version: str) -> dict[str, Any]:
    """The OpenAPI 3.1 document for ``routes`` (template, resource) pairs."""
    routes = list(routes)
    modes: dict[type[BaseModel], str] = {}
    for _, resource in routes:
        for op in responders(resource).values():
            if op.request is not None:
                modes[op.request] = "validation"
            for _, model in op.responses.values():
                if model is not None:
                    modes.setdefault(model, "serialization")
    ordered = sorted(modes.items(), key=lambda item: item[0].__name__)
    _, defs = models_json_schema(
        [(model, mode) for model, mode in ordered],  # type: ignore[misc]
        ref_template="#/components/schemas/{model}")
    schemas = dict(sorted(defs.get("$defs", {}).items()))
    schemas["Problem"] = PROBLEM_SCHEMA

    paths: dict[str, Any] = {}
    for template, resource in routes:
        path_params = [Param(name, "path", f"{name.replace('_', ' ')}",
                             {"type": "string", "format": "uuid"} if ":uuid" in template
                             else {"type": "string"})
                       for name in re.findall(r"\{(\w+)", template)]
        item: dict[str, Any] = {}
        for method, op in responders(resource).items():
            fn = getattr(resource, f"on_{method}")
            doc = inspect.getdoc(fn) or ""
            entry: dict[str, Any] = {
                "summary": op.summary,
                "operationId": f"{type(resource).__name__}.{method}",
                "tags": list(op.tags),
                "parameters": [p.to_dict() for p in (*path_params, *op.params)],
                "responses": {},
            }
            if doc:
                entry["description"] = doc
            scope, transaction = declared_scope(fn), declared_transaction(fn)
            entry["security"] = [] if scope == PUBLIC else [
                {"bearer": [s]} for s in (scope, transaction) if s is not None]
            if op.request is not None:
                entry["requestBody"] = {"required": True, "content": {
                    "application/json": {"schema": _ref(op.request)}}}
            for status, (description, model) in sorted(_with_common(op, resource, method).items()):
                response: dict[str, Any] = {"description": description}
                if model is not None:
                    response["content"] = {op.content_type: {"schema": _ref(model)}}
                elif status >= 400:
                    response["content"] = {"application/problem+json": {
                        "schema": {"$ref": "#/components/schemas/Problem"}}}
                headers = op.response_headers.get(status, ())
                if headers:
                    response["headers"] = {h: {"description": HEADER_DOCS.get(h, h),
                                               "schema": {"type": "string"}} for h in headers}
                entry["responses"][str(status)] = response
            item[method] = entry
        paths[openapi_path(template)] = item

    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Master Patient Index",
            "version": version,
            "description": "Patient records from many sources under one enterprise identity. "
                           "Errors are RFC 9457 problem details (application/problem+json).",
        },
        "paths": dict(sorted(paths.items())),
        "components": {"schemas": schemas, "securitySchemes": {"bearer": BEARER_SCHEME}},
    }


def _with_common(op: Operation, resource: object, method: str
                 ) -> dict[int, tuple[str, Body]]:
    """The operation's responses plus those every such operation can give."""
    responses = dict(op.responses)
    if declared_scope(getattr(resource, f"on_{method}")) != PUBLIC:
        responses.setdefault(401, ("No bearer token, or an invalid one "
                                   "(WWW-Authenticate: Bearer says which)", None))
        responses.setdefault(403, ("The token lacks the scope this needs (required_scope "
                                   "names it), or the record's source is not the client's", None))
    if op.params or op.request is not None:
        responses.setdefault(400, ("A parameter or header is invalid; each one is named", None))
    if getattr(resource, "uses_database", True):
        responses.setdefault(503, ("The database is unavailable; retry after Retry-After", None))
    return responses


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{model.__name__}"}
