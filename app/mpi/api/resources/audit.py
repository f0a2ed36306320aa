"""The audit log, read back: per patient, most recent, per user."""

from __future__ import annotations

import falcon

from mpi.api.middleware import actor_for
from mpi.api.openapi import Param, operation
from mpi.api.resources.common import Query, send
from mpi.api.schemas import AuditEntryOut, AuditPage
from mpi.audit.log import AuditEntry
from mpi.services.patients import PatientService

PAGE_PARAMS = (
    Param("before", "query", "Cursor: entries older than this (next_cursor of the last page)",
          {"type": "integer", "minimum": 1, "maximum": 2**63 - 1}),
    Param("limit", "query", "Page size (1-500, default 100)",
          {"type": "integer", "minimum": 1, "maximum": 500}),
)


def _page(entries: list[AuditEntry], limit: int) -> AuditPage:
    items = [AuditEntryOut(**vars(e)) for e in entries]
    more = len(items) == limit and items
    return AuditPage(items=items, next_cursor=str(items[-1].id) if more else None)


def _paging(q: Query) -> tuple[int | None, int]:
    before = q.integer("before", minimum=1)
    limit = q.integer("limit", default=100, minimum=1, maximum=500) or 100
    return before, limit


class PatientAudit:
    def __init__(self, service: PatientService):
        self._service = service

    @operation("A patient record's audit trail", tags=["audit"], params=PAGE_PARAMS,
               responses={200: ("Entries, newest first", AuditPage),
                          404: ("No such record", None)})
    def on_get(self, req: falcon.Request, resp: falcon.Response, patient_id: object) -> None:
        """Deleted records keep their trail."""
        q = Query(req)
        before, limit = _paging(q)
        q.check()
        actor = actor_for(req)
        self._service.repository.require_exists(str(patient_id))
        entries = self._service.audit.for_entity("patient", str(patient_id), before=before,
                                                 limit=limit)
        self._service.record_access("audit:trail:read", actor, entity_type="patient",
                                    entity_id=str(patient_id))
        send(resp, _page(entries, limit), omit_nulls=False)


class RecentAudit:
    def __init__(self, service: PatientService):
        self._service = service

    @operation("The most recent audit entries", tags=["audit"], params=PAGE_PARAMS,
               responses={200: ("Entries, newest first", AuditPage)})
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        q = Query(req)
        before, limit = _paging(q)
        q.check()
        actor = actor_for(req)
        entries = self._service.audit.recent(before=before, limit=limit)
        self._service.record_access("audit:recent:read", actor, entity_type="audit",
                                    detail={"returned": len(entries)})
        send(resp, _page(entries, limit), omit_nulls=False)


class UserAudit:
    def __init__(self, service: PatientService):
        self._service = service

    @operation("What one user did", tags=["audit"],
               params=(Param("user_id", "query", "The acting user (X-User-ID)",
                             {"type": "string", "minLength": 1, "maxLength": 128,
                              "pattern": "^[!-~]+$"}, required=True),
                       *PAGE_PARAMS),
               responses={200: ("Entries, newest first", AuditPage),
                          400: ("user_id is missing", None)})
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        q = Query(req)
        user_id = q.text("user_id", required=True, max_length=128)
        before, limit = _paging(q)
        q.check()
        assert user_id is not None
        actor = actor_for(req)
        entries = self._service.audit.by_actor(user_id, before=before, limit=limit)
        self._service.record_access("audit:user:read", actor, entity_type="user",
                                    entity_id=user_id, detail={"returned": len(entries)})
        send(resp, _page(entries, limit), omit_nulls=False)
