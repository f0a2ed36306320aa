"""The steward's pages over Falcon's test client, on both backends: the queue's filters and
count, decisions and their safety (CSRF, conflicts, no caching), sign-in in each AUTH_MODE
(a pasted token; OpenID Connect with PKCE against a provider on 127.0.0.1), and the
actor of every audit row. The browser tests are in test_browser.py."""

from __future__ import annotations

import dataclasses
import re
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any

import falcon.testing
import pytest

from mpi.api.app import create_app
from mpi.domain.audit import Actor
from mpi.storage.db import close_database, connection, database_for
from mpi.wiring import build
from tests.conftest import Ids
from tests.helpers import patient
from tests.ui.idp import CLIENT_ID, Provider

API = "/api/v1"
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


class Browser:
    """The test client with a cookie jar of one cookie, as a browser keeps it."""

    def __init__(self, client: falcon.testing.TestClient, api_headers: dict[str, str]):
        self.client = client
        self.api_headers = api_headers
        self.cookie: str | None = None

    def _headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        headers = dict(extra or {})
        if self.cookie:
            headers["Cookie"] = f"mpi_ui={self.cookie}"
        return headers

    def _keep(self, resp: Any) -> Any:
        if "mpi_ui" in resp.cookies:
            self.cookie = resp.cookies["mpi_ui"].value or None
        return resp

    def get(self, path: str, **headers: str) -> Any:
        return self._keep(self.client.simulate_get(path, headers=self._headers(headers)))

    def post(self, path: str, form: dict[str, str], *, csrf: bool = True,
             **headers: str) -> Any:
        if csrf:
            form = {"csrf": self.csrf(), **form}
        return self._keep(self.client.simulate_post(
            path, body=urllib.parse.urlencode(form), headers=self._headers({**FORM, **headers})))

    def csrf(self) -> str:
        page = self.get("/ui/search")
        if page.status_code == 303:  # not signed in: the sign-in page's form
            page = self.get("/ui/signin")
        return re.findall(r'name="csrf" value="([^"]+)"', page.text)[0]

    def api(self, method: str, path: str, body: Any = None) -> Any:
        return self.client.simulate_request(method, path, json=body, headers=self.api_headers)


@pytest.fixture
def browser(client) -> Browser:
    return Browser(client, {})


def twin_pair(b: Browser, *, source: str = "walk-in", suffix: str = "1",
              family: str = "Smith", birth: str = "1980-05-17") -> tuple[dict, dict]:
    first = b.api("POST", f"{API}/patients", patient(
        source_id=f"A-{suffix}", names=[{"family": family, "given": ["John"]}],
        birth_date=birth, identifiers=[])).json
    second = b.api("POST", f"{API}/patients", patient(
        source=source, source_id=f"W-{suffix}", identifiers=[], birth_date=birth,
        names=[{"family": family, "given": ["Peter"]}])).json
    return first, second


def reviews(b: Browser) -> list[dict]:
    return b.api("GET", f"{API}/reviews").json["items"]


def count(page: Any) -> int:
    found = re.search(r"<strong>(\d+)</strong> open review", page.text)
    assert found is not None, page.text
    return int(found.group(1))


# --- on loopback without sign-in (AUTH_MODE=none) ------------------------------------------------


def test_the_pages_open_directly_and_keep_nothing(browser):
    assert browser.get("/ui").status_code == 303
    home = browser.get("/ui")
    assert home.headers["location"].endswith("/ui/reviews")
    for path in ("/ui/reviews", "/ui/search", "/ui/model"):
        page = browser.get(path)
        assert page.status_code == 200, page.text
        assert page.headers["content-type"].startswith("text/html")
        assert page.headers["cache-control"] == "no-store"
        assert "default-src 'self'" in page.headers["content-security-policy"]
        assert page.headers["x-frame-options"] == "DENY"
        assert "https://" not in page.text and "http://" not in page.text  # no CDN
    css = browser.get("/ui/static/ui.css")
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")


def test_the_queue_filters_counts_and_ages(browser, clock):
    twin_pair(browser, source="walk-in", suffix="1")
    twin_pair(browser, source="lab", suffix="2", family="Jones", birth="1975-01-02")
    assert len(reviews(browser)) == 2
    assert count(browser.get("/ui/reviews")) == 2
    assert count(browser.get("/ui/reviews?source=lab")) == 1
    assert count(browser.get("/ui/reviews?kind=possible_match")) == 2
    assert count(browser.get("/ui/reviews?kind=possible_duplicate")) == 0
    assert count(browser.get("/ui/reviews?band=high")) == 2
    assert count(browser.get("/ui/reviews?band=low")) == 0
    assert count(browser.get("/ui/reviews?age=1")) == 0
    clock.advance(days=2)
    page = browser.get("/ui/reviews?age=1")
    assert count(page) == 2 and "2 d" in page.text
    # Oldest first; the source filter offers the sources with open reviews.
    table = page.text.split("<table")[1]
    assert table.index("walk-in") < table.index(">lab<")
    assert re.findall(r'<option value="([^"]+)"\s*>', page.text.split('id="source"')[1]
                      .split("</select>")[0]) == ["lab", "walk-in"]


@pytest.mark.parametrize(("query", "field"), [
    ("kind=maybe", "kind"), ("band=huge", "band"), ("age=2", "age"),
    ("after=x", "after"), ("source=" + "s" * 101, "source")])
def test_a_bad_filter_is_a_400_page_naming_it(browser, query, field):
    page = browser.get(f"/ui/reviews?{query}")
    assert page.status_code == 400
    assert page.headers["content-type"].startswith("text/html")
    assert f"{field}:" in page.text


def test_a_decision_with_a_comment_goes_through_the_service(browser):
    a, _b = twin_pair(browser)
    (review,) = reviews(browser)
    page = browser.get(f"/ui/reviews/{review['id']}")
    assert page.status_code == 200
    assert 'class="differs"' in page.text and 'class="same"' in page.text
    assert "<svg" in page.text and 'class="bar prior"' in page.text
    done = browser.post(f"/ui/reviews/{review['id']}",
                        {"resolution": "link", "comment": "confirmed at the desk"})
    assert done.status_code == 303
    assert done.headers["location"].startswith(f"/ui/persons/{a['person_id']}")
    person = browser.get(done.headers["location"])
    assert person.text.count("<tr>") >= 3 and "walk-in" in person.text
    resolved = browser.api("GET", f"{API}/reviews/{review['id']}").json
    assert resolved["resolution"] == "link" and resolved["comment"] == "confirmed at the desk"
    assert resolved["resolved_by"] == "local"
    feed = browser.api("GET", f"{API}/events?after=0&limit=1000").json["events"]
    assert any(e["type"] == "ReviewResolved" and e["data"]["comment"] == "confirmed at "
               "the desk" for e in feed)


def test_new_person_lands_on_the_records_new_person(browser):
    a, b = twin_pair(browser)
    (review,) = reviews(browser)
    done = browser.post(f"/ui/reviews/{review['id']}", {"resolution": "new_person"})
    assert done.status_code == 303
    now = browser.api("GET", f"{API}/patients/{b['id']}").json["person_id"]
    assert now != a["person_id"] and done.headers["location"].startswith(f"/ui/persons/{now}")


def test_a_decision_someone_made_meanwhile_is_not_overwritten(browser):
    twin_pair(browser)
    (review,) = reviews(browser)
    assert browser.api("POST", f"{API}/reviews/{review['id']}/resolve",
                       {"resolution": "not_a_match"}).status_code == 200
    late = browser.post(f"/ui/reviews/{review['id']}", {"resolution": "link"})
    assert late.status_code == 409
    assert "Nothing was changed" in late.text and "already resolved (not_a_match)" in late.text
    assert browser.api("GET", f"{API}/reviews/{review['id']}").json["resolution"] == "not_a_match"


def test_forms_without_the_pages_token_or_from_elsewhere_change_nothing(browser):
    twin_pair(browser)
    (review,) = reviews(browser)
    path = f"/ui/reviews/{review['id']}"
    browser.get(path)
    assert browser.post(path, {"resolution": "link"}, csrf=False).status_code == 403
    assert browser.post(path, {"resolution": "link", "csrf": "guess"}, csrf=False
                        ).status_code == 403
    crossed = browser.post(path, {"resolution": "link"}, Origin="https://evil.example")
    assert crossed.status_code == 403 and crossed.headers["content-type"].startswith("text/html")
    stranger = Browser(browser.client, {})  # another browser's session and token
    stolen = stranger.csrf()
    assert browser.post(path, {"resolution": "link", "csrf": stolen}, csrf=False
                        ).status_code == 403
    assert browser.api("GET", f"{API}/reviews/{review['id']}").json["status"] == "open"
    bad = browser.post(path, {"resolution": "maybe"})
    assert bad.status_code == 400 and "resolution:" in bad.text


def test_merge_undo_and_unlink_from_the_person_page(browser):
    a = browser.api("POST", f"{API}/patients", patient()).json
    c = browser.api("POST", f"{API}/patients", patient(
        source="lab", source_id="L-1", identifiers=[], birth_date="1944-02-29",
        names=[{"family": "Okonkwo", "given": ["Mary"]}], addresses=[], telecom=[])).json
    merged = browser.post(f"/ui/persons/{a['person_id']}/merge", {"merged_id": c["person_id"]})
    assert merged.status_code == 303
    page = browser.get(merged.headers["location"])
    assert "Merged 1 record(s)" in page.text and "Undo merge" in page.text
    merge_id = re.findall(r'/ui/merges/([0-9a-f-]{36})/undo', page.text)[0]
    undone = browser.post(f"/ui/merges/{merge_id}/undo", {})
    assert undone.status_code == 303
    assert browser.api("GET", f"{API}/persons/{c['person_id']}").json["status"] == "active"
    assert browser.post(f"/ui/persons/{a['person_id']}/merge", {"merged_id": "nope"}
                        ).status_code == 400
    browser.post(f"/ui/persons/{a['person_id']}/merge", {"merged_id": c["person_id"]})
    out = browser.post(f"/ui/persons/{a['person_id']}/unlink", {"patient_id": c["id"]})
    assert out.status_code == 303 and "new person" in urllib.parse.unquote_plus(
        out.headers["location"])
    assert browser.api("GET", f"{API}/patients/{c['id']}").json["person_id"] != a["person_id"]
    missing = browser.get("/ui/persons/00000000-0000-4000-8000-00000000beef")
    assert missing.status_code == 404 and missing.headers["content-type"].startswith("text/html")


def test_an_automatic_merge_is_shown_and_undone_from_the_person_page(browser):
    """Two fragments of one man (the desk's record without SSN or phone, the lab's with a
    nickname and no birth date or address), then billing's full record, which proves them
    one: the person page says so, and its undo keeps them apart."""
    desk = browser.api("POST", f"{API}/patients", patient(
        source="desk", source_id="D-1", identifiers=[], telecom=[])).json
    lab = browser.api("POST", f"{API}/patients", patient(
        source="lab", source_id="L-1", birth_date=None, addresses=[],
        names=[{"family": "Smith", "given": ["Johnny", "Paul"]}])).json
    assert desk["person_id"] != lab["person_id"]
    full = browser.api("POST", f"{API}/patients", patient(source="billing",
                                                          source_id="B-1")).json
    page = browser.get(f"/ui/persons/{full['person_id']}")
    assert "automatically: record" in page.text and "proved them one" in page.text
    merge_id = re.findall(r'/ui/merges/([0-9a-f-]{36})/undo', page.text)[0]
    assert browser.post(f"/ui/merges/{merge_id}/undo", {}).status_code == 303
    people = {browser.api("GET", f"{API}/patients/{r['id']}").json["person_id"]
              for r in (desk, lab)}
    assert len(people) == 2


def test_the_model_page_shows_every_comparison_and_the_thresholds(browser, client):
    from mpi.matching.comparisons import COMPARISONS

    page = browser.get("/ui/model")
    for c in COMPARISONS:
        assert f'id="c-{c.name}"' in page.text
    assert "probability ≥ 0.95" in page.text and "probability ≥ 0.5" in page.text
    assert page.text.count("<rect") >= sum(len(c.labels) - 1 for c in COMPARISONS)


def test_search_reports_an_unready_index_as_a_page(browser):
    page = browser.get("/ui/search?name=smith")
    assert page.status_code == 503 and "Search is unavailable" in page.text
    assert browser.get("/ui/search?birth_date=17/05/1980").status_code == 400
    # While the index is built, an identifier is searched in the database, which refuses
    # a NUL: a control character is the asker's mistake (400, naming the field), not a 500.
    bad = browser.get("/ui/search?name=&identifier=0%00")
    assert bad.status_code == 400 and "identifier" in bad.text
    assert browser.get("/ui/search?name=a%09b").status_code == 400


# --- AUTH_MODE=token: a pasted token -------------------------------------------------------------


@pytest.fixture
def token_site(secured) -> Browser:
    return Browser(secured.client, secured.token("ehr"))


def test_a_token_sign_in(token_site, secured):
    b = token_site
    page = b.get("/ui/reviews")
    assert page.status_code == 303 and page.headers["location"] == (
        "/ui/signin?next=%2Fui%2Freviews")
    form = b.get("/ui/signin?next=%2Fui%2Freviews")
    assert form.status_code == 200 and 'type="password"' in form.text
    wrong = b.post("/ui/signin", {"token": "mpi_wrong", "next": "/ui/reviews"})
    assert wrong.status_code == 401 and "was not accepted" in wrong.text
    reader = secured.token("reader", "system/Patient.rs")["Authorization"].split()[1]
    assert b.post("/ui/signin", {"token": reader}).status_code == 403
    steward = secured.token("steward-bo", "mpi:steward")["Authorization"].split()[1]
    # "next" only ever leads to a page of this site.
    done = b.post("/ui/signin", {"token": steward, "next": "https://evil.example/x"})
    assert done.status_code == 303 and done.headers["location"] == "/ui/reviews"
    assert steward not in (b.cookie or "")  # sealed, not readable
    assert b.get("/ui/reviews").status_code == 200
    twin_pair(b)
    (review,) = reviews(b)
    assert b.post(f"/ui/reviews/{review['id']}", {"resolution": "link"}).status_code == 303
    assert b.api("GET", f"{API}/reviews/{review['id']}").json["resolved_by"] == "steward-bo"
    # A cookie changed by hand opens nothing.
    b.cookie = b.cookie[:-4] + ("AAAA" if not b.cookie.endswith("AAAA") else "BBBB")
    assert b.get("/ui/reviews").status_code == 303
    b.post("/ui/signin", {"token": steward})
    assert b.post("/ui/signout", {}).status_code == 303
    assert b.get("/ui/reviews").status_code == 303
    # A revoked token's session is refused at the next page.
    b.post("/ui/signin", {"token": steward})
    with connection(secured.services.db):
        secured.services.tokens.revoke("steward-bo", Actor("tests"))
    assert b.get("/ui/reviews").status_code == 303


# --- AUTH_MODE=jwt: OpenID Connect, authorization code with PKCE ---------------------------------


@pytest.fixture
def provider() -> Iterator[Provider]:
    idp = Provider()
    yield idp
    idp.close()


@pytest.fixture
def oidc_site(settings, clock, provider) -> Iterator[Browser]:
    jwt_settings = dataclasses.replace(
        settings, auth_mode="jwt", auth_issuer=provider.issuer, auth_audience="mpi",
        auth_jwks_url=f"{provider.issuer}/certs", ui_oidc_client_id=CLIENT_ID)
    database = database_for(settings.database, max_connections=4)
    app = create_app(build(jwt_settings, db=database, clock=clock, new_id=Ids()))
    client = falcon.testing.TestClient(app)
    api = {"Authorization": "Bearer " + provider.sign({
        "iss": provider.issuer, "aud": "mpi", "client_id": "ehr", "sub": "ehr",
        "scope": "system/Patient.cruds system/Person.r mpi:steward mpi:audit mpi:feed",
        "mpi_sources": ["*"], "exp": 4102444800})}
    yield Browser(client, api)
    close_database(database)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any) -> None:
        return None


def _follow_provider(url: str) -> str:
    """The provider's authorization endpoint, as the browser visits it: where it sends back."""
    opener = urllib.request.build_opener(_NoRedirect)
    try:
        opener.open(url, timeout=10)
    except urllib.error.HTTPError as answer:
        assert answer.code == 302
        return answer.headers["Location"]
    raise AssertionError("the provider did not redirect")


def test_an_openid_connect_sign_in_with_pkce(oidc_site, provider):
    b = oidc_site
    first = b.get("/ui/reviews/00000000-0000-4000-8000-000000000001")
    assert first.status_code == 303
    start = b.get(first.headers["location"])
    assert start.status_code == 303
    authorize = urllib.parse.urlsplit(start.headers["location"])
    assert f"{authorize.scheme}://{authorize.netloc}" == provider.issuer
    asked = dict(urllib.parse.parse_qsl(authorize.query))
    assert asked["code_challenge_method"] == "S256" and asked["scope"] == "openid mpi:steward"
    assert asked["redirect_uri"].endswith("/ui/signin/callback")
    back = urllib.parse.urlsplit(_follow_provider(start.headers["location"]))
    done = b.get(f"{back.path}?{back.query}")
    assert done.status_code == 303, done.text
    assert done.headers["location"] == "/ui/reviews/00000000-0000-4000-8000-000000000001"
    # The token exchange carried the PKCE verifier, which the provider checked.
    (exchange,) = provider.token_requests
    assert len(exchange["code_verifier"]) >= 43
    queue = b.get("/ui/reviews")
    assert queue.status_code == 200 and "ann.steward" in queue.text
    twin_pair(b)
    (review,) = reviews(b)
    assert b.post(f"/ui/reviews/{review['id']}", {"resolution": "link"}).status_code == 303
    resolved = b.api("GET", f"{API}/reviews/{review['id']}").json
    assert resolved["resolved_by"] == "ann.steward"  # the person, not the pages' client


def test_an_openid_connect_answer_not_started_here_is_refused(oidc_site, provider):
    b = oidc_site
    start = b.get("/ui/signin")
    back = urllib.parse.urlsplit(_follow_provider(start.headers["location"]))
    params = dict(urllib.parse.parse_qsl(back.query))
    forged = b.get(f"{back.path}?" + urllib.parse.urlencode({**params, "state": "other"}))
    assert forged.status_code == 401 and "not started here" in forged.text
    assert provider.token_requests == []  # the code was never exchanged
    denied = b.get(f"{back.path}?error=access_denied&state={params['state']}")
    assert denied.status_code in (303, 401)


def test_an_account_without_the_steward_scope_is_not_signed_in(oidc_site, provider):
    provider.scope = "openid system/Patient.rs"
    b = oidc_site
    start = b.get("/ui/signin")
    back = urllib.parse.urlsplit(_follow_provider(start.headers["location"]))
    refused = b.get(f"{back.path}?{back.query}")
    assert refused.status_code == 403 and "not granted mpi:steward" in refused.text
    assert b.get("/ui/reviews").status_code == 303
