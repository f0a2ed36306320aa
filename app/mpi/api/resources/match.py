"""``POST /api/v1/patients/match``: score a record against the registry without storing it."""

from __future__ import annotations

import falcon

from mpi.api.access import actor_for, requires
from mpi.api.openapi import Param, operation
from mpi.api.resources.common import Query, json_body, send
from mpi.domain.access import smart
from mpi.domain.identity import MatchResult
from mpi.domain.patient import PatientInput
from mpi.identity.match import MatchService


class PatientMatch:
    def __init__(self, matching: MatchService):
        self._matching = matching

    @requires(smart("Patient", "s"))
    @operation("Score a record against the registry without storing it", tags=["identity"],
               request=PatientInput,
               params=(Param("limit", "query", "Candidates to return (1-50, default 10)",
                             {"type": "integer", "minimum": 1, "maximum": 50}),),
               responses={200: ("Ranked candidate persons with probability, grade and "
                                "explanation", MatchResult),
                          400: ("The body is not JSON, or a query parameter is invalid",
                                None),
                          413: ("The body is over 1 MiB", None),
                          415: ("The body is not application/json", None),
                          422: ("A field is invalid; each one is named", None)})
    @falcon.before(json_body)
    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        q = Query(req)
        limit = q.integer("limit", default=10, minimum=1, maximum=50) or 10
        q.check()
        data = self._matching.parse(req.context.body)
        send(resp, self._matching.match(data, actor_for(req), limit=limit))
