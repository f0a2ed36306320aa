"""The audit log, read back: per patient, most recent, per user."""

from __future__ import annotations

import falcon

from mpi.api.access import actor_for, requires
from mpi.api.openapi import Param, operation
from mpi.api.resources.common import Query, send
from mpi.audit.trail import AuditTrail
from mpi.domain.access import AUDIT
from mpi.domain.audit import AuditPage

PAGE_PARAMS = (
    Param("before", "query", "Cursor: entries older than this (next_cursor of the last page)",
          {"type": "integer", "minimum": 1, "maximum": 2**63 - 1}),
    Param("limit", "query", "Page size (1-500, default 100)",
          {"type": "integer", "minimum": 1, "maximum": 500}),
)


def _paging(q: Query) -> tuple[int | None, int]:
    before = q.integer("before", minimum=1)
    limit = q.integer("limit", default=100, minimum=1, maximum=500) or 100
    return before, limit


class PatientAudit:
    def __init__(self, trail: AuditTrail):
        self._trail = trail

    @requires(AUDIT)
    @operation("A patient record's audit trail", tags=["audit"], params=PAGE_PARAMS,
               responses={200: ("Entries, newest first", AuditPage),
                          404: ("No such record", None)})
    def on_get(self, req: falcon.Request, resp: falcon.Response, patient_id: object) -> None:
        """Deleted records keep their trail."""
        q = Query(req)
        before, limit = _paging(q)
        q.check()
        send(resp, self._trail.for_patient(str(patient_id), actor_for(req), before=before,
                                           limit=limit), omit_nulls=False)


class RecentAudit:
    def __init__(self, trail: AuditTrail):
        self._trail = trail

    @requires(AUDIT)
    @operation("The most recent audit entries", tags=["audit"], params=PAGE_PARAMS,
               responses={200: ("Entries, newest first", AuditPage)})
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        q = Query(req)
        before, limit = _paging(q)
        q.check()
        send(resp, self._trail.recent(actor_for(req), before=before, limit=limit),
             omit_nulls=False)


class UserAudit:
    def __init__(self, trail: AuditTrail):
        self._trail = trail

    @requires(AUDIT)
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
        send(resp, self._trail.by_user(user_id, actor_for(req), before=before, limit=limit),
             omit_nulls=False)
