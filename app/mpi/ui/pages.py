"""The steward's pages under ``/ui/``: server-rendered HTML over the same services as the
API (every action audited, in the change feed, one transaction), no JavaScript needed.

Every page declares ``@requires(STEWARD)`` like an API route; :class:`Page` tells the
access control where its credential is (the sealed session cookie, not an
``Authorization`` header) and where to send a browser that has none (the sign-in page).
Every form carries the session's CSRF token; every answer is ``Cache-Control: no-store``
(the pages show patient data) and framed by a strict Content-Security-Policy.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import falcon
import jinja2

from mpi.api.access import actor_for, public, requires
from mpi.api.errors import Problem
from mpi.api.resources.common import has_control_characters
from mpi.auth import Unauthenticated
from mpi.domain.access import STEWARD
from mpi.domain.errors import FieldProblem, StateConflict
from mpi.search.index import SearchUnavailable
from mpi.search.query import MAX_QUERY_LENGTH, QuerySyntaxError, Shortcuts
from mpi.search.service import SearchRequest
from mpi.ui import views
from mpi.ui.oidc import OidcClient, SignInFailed
from mpi.ui.session import Sessions, csrf_ok
from mpi.wiring import Services

HERE = Path(__file__).parent
STATIC = HERE / "static"
UI = "/ui"
STATIC_ROUTE = f"{UI}/static"
KINDS = {"possible_match": "Possible match", "possible_duplicate": "Possible duplicate"}
RESOLUTIONS = {"link": "Same person", "not_a_match": "Not the same person",
               "new_person": "New person"}
#: Score bands of the queue's filter: label -> [min, max).
BANDS = {"": ("any score", None, None), "high": ("0.90 and above", 0.90, None),
         "middle": ("0.70 to 0.90", 0.70, 0.90), "low": ("below 0.70", None, 0.70)}
AGES = {"": "any age", "1": "older than a day", "7": "older than a week",
        "30": "older than a month"}
SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "Pragma": "no-cache",
    "Content-Security-Policy": ("default-src 'self'; img-src 'self' data:; style-src 'self'; "
                                "script-src 'self'; form-action 'self'; "
                                "frame-ancestors 'none'; base-uri 'none'"),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}

_templates = jinja2.Environment(
    loader=jinja2.FileSystemLoader(str(HERE / "templates")),
    autoescape=jinja2.select_autoescape(["html"]), undefined=jinja2.StrictUndefined,
    trim_blocks=True, lstrip_blocks=True)
_templates.filters["pct"] = lambda p: f"{100 * float(p):.1f}%"
_templates.filters["when"] = lambda d: d.strftime("%Y-%m-%d %H:%M UTC") if d else ""
_templates.filters["bits"] = lambda w: f"{float(w):+.2f}"


def bad(field: str, reason: str) -> Problem:
    """A query parameter or form field a page cannot use: 400, naming it."""
    return Problem(falcon.HTTP_400, "Bad request", f"{field}: {reason}",
                   errors=[FieldProblem(field, reason)])


class Pages:
    """What every page shares: the services, the session, rendering."""

    def __init__(self, services: Services):
        self.s = services
        settings = services.settings
        self.sessions = Sessions(settings.ui_session_secret, hours=settings.ui_session_hours)
        self.auth_mode = settings.auth_mode
        from mpi.auth.oauth import BearerTokens

        tokens = services.authenticator
        self.oidc = (OidcClient(settings, tokens)
                     if isinstance(tokens, BearerTokens) and settings.ui_oidc_client_id
                     else None)

    def render(self, req: falcon.Request, resp: falcon.Response, template: str, *,
               status: str | int = falcon.HTTP_200, **context: Any) -> None:
        session = self.sessions.ensure(req, resp)
        principal = getattr(req.context, "principal", None)
        resp.status = status
        resp.content_type = falcon.MEDIA_HTML
        for name, value in SECURITY_HEADERS.items():
            resp.set_header(name, value)
        resp.text = _templates.get_template(template).render(
            csrf=session.csrf, user=session.user or (principal.client_id if principal else None),
            auth_mode=self.auth_mode, ui=UI, kinds=KINDS, resolutions=RESOLUTIONS,
            request_id=getattr(req.context, "request_id", ""), **context)

    def form(self, req: falcon.Request) -> dict[str, str]:
        """The posted form, after its CSRF token is checked (403 otherwise)."""
        media = req.get_media(default_when_empty={}) if req.content_length else {}
        if not isinstance(media, dict):
            raise falcon.HTTPUnsupportedMediaType(description="send a form")
        fields = {k: (v[-1] if isinstance(v, list) else v) for k, v in media.items()}
        if not csrf_ok(req, self.sessions.read(req), fields.get("csrf")):
            raise falcon.HTTPForbidden(title="Forbidden",
                                       description="the form has expired or did not come "
                                                   "from this page; reload it and try again")
        return fields


class Page:
    """A page's resource: its credential is the session's, and a browser without a usable
    one is sent to sign in (see :class:`mpi.api.access.AccessControl`)."""

    def __init__(self, pages: Pages):
        self.p = pages

    def credential(self, req: falcon.Request) -> str | None:
        """The session's token; who signed in becomes the actor (``actor_for``)."""
        session = self.p.sessions.read(req)
        if session is None:
            return None
        req.context.steward = session.user
        return session.token

    def signin(self, req: falcon.Request) -> str:
        here = req.relative_uri if req.method == "GET" else f"{UI}/reviews"
        return f"{UI}/signin?{urlencode({'next': here})}"


def _see_other(location: str) -> falcon.HTTPSeeOther:
    return falcon.HTTPSeeOther(location, headers={"Cache-Control": "no-store"})


def _safe_next(value: str | None) -> str:
    """Only a path under /ui/ (never another site) to go to after signing in."""
    if value and value.startswith(f"{UI}/") and not value.startswith("//") \
            and "\\" not in value and "\r" not in value and "\n" not in value:
        return value
    return f"{UI}/reviews"


def _uuid(value: str | None, field: str) -> str:
    try:
        return str(uuid.UUID(value or ""))
    except ValueError:
        raise bad(field, "must be a UUID") from None


# --- sign-in -------------------------------------------------------------------------------------


class SignIn(Page):
    # (AUTH_MODE=token: checking a pasted token reads the token table.)

    @public
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        target = _safe_next(req.get_param("next"))
        if self.p.auth_mode == "none":
            raise _see_other(target)
        if self.p.oidc is not None:
            redirect_uri = f"{req.prefix}{UI}/signin/callback"
            try:
                started = self.p.oidc.start(redirect_uri, target)
            except SignInFailed as exc:
                self.p.render(req, resp, "signin.html", status=falcon.HTTP_502,
                              error=str(exc), next=target, oidc=True)
                return
            self.p.sessions.write(req, resp, self.p.sessions.new(flow=started.flow))
            raise falcon.HTTPSeeOther(started.url, headers={"Cache-Control": "no-store"})
        self.p.render(req, resp, "signin.html", error=None, next=target, oidc=False)

    @public
    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        """AUTH_MODE=token (or jwt without an identity provider client): a pasted token."""
        fields = self.p.form(req)
        target = _safe_next(fields.get("next"))
        token = (fields.get("token") or "").strip()
        try:
            principal = self.p.s.authenticator.authenticate(token or None)
        except Unauthenticated as exc:
            self.p.render(req, resp, "signin.html", status=falcon.HTTP_401,
                          error=f"That token was not accepted: {exc.detail}.", next=target,
                          oidc=False)
            return
        if not principal.may(STEWARD):
            self.p.render(req, resp, "signin.html", status=falcon.HTTP_403,
                          error=f"That token does not grant {STEWARD}, which these pages "
                                "need.", next=target, oidc=False)
            return
        self.p.sessions.write(req, resp, self.p.sessions.new(token=token,
                                                             user=principal.client_id))
        raise _see_other(target)


class SignInCallback(Page):
    uses_database = False

    @public
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        session = self.p.sessions.read(req)
        if self.p.oidc is None or session is None:
            raise _see_other(f"{UI}/signin")
        params = {k: str(v) for k, v in req.params.items() if isinstance(v, str)}
        try:
            token, user, principal = self.p.oidc.finish(session.flow, params)
        except SignInFailed as exc:
            self.p.sessions.clear(req, resp)
            self.p.render(req, resp, "signin.html", status=falcon.HTTP_401, error=str(exc),
                          next=f"{UI}/reviews", oidc=True)
            return
        if not principal.may(STEWARD):
            self.p.sessions.clear(req, resp)
            self.p.render(req, resp, "signin.html", status=falcon.HTTP_403,
                          error=f"Your account is not granted {STEWARD}, which these pages "
                                "need.", next=f"{UI}/reviews", oidc=True)
            return
        self.p.sessions.write(req, resp, self.p.sessions.new(token=token, user=user))
        raise _see_other(_safe_next(session.flow.get("next")))


class SignOut(Page):
    uses_database = False

    @public
    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        self.p.form(req)
        self.p.sessions.clear(req, resp)
        raise _see_other(f"{UI}/signin" if self.p.auth_mode != "none" else f"{UI}/reviews")


class Home(Page):
    uses_database = False

    @public
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        raise _see_other(f"{UI}/reviews")


# --- the queue and a review ----------------------------------------------------------------------


class Queue(Page):
    @requires(STEWARD)
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        kind = req.get_param("kind") or ""
        if kind and kind not in KINDS:
            raise bad("kind", "must be possible_match or possible_duplicate")
        source = (req.get_param("source") or "").strip()
        if len(source) > 100:
            raise bad("source", "must be at most 100 characters")
        band = req.get_param("band") or ""
        if band not in BANDS:
            raise bad("band", f"must be one of {', '.join(b for b in BANDS if b)}")
        age = req.get_param("age") or ""
        if age not in AGES:
            raise bad("age", "must be 1, 7 or 30 (days)")
        after = req.get_param("after")
        if after is not None and not (after.isdigit() and len(after) < 19):
            raise bad("after", "must be a page cursor")
        now = self.p.s.work.clock()
        _, low, high = BANDS[band]
        page = self.p.s.stewards.queue(
            actor_for(req), kind=kind or None, source=source or None,
            opened_before=now - timedelta(days=int(age)) if age else None,
            min_probability=low, max_probability=high,
            after=int(after) if after else None, limit=50)
        filters = {"kind": kind, "source": source, "band": band, "age": age}
        more = (f"{UI}/reviews?{urlencode({**filters, 'after': page.next_cursor})}"
                if page.next_cursor else None)
        self.p.render(req, resp, "queue.html", page=page, filters=filters, bands=BANDS,
                      ages=AGES, now=now, age_text=_age, next_page=more)


def _age(now: datetime, then: datetime) -> str:
    seconds = max((now.replace(tzinfo=None) - then.replace(tzinfo=None)).total_seconds(), 0)
    if seconds < 3600:
        return f"{int(seconds // 60)} min"
    if seconds < 86400:
        return f"{int(seconds // 3600)} h"
    return f"{int(seconds // 86400)} d"


class Review(Page):
    @requires(STEWARD)
    def on_get(self, req: falcon.Request, resp: falcon.Response, review_id: object) -> None:
        self._show(req, resp, str(review_id))

    def _show(self, req: falcon.Request, resp: falcon.Response, review_id: str, *,
              status: str | int = falcon.HTTP_200, notice: str | None = None) -> None:
        actor = actor_for(req)
        s = self.p.s
        review = s.stewards.review(review_id, actor)
        matching = review.kind == "possible_match" and review.patient_id
        right_id = (review.person_id if review.kind == "possible_match"
                    else review.other_person_id or review.person_id)
        # Both persons' records in one read (one unit of work, each person audited).
        records = s.persons.records_of(list(dict.fromkeys([review.person_id, right_id])),
                                       actor, via="review")
        if matching:
            left = [s.patients.get(str(review.patient_id), actor)]
            left_title = "The record under review"
        else:
            left = records[review.person_id]
            left_title = "Person"
        right = records[right_id]
        if review.kind == "possible_match":
            right = [r for r in right if r.id != review.patient_id]
        reference = left[0] if left else None
        rows = views.side_by_side(reference, [*left[1:], *right]) if reference else []
        chart = views.waterfall(review.explanation,
                                link_threshold=s.settings.matching_threshold,
                                review_threshold=s.settings.matching_review_threshold,
                                prior_weight=s.engine.model.prior_weight,  # type: ignore[attr-defined]
                                model_version=s.engine.model_version)
        self.p.render(req, resp, "review.html", status=status, review=review, rows=rows,
                      left=left, right=right, left_title=left_title, right_id=right_id,
                      chart=chart, notice=notice, name=views.display_name,
                      link_threshold=s.settings.matching_threshold)

    @requires(STEWARD)
    def on_post(self, req: falcon.Request, resp: falcon.Response, review_id: object) -> None:
        fields = self.p.form(req)
        resolution = fields.get("resolution", "")
        if resolution not in RESOLUTIONS:
            raise bad("resolution", "must be link, not_a_match or new_person")
        comment = (fields.get("comment") or "").strip() or None
        if comment is not None and len(comment) > 1000:
            raise bad("comment", "must be at most 1000 characters")
        try:
            done = self.p.s.stewards.resolve_review(str(review_id), resolution,
                                                    actor_for(req), comment=comment)
        except StateConflict as exc:
            # Someone resolved it meanwhile: say so, change nothing.
            self._show(req, resp, str(review_id), status=falcon.HTTP_409,
                       notice=f"Nothing was changed: {exc.message}.")
            return
        person = done.person_id
        if resolution == "new_person" and done.patient_id:
            person = self.p.s.persons.person_of_patient(done.patient_id, actor_for(req)).id
        raise _see_other(f"{UI}/persons/{person}?resolved={done.id}")


# --- persons, merges -----------------------------------------------------------------------------


class PersonPage(Page):
    @requires(STEWARD)
    def on_get(self, req: falcon.Request, resp: falcon.Response, person_id: object) -> None:
        actor = actor_for(req)
        person = self.p.s.persons.person(str(person_id), actor)
        history = self.p.s.persons.history(str(person_id), actor, before=None, limit=100)
        undone = {e.detail.get("merge_id") for e in history.items
                  if e.action == "merge_undone" and isinstance(e.detail, dict)}
        merges = [e for e in history.items if e.action == "merged"
                  and isinstance(e.detail, dict) and e.detail.get("merge_id") not in undone
                  and e.detail.get("survivor_id") == person.id]
        reviews = self.p.s.stewards.reviews(actor, status="open", kind=None,
                                            person_id=person.id, after=None, limit=20).items
        resolved = req.get_param("resolved")
        self.p.render(req, resp, "person.html", person=person, history=history.items,
                      merges=merges, reviews=reviews, resolved=resolved,
                      name=views.display_name, notice=req.get_param("notice"))


class PersonMerge(Page):
    @requires(STEWARD)
    def on_post(self, req: falcon.Request, resp: falcon.Response, person_id: object) -> None:
        fields = self.p.form(req)
        other = _uuid(fields.get("merged_id", "").strip(), "merged_id")
        merge = self.p.s.stewards.merge(str(person_id), other, actor_for(req))
        raise _see_other(f"{UI}/persons/{merge.survivor_id}?" + urlencode(
            {"notice": f"Merged {len(merge.moved_patient_ids)} record(s) into this person."}))


class MergeUndo(Page):
    @requires(STEWARD)
    def on_post(self, req: falcon.Request, resp: falcon.Response, merge_id: object) -> None:
        self.p.form(req)
        merge = self.p.s.stewards.undo_merge(str(merge_id), actor_for(req))
        raise _see_other(f"{UI}/persons/{merge.survivor_id}?" + urlencode(
            {"notice": "The merge was undone: the merged person has its records back."}))


class PersonUnlink(Page):
    @requires(STEWARD)
    def on_post(self, req: falcon.Request, resp: falcon.Response, person_id: object) -> None:
        fields = self.p.form(req)
        record = _uuid(fields.get("patient_id"), "patient_id")
        fresh = self.p.s.stewards.unlink(str(person_id), record, actor_for(req))
        raise _see_other(f"{UI}/persons/{person_id}?" + urlencode(
            {"notice": f"The record now belongs to a new person, {fresh.id}."}))


# --- search and the model ------------------------------------------------------------------------


class Search(Page):
    @requires(STEWARD)
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        name = (req.get_param("name") or "").strip()
        birth = (req.get_param("birth_date") or "").strip()
        identifier = (req.get_param("identifier") or "").strip()
        asked = {"name": name, "birth_date": birth, "identifier": identifier}
        found, total, problem = None, 0, None
        if any(asked.values()):
            if len(name) > MAX_QUERY_LENGTH or len(identifier) > 400:
                raise bad("name" if len(name) > MAX_QUERY_LENGTH else "identifier",
                              "is too long")
            for field_name, value in asked.items():
                # As the API's search (the database answers an identifier search while
                # the index is built, and PostgreSQL refuses NUL).
                if has_control_characters(value):
                    raise bad(field_name, "must not contain control characters")
            try:
                born = datetime.strptime(birth, "%Y-%m-%d").date() if birth else None
            except ValueError:
                raise bad("birth_date", "must be a date, YYYY-MM-DD") from None
            request = SearchRequest(shortcuts=Shortcuts(name=name or None, birth_date=born,
                                                        identifier=identifier or None),
                                    limit=25)
            try:
                outcome = self.p.s.search.search(request, actor_for(req))
                found, total = outcome.items, outcome.total
                if not outcome.complete:
                    problem = ("Search is catching up with recent changes; the newest may "
                               "be missing.")
            except QuerySyntaxError as exc:
                raise bad(exc.field, exc.reason) from None
            except SearchUnavailable as exc:
                raise Problem(falcon.HTTP_503, "Search is unavailable", str(exc),
                              headers={"Retry-After": "2"}) from None
        self.p.render(req, resp, "search.html", asked=asked, found=found, total=total,
                      problem=problem, name=views.display_name)


class ModelPage(Page):
    @requires(STEWARD)
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        s = self.p.s
        model = s.engine.model  # type: ignore[attr-defined]
        comparisons, biggest = views.model_view(model)
        self.p.render(req, resp, "model.html", model=model, version=s.engine.model_version,
                      comparisons=comparisons, biggest=biggest,
                      prior_weight=model.prior_weight,
                      link=s.settings.matching_threshold,
                      review=s.settings.matching_review_threshold,
                      twin_guard=s.settings.matching_twin_guard,
                      link_bits=math.log2(s.settings.matching_threshold
                                          / (1 - s.settings.matching_threshold)),
                      review_bits=math.log2(s.settings.matching_review_threshold
                                            / (1 - s.settings.matching_review_threshold)))


# --- errors --------------------------------------------------------------------------------------


def error_renderer(pages: Pages) -> Callable[[falcon.Request, falcon.Response,
                                              falcon.HTTPError], None]:
    """How an error on a page is shown: a page saying what went wrong, not problem+json."""
    def render(req: falcon.Request, resp: falcon.Response, exc: falcon.HTTPError) -> None:
        pages.render(req, resp, "error.html", status=exc.status_code,
                     title=exc.title or "Error", detail=exc.description or "")
    return render


def routes(services: Services) -> tuple[Pages, list[tuple[str, object]]]:
    pages = Pages(services)
    return pages, [
        (UI, Home(pages)),
        (f"{UI}/signin", SignIn(pages)),
        (f"{UI}/signin/callback", SignInCallback(pages)),
        (f"{UI}/signout", SignOut(pages)),
        (f"{UI}/reviews", Queue(pages)),
        (f"{UI}/reviews/{{review_id:uuid}}", Review(pages)),
        (f"{UI}/persons/{{person_id:uuid}}", PersonPage(pages)),
        (f"{UI}/persons/{{person_id:uuid}}/merge", PersonMerge(pages)),
        (f"{UI}/persons/{{person_id:uuid}}/unlink", PersonUnlink(pages)),
        (f"{UI}/merges/{{merge_id:uuid}}/undo", MergeUndo(pages)),
        (f"{UI}/search", Search(pages)),
        (f"{UI}/model", ModelPage(pages)),
    ]
