"""Enterprise identity over HTTP: persons (the PIX view), links, merges, the review queue,
and scoring a record without storing it."""

from __future__ import annotations

import uuid

import falcon

from mpi.api.middleware import actor_for
from mpi.api.openapi import Param, operation
from mpi.api.resources.common import Query, json_body, parse_json, send
from mpi.domain.errors import FieldProblem, InvalidInput
from mpi.domain.identity import (
    LinkHistoryPage,
    LinkRequest,
    MatchResult,
    Merge,
    MergeRequest,
    Person,
    ReviewDecision,
    ReviewItem,
    ReviewPage,
)
from mpi.domain.patient import PatientInput
from mpi.identity.service import IdentityService
from mpi.services.patients import PatientService

BASE = "/api/v1"
_GONE_OR_MISSING = {404: ("No such person", None)}
_CHANGE = {400: ("The body is not JSON", None), 415: ("The body is not application/json", None),
           422: ("A field is invalid; each one is named", None)}


def _uuid_field(value: str, field: str) -> str:
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise InvalidInput([FieldProblem(field, "must be a UUID")]) from None


class PersonItem:
    def __init__(self, identity: IdentityService):
        self._identity = identity

    @operation("A person: the linked records and every identifier across sources (PIX view)",
               tags=["identity"],
               responses={200: ("The person", Person), **_GONE_OR_MISSING})
    def on_get(self, req: falcon.Request, resp: falcon.Response, person_id: object) -> None:
        """A merged person answers with status "merged", ``merged_into`` and no records."""
        send(resp, self._identity.person(str(person_id), actor_for(req)))


class PatientPerson:
    def __init__(self, identity: IdentityService):
        self._identity = identity

    @operation("The person a record belongs to", tags=["identity"],
               responses={200: ("The person", Person), 404: ("No such record", None),
                          410: ("The record was deleted", None)})
    def on_get(self, req: falcon.Request, resp: falcon.Response, patient_id: object) -> None:
        send(resp, self._identity.person_of_patient(str(patient_id), actor_for(req)))


class PersonHistory:
    def __init__(self, identity: IdentityService):
        self._identity = identity

    @operation("A person's link history, newest first", tags=["identity"],
               params=(Param("before", "query", "Cursor: the previous page's next_cursor",
                             {"type": "integer", "minimum": 1}),
                       Param("limit", "query", "Page size (1-500, default 100)",
                             {"type": "integer", "minimum": 1, "maximum": 500})),
               responses={200: ("Entries", LinkHistoryPage), 400: ("Bad query", None),
                          **_GONE_OR_MISSING})
    def on_get(self, req: falcon.Request, resp: falcon.Response, person_id: object) -> None:
        q = Query(req)
        before = q.integer("before", minimum=1)
        limit = q.integer("limit", default=100, minimum=1, maximum=500) or 100
        q.check()
        send(resp, self._identity.history(str(person_id), actor_for(req), before=before,
                                          limit=limit), omit_nulls=False)


class PersonLinks:
    def __init__(self, identity: IdentityService):
        self._identity = identity

    @operation("Link a record to this person by hand (the engine will not move it again)",
               tags=["identity"], request=LinkRequest,
               responses={200: ("The person after the link", Person),
                          404: ("No such person or record", None),
                          409: ("The person was merged into another", None),
                          410: ("The record was deleted", None), **_CHANGE})
    @falcon.before(json_body)
    def on_post(self, req: falcon.Request, resp: falcon.Response, person_id: object) -> None:
        body = parse_json(LinkRequest, req.context.body)
        patient_id = _uuid_field(body.patient_id, "patient_id")
        send(resp, self._identity.link(str(person_id), patient_id, actor_for(req)))


class PersonLink:
    def __init__(self, identity: IdentityService):
        self._identity = identity

    @operation("Unlink a record: it becomes a person of its own and is kept apart from the "
               "records it left", tags=["identity"],
               responses={200: ("The record's new person", Person),
                          404: ("No such person or record", None),
                          409: ("The record is not linked to this person, or is its only "
                                "record", None)})
    def on_delete(self, req: falcon.Request, resp: falcon.Response, person_id: object,
                  patient_id: object) -> None:
        send(resp, self._identity.unlink(str(person_id), str(patient_id), actor_for(req)))


class PersonMerges:
    def __init__(self, identity: IdentityService):
        self._identity = identity

    @operation("Merge two persons (all records of merged_id move to survivor_id)",
               tags=["identity"], request=MergeRequest,
               responses={201: ("The merge (undo it with POST /merges/{id}/undo)", Merge),
                          404: ("No such person", None),
                          409: ("A person was already merged, or stewards kept them apart",
                                None), **_CHANGE},
               response_headers={201: ("Location",)})
    @falcon.before(json_body)
    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        body = parse_json(MergeRequest, req.context.body)
        survivor = _uuid_field(body.survivor_id, "survivor_id")
        merged = _uuid_field(body.merged_id, "merged_id")
        merge = self._identity.merge(survivor, merged, actor_for(req))
        resp.location = f"{BASE}/merges/{merge.id}"
        send(resp, merge, falcon.HTTP_201)


class MergeUndo:
    def __init__(self, identity: IdentityService):
        self._identity = identity

    @operation("Undo a merge: the merged person gets back the records it had",
               tags=["identity"],
               responses={200: ("The undone merge", Merge), 404: ("No such merge", None),
                          409: ("Already undone, or a later merge must be undone first",
                                None)})
    def on_post(self, req: falcon.Request, resp: falcon.Response, merge_id: object) -> None:
        send(resp, self._identity.undo_merge(str(merge_id), actor_for(req)))


class ReviewCollection:
    def __init__(self, identity: IdentityService):
        self._identity = identity

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
                person_id = _uuid_field(person_id, "person_id")
            except InvalidInput:
                q.problems.append(FieldProblem("person_id", "must be a UUID"))
        after = q.integer("cursor", minimum=0)
        limit = q.integer("limit", default=50, minimum=1, maximum=200) or 50
        q.check()
        send(resp, self._identity.reviews(actor_for(req),
                                          status=None if status == "all" else status,
                                          kind=kind, person_id=person_id, after=after,
                                          limit=limit), omit_nulls=False)


class ReviewItemResource:
    def __init__(self, identity: IdentityService):
        self._identity = identity

    @operation("One review, with the score's explanation", tags=["identity"],
               responses={200: ("The review", ReviewItem), 404: ("No such review", None)})
    def on_get(self, req: falcon.Request, resp: falcon.Response, review_id: object) -> None:
        send(resp, self._identity.review(str(review_id), actor_for(req)), omit_nulls=False)


class ReviewResolve:
    def __init__(self, identity: IdentityService):
        self._identity = identity

    @operation("Resolve a review: link, not_a_match or new_person", tags=["identity"],
               request=ReviewDecision,
               responses={200: ("The resolved review", ReviewItem),
                          404: ("No such review", None),
                          409: ("The review is already resolved, or a person involved was "
                                "merged", None), **_CHANGE})
    @falcon.before(json_body)
    def on_post(self, req: falcon.Request, resp: falcon.Response, review_id: object) -> None:
        body = parse_json(ReviewDecision, req.context.body)
        send(resp, self._identity.resolve_review(str(review_id), body.resolution,
                                                 actor_for(req)), omit_nulls=False)


class PatientMatch:
    def __init__(self, service: PatientService):
        self._service = service

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
        data = self._service.parse(req.context.body)
        send(resp, self._service.identity.match(data, actor_for(req), limit=limit))
