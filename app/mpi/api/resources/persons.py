"""Persons over HTTP: a person (the PIX view) and its history; stewards' links, unlinks,
merges and undo. The review queue is in ``reviews``; scoring a record in ``match``."""

from __future__ import annotations

import uuid

import falcon

from mpi.api.access import actor_for, requires
from mpi.api.openapi import Param, operation
from mpi.api.resources.common import Query, json_body, parse_json, send
from mpi.domain.access import STEWARD, smart
from mpi.domain.errors import FieldProblem, InvalidInput
from mpi.domain.identity import LinkHistoryPage, LinkRequest, Merge, MergeRequest, Person
from mpi.identity.persons import PersonService
from mpi.identity.stewardship import StewardService

BASE = "/api/v1"
_GONE_OR_MISSING = {404: ("No such person", None)}
CHANGE_RESPONSES = {400: ("The body is not JSON", None),
                    415: ("The body is not application/json", None),
                    422: ("A field is invalid; each one is named", None)}


def uuid_field(value: str, field: str) -> str:
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise InvalidInput([FieldProblem(field, "must be a UUID")]) from None


class PersonItem:
    def __init__(self, persons: PersonService):
        self._persons = persons

    @requires(smart("Person", "r"))
    @operation("A person: the linked records and every identifier across sources (PIX view)",
               tags=["identity"],
               responses={200: ("The person", Person), **_GONE_OR_MISSING})
    def on_get(self, req: falcon.Request, resp: falcon.Response, person_id: object) -> None:
        """A merged person answers with status "merged", ``merged_into`` and no records."""
        send(resp, self._persons.person(str(person_id), actor_for(req)))


class PatientPerson:
    def __init__(self, persons: PersonService):
        self._persons = persons

    @requires(smart("Person", "r"))
    @operation("The person a record belongs to", tags=["identity"],
               responses={200: ("The person", Person), 404: ("No such record", None),
                          410: ("The record was deleted", None)})
    def on_get(self, req: falcon.Request, resp: falcon.Response, patient_id: object) -> None:
        send(resp, self._persons.person_of_patient(str(patient_id), actor_for(req)))


class PersonHistory:
    def __init__(self, persons: PersonService):
        self._persons = persons

    @requires(smart("Person", "r"))
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
        send(resp, self._persons.history(str(person_id), actor_for(req), before=before,
                                          limit=limit), omit_nulls=False)


class PersonLinks:
    def __init__(self, stewards: StewardService):
        self._stewards = stewards

    @requires(STEWARD)
    @operation("Link a record to this person by hand (the engine will not move it again)",
               tags=["identity"], request=LinkRequest,
               responses={200: ("The person after the link", Person),
                          404: ("No such person or record", None),
                          409: ("The person was merged into another", None),
                          410: ("The record was deleted", None), **CHANGE_RESPONSES})
    @falcon.before(json_body)
    def on_post(self, req: falcon.Request, resp: falcon.Response, person_id: object) -> None:
        body = parse_json(LinkRequest, req.context.body)
        patient_id = uuid_field(body.patient_id, "patient_id")
        send(resp, self._stewards.link(str(person_id), patient_id, actor_for(req)))


class PersonLink:
    def __init__(self, stewards: StewardService):
        self._stewards = stewards

    @requires(STEWARD)
    @operation("Unlink a record: it becomes a person of its own and is kept apart from the "
               "records it left", tags=["identity"],
               responses={200: ("The record's new person", Person),
                          404: ("No such person or record", None),
                          409: ("The record is not linked to this person, or is its only "
                                "record", None)})
    def on_delete(self, req: falcon.Request, resp: falcon.Response, person_id: object,
                  patient_id: object) -> None:
        send(resp, self._stewards.unlink(str(person_id), str(patient_id), actor_for(req)))


class PersonMerges:
    def __init__(self, stewards: StewardService):
        self._stewards = stewards

    @requires(STEWARD)
    @operation("Merge two persons (all records of merged_id move to survivor_id)",
               tags=["identity"], request=MergeRequest,
               responses={201: ("The merge (undo it with POST /merges/{id}/undo)", Merge),
                          404: ("No such person", None),
                          409: ("A person was already merged, or stewards kept them apart",
                                None), **CHANGE_RESPONSES},
               response_headers={201: ("Location",)})
    @falcon.before(json_body)
    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        body = parse_json(MergeRequest, req.context.body)
        survivor = uuid_field(body.survivor_id, "survivor_id")
        merged = uuid_field(body.merged_id, "merged_id")
        merge = self._stewards.merge(survivor, merged, actor_for(req))
        resp.location = f"{BASE}/merges/{merge.id}"
        send(resp, merge, falcon.HTTP_201)


class MergeUndo:
    def __init__(self, stewards: StewardService):
        self._stewards = stewards

    @requires(STEWARD)
    @operation("Undo a merge: the merged person gets back the records it had",
               tags=["identity"],
               responses={200: ("The undone merge", Merge), 404: ("No such merge", None),
                          409: ("Already undone, or a later merge must be undone first",
                                None)})
    def on_post(self, req: falcon.Request, resp: falcon.Response, merge_id: object) -> None:
        send(resp, self._stewards.undo_merge(str(merge_id), actor_for(req)))
