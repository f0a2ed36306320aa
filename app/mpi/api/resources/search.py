"""Patient search: ``GET /api/v1/patients/search``."""

from __future__ import annotations

import json

import falcon

from mpi.api.access import actor_for, requires
from mpi.api.errors import Problem
from mpi.api.openapi import Param, operation
from mpi.api.resources.common import Query
from mpi.domain.access import smart
from mpi.domain.errors import FieldProblem
from mpi.domain.search import SearchHit, SearchPage
from mpi.search.index import SearchUnavailable
from mpi.search.query import MAX_FUZZY, MAX_QUERY_LENGTH, QuerySyntaxError, Shortcuts
from mpi.search.service import SearchRequest, SearchService

MAX_OFFSET = 10_000

SEARCH_PARAMS = (
    Param("q", "query", "Free text across names, identifiers, birth date, address, telecom and "
          "source. AND / OR / NOT (upper case), parentheses, \"phrases\", field:value "
          "(family, given, name, birth_date, birth_year, identifier, phone, email, address, "
          "source, source_id, gender, person_id), prefix*, fuzzy~N",
          {"type": "string", "maxLength": MAX_QUERY_LENGTH}),
    Param("name", "query", "Every word must match one of the patient's names (fuzzily, "
          "phonetically or as part of a name)"),
    Param("family", "query", "Family name words (fuzzy)"),
    Param("given", "query", "Given name words (fuzzy)"),
    Param("birth_year", "query", "Year of birth", {"type": "integer", "minimum": 1850,
                                                   "maximum": 9999}),
    Param("birth_date", "query", "Birth date, YYYY-MM-DD", {"type": "string", "format": "date"}),
    Param("identifier", "query", "An identifier value (punctuation and case ignored)"),
    Param("phone", "query", "A phone number (or its last 7 or 10 digits) or e-mail address"),
    Param("source", "query", "Only records from this sending system"),
    Param("fuzzy", "query", "Edit distance for name words (default: SEARCH_FUZZY_DISTANCE)",
          {"type": "integer", "minimum": 0, "maximum": MAX_FUZZY}),
    Param("offset", "query", f"Results to skip (0-{MAX_OFFSET})",
          {"type": "integer", "minimum": 0, "maximum": MAX_OFFSET}),
    Param("limit", "query", "Page size (1-100, default 20)",
          {"type": "integer", "minimum": 1, "maximum": 100}),
)


class PatientSearch:
    def __init__(self, search: SearchService):
        self._search = search

    @requires(smart("Patient", "s"))
    @operation("Search patient records", tags=["patients"], params=SEARCH_PARAMS,
               responses={200: ("Live records, best match first, with relevance scores",
                                SearchPage),
                          400: ("The query cannot be read, or a parameter is invalid; the "
                                "problem is named", None),
                          503: ("The search index is being built and this search needs it "
                                "(an exact identifier, family name or birth date search is "
                                "answered from the database meanwhile); retry after "
                                "Retry-After", None)})
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        """Give q, the shortcut parameters, or both (every one given must match).

        Results come from the search index, which follows the change log and
        is current within about a second; ``index_cursor`` is the last change-log
        event it holds. Each record is read from the database when returned,
        so deleted records never appear. Searching is audited.
        """
        q = Query(req)
        text = q.text("q", max_length=MAX_QUERY_LENGTH)
        shortcuts = Shortcuts(
            name=q.text("name"), family=q.text("family"), given=q.text("given"),
            birth_year=q.integer("birth_year", minimum=1850, maximum=9999),
            birth_date=q.date("birth_date"), identifier=q.text("identifier", max_length=400),
            phone=q.text("phone", max_length=256), source=q.text("source"))
        fuzzy = q.integer("fuzzy", minimum=0, maximum=MAX_FUZZY)
        offset = q.integer("offset", default=0, minimum=0, maximum=MAX_OFFSET) or 0
        limit = q.integer("limit", default=20, minimum=1, maximum=100) or 20
        q.check()
        request = SearchRequest(q=text, shortcuts=shortcuts, offset=offset, limit=limit,
                                fuzzy=fuzzy)
        try:
            outcome = self._search.search(request, actor_for(req))
        except QuerySyntaxError as exc:
            raise Problem(falcon.HTTP_400, "Bad request", "the search query cannot be read",
                          errors=[FieldProblem(exc.field, exc.reason)]) from None
        except SearchUnavailable as exc:
            raise Problem(falcon.HTTP_503, "Service unavailable", str(exc),
                          headers={"Retry-After": "2"}) from None
        end = offset + len(outcome.items) + outcome.dropped
        page = SearchPage(
            items=[SearchHit(score=f.hit.score, person_id=f.hit.person_id, patient=f.patient)
                   for f in outcome.items],
            total=outcome.total, offset=offset, limit=limit,
            next_offset=end if end < outcome.total + outcome.dropped else None,
            index_cursor=None if outcome.cursor is None else str(outcome.cursor),
            index_complete=outcome.complete, index_behind_events=outcome.behind_events,
            index_behind_seconds=outcome.behind_seconds, served_by=outcome.served_by)
        body = page.model_dump(mode="json")
        # The page's own members are always present (null included); each record is
        # shown exactly as GET /patients/{id} shows it (absent values left out).
        for item, found in zip(body["items"], outcome.items, strict=True):
            item["patient"] = found.patient.to_dict()
        resp.content_type = falcon.MEDIA_JSON
        resp.data = json.dumps(body).encode()
