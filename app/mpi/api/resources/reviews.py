"""The review queue over HTTP: list, read and resolve the engine's doubtful cases."""

from __future__ import annotations

import falcon

from mpi.api.access import actor_for, requires
from mpi.api.openapi import Param, operation
from mpi.api.resources.common import Query, json_body, parse_json, send
from mpi.api.resources.persons import CHANGE_RESPONSES, uuid_field
from mpi.domain.access import STEWARD
from mpi.domain.errors import FieldProblem, InvalidInput
from mpi.domain.identity import ReviewDecision, ReviewItem, ReviewPage
from mpi.identity.stewardship import StewardService


class ReviewCollection:
    def __init__(self, stewards: StewardService):
        self._stewards = stewards

    @requires(STEWARD)
    @operation("The review queue", tags=["identity"],
               params=(Param("status", "query", "open (default), resolved or all",
                             {"type": "string", "enum": ["open", "resolved", "all"]}),
                       Param("kind", "query", "possible_match or possible_duplicate",
                             {"type": "string",
                              "enum": ["possible_match", "possible_duplicate"]}),
                       Param("person_id", "query", "Reviews that involve this person",
                             {"type": "string", "format": "uuid"}),
                       Param("cursor", "query", "The previous page's next_cursor",
                             {"type": "integer", "minimum": 0}),
                       Param("limit", "query", "Page size (1-200, default 50)",
                             {"type": "integer", "minimum": 1, "maximum": 200})),
               responses={200: ("Reviews, oldest first", ReviewPage),
                          400: ("A query parameter is invalid", None),
                          404: ("No such person", None)})
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        q = Query(req)
        status = q.text("status") or "open"
        if status not in ("open", "resolved", "all"):
            q.problems.append(FieldProblem("status", "must be open, resolved or all"))
        kind = q.text("kind")
        if kind is not None and kind not in ("possible_match", "possible_duplicate"):
            q.problems.append(FieldProblem("kind",
                                           "must be possible_match or possible_duplicate"))
        person_id = q.text("person_id", max_length=64)
        if person_id is not None:
            try:
                person_id = uuid_field(person_id, "person_id")
            except InvalidInput:
                q.problems.append(FieldProblem("person_id", "must be a UUID"))
        after = q.integer("cursor", minimum=0)
        limit = q.integer("limit", default=50, minimum=1, maximum=200) or 50
        q.check()
        send(resp, self._stewards.reviews(actor_for(req),
                                          status=None if status == "all" else status,
                                          kind=kind, person_id=person_id, after=after,
                                          limit=limit), omit_nulls=False)


class ReviewItemResource:
    def __init__(self, stewards: StewardService):
        self._stewards = stewards

    @requires(STEWARD)
    @operation("One review, with the score's explanation", tags=["identity"],
               responses={200: ("The review", ReviewItem), 404: ("No such review", None)})
    def on_get(self, req: falcon.Request, resp: falcon.Response, review_id: object) -> None:
        send(resp, self._stewards.review(str(review_id), actor_for(req)), omit_nulls=False)


class ReviewResolve:
    def __init__(self, stewards: StewardService):
        self._stewards = stewards

    @requires(STEWARD)
    @operation("Resolve a review: link, not_a_match or new_person", tags=["identity"],
               request=ReviewDecision,
               responses={200: ("The resolved review", ReviewItem),
                          404: ("No such review", None),
                          409: ("The review is already resolved, or a person involved was "
                                "merged", None), **CHANGE_RESPONSES})
    @falcon.before(json_body)
    def on_post(self, req: falcon.Request, resp: falcon.Response, review_id: object) -> None:
        body = parse_json(ReviewDecision, req.context.body)
        send(resp, self._stewards.resolve_review(str(review_id), body.resolution,
                                                 actor_for(req), comment=body.comment),
             omit_nulls=False)
