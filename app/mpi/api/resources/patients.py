"""Patient records: the collection and the item."""

from __future__ import annotations

import re

import falcon

from mpi.api.access import actor_for, requires
from mpi.api.errors import Problem
from mpi.api.openapi import Param, operation
from mpi.api.resources.common import Query, json_body, send
from mpi.domain.access import smart
from mpi.domain.errors import FieldProblem
from mpi.domain.patient import Patient, PatientInput, PatientPage
from mpi.patients.service import PatientService
from mpi.storage.patients import PatientFilter

BASE = "/api/v1/patients"
_VERSION_RE = re.compile(r"^[1-9][0-9]{0,8}$")

PAGE_PARAMS = (
    Param("cursor", "query", "Cursor: the previous page's next_cursor",
          {"type": "integer", "minimum": 0, "maximum": 2**63 - 1}),
    Param("limit", "query", "Page size (1-200, default 50)",
          {"type": "integer", "minimum": 1, "maximum": 200}),
)
IF_MATCH = Param("If-Match", "header", 'The ETag of the version you changed, e.g. "3"',
                 required=True)


def _etag(patient: Patient) -> str:
    return f'"{patient.version}"'


def _expected_version(req: falcon.Request, *, required: bool) -> int | None:
    """The version named by If-Match; None for ``*`` or, when optional, when absent."""
    header = req.get_header("If-Match")
    if header is None:
        if required:
            raise Problem(falcon.HTTP_428, "Precondition required",
                          "send If-Match with the ETag of the version you are changing")
        return None
    tags = req.if_match or []
    if len(tags) == 1 and tags[0] == "*":
        return None
    if len(tags) != 1:
        raise Problem(falcon.HTTP_400, "Bad request", "If-Match must carry exactly one ETag")
    tag = tags[0]
    # If-Match uses strong comparison (RFC 9110 13.1.1): a weak tag never matches.
    if getattr(tag, "is_weak", False) or not _VERSION_RE.match(str(tag)):
        raise Problem(falcon.HTTP_412, "Precondition failed",
                      "If-Match does not name a version of this record (send the ETag as "
                      'given, e.g. "3")')
    return int(str(tag))


class PatientCollection:
    def __init__(self, service: PatientService):
        self._service = service

    @requires(smart("Patient", "c"))
    @operation("Register a patient record", tags=["patients"], request=PatientInput,
               responses={201: ("Created", Patient),
                          400: ("The body is not JSON", None),
                          409: ("The source's record id or an identifier is taken", None),
                          413: ("The body is over 1 MiB", None),
                          415: ("The body is not application/json", None),
                          422: ("A field is invalid; each one is named", None)},
               response_headers={201: ("Location", "ETag")})
    @falcon.before(json_body)
    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        data = self._service.parse(req.context.body)
        patient = self._service.create(data, actor_for(req))
        resp.location = f"{BASE}/{patient.id}"
        resp.etag = _etag(patient)
        send(resp, patient, falcon.HTTP_201)

    @requires(smart("Patient", "s"))
    @operation("List patient records", tags=["patients"],
               params=(Param("source", "query", "Sending system"),
                       Param("source_id", "query", "The record id in the sending system "
                                                   "(with source)"),
                       Param("family", "query", "Family name (case and accents ignored)"),
                       Param("birth_date", "query", "Birth date, YYYY-MM-DD",
                             {"type": "string", "format": "date"}),
                       Param("identifier", "query", "value, or system|value"),
                       *PAGE_PARAMS),
               responses={200: ("A page of live records, oldest first", PatientPage),
                          400: ("A query parameter is invalid", None)})
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        """Every given filter must match. Deleted records are never listed."""
        q = Query(req)
        identifier = q.text("identifier", max_length=400)
        system = None
        if identifier and "|" in identifier:
            system, identifier = (part.strip() or None for part in identifier.split("|", 1))
            if identifier is None:
                q.problems.append(FieldProblem("identifier", "needs a value after the '|'"))
        filters = PatientFilter(source=q.text("source"), source_id=q.text("source_id"),
                                family=q.text("family"), birth_date=q.date("birth_date"),
                                identifier_system=system, identifier_value=identifier)
        after = q.integer("cursor", minimum=0)
        limit = q.integer("limit", default=50, minimum=1, maximum=200)
        q.check()
        page = self._service.list_page(filters, actor_for(req), after=after, limit=limit or 50)
        send(resp, PatientPage(items=page.items,
                               next_cursor=str(page.next_cursor) if page.next_cursor else None))


class PatientItem:
    def __init__(self, service: PatientService):
        self._service = service

    @requires(smart("Patient", "r"))
    @operation("Read a patient record", tags=["patients"],
               responses={200: ("The record", Patient), 404: ("No such record", None),
                          410: ("The record was deleted", None)},
               response_headers={200: ("ETag",)})
    def on_get(self, req: falcon.Request, resp: falcon.Response, patient_id: object) -> None:
        """Reading a record is recorded in the audit log."""
        patient = self._service.get(str(patient_id), actor_for(req))
        resp.etag = _etag(patient)
        send(resp, patient)

    @requires(smart("Patient", "u"))
    @operation("Replace a patient record", tags=["patients"], request=PatientInput,
               params=(IF_MATCH,),
               responses={200: ("The new version", Patient),
                          400: ("The body is not JSON", None),
                          404: ("No such record", None),
                          409: ("The source's record id or an identifier is taken", None),
                          410: ("The record was deleted", None),
                          412: ("The record changed since that version", None),
                          415: ("The body is not application/json", None),
                          422: ("A field is invalid; each one is named", None),
                          428: ("If-Match is missing", None)},
               response_headers={200: ("ETag",)})
    @falcon.before(json_body)
    def on_put(self, req: falcon.Request, resp: falcon.Response, patient_id: object) -> None:
        """The body replaces the record's content; id, version and timestamps are ignored."""
        expected = _expected_version(req, required=True)
        data = self._service.parse(req.context.body)
        patient = self._service.update(str(patient_id), data, actor_for(req),
                                       expected_version=expected)
        resp.etag = _etag(patient)
        send(resp, patient)

    @requires(smart("Patient", "d"))
    @operation("Delete a patient record", tags=["patients"],
               params=(Param("If-Match", "header", "Optional: delete only this version"),),
               responses={204: ("Deleted (kept for audit, never listed again)", None),
                          404: ("No such record", None),
                          410: ("Already deleted", None),
                          412: ("The record changed since that version", None)})
    def on_delete(self, req: falcon.Request, resp: falcon.Response, patient_id: object) -> None:
        """A soft delete: the record leaves every list and frees its source id and identifiers."""
        expected = _expected_version(req, required=False)
        self._service.delete(str(patient_id), actor_for(req), expected_version=expected)
        resp.status = falcon.HTTP_204
