"""Property: no query string or form makes a steward page answer 5xx, or anything but a page
(both backends; the pages are not in the OpenAPI document, so they are fuzzed here). Forms
are sent with a valid session and CSRF token, so they reach the services."""

from __future__ import annotations

import re
import urllib.parse

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers import patient

FUZZ = settings(max_examples=60, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])
IDS = st.sampled_from(["00000000-0000-4000-8000-000000000001",
                       "00000000-0000-4000-8000-000000000002", "not-a-uuid", ""])
TEXT = st.text(max_size=40) | IDS
QUERY_PAGES = {
    "/ui/reviews": ["kind", "source", "band", "age", "after"],
    "/ui/search": ["name", "birth_date", "identifier"],
    "/ui/model": ["x"],
    "/ui/signin": ["next"],
}
FORMS = {
    "/ui/reviews/{review}": ["resolution", "comment"],
    "/ui/persons/{person}/merge": ["merged_id"],
    "/ui/persons/{person}/unlink": ["patient_id"],
    "/ui/merges/{person}/undo": ["x"],
    "/ui/signin": ["token", "next"],
    "/ui/signout": ["x"],
}


@pytest.fixture
def seeded(client):
    """Two records the engine sends to review, a session cookie and its CSRF token."""
    client.simulate_post("/api/v1/patients", json=patient())
    client.simulate_post("/api/v1/patients", json=patient(
        source="walk-in", source_id="W-1", identifiers=[],
        names=[{"family": "Smith", "given": ["Peter"]}]))
    review = client.simulate_get("/api/v1/reviews").json["items"][0]
    page = client.simulate_get("/ui/search")
    csrf = re.findall(r'name="csrf" value="([^"]+)"', page.text)[0]
    cookie = page.cookies["mpi_ui"].value
    return client, {"review": review["id"], "person": review["person_id"]}, csrf, cookie


def _is_a_page(resp) -> bool:
    return resp.status_code == 303 or resp.headers["content-type"].startswith(
        ("text/html", "text/css"))


@FUZZ
@given(path=st.sampled_from(sorted(QUERY_PAGES)), data=st.data())
def test_any_query_string_is_answered_with_a_page(seeded, path, data):
    client, _, _, cookie = seeded
    names = QUERY_PAGES[path]
    params = data.draw(st.dictionaries(st.sampled_from(names), TEXT, max_size=len(names)))
    resp = client.simulate_get(path, query_string=urllib.parse.urlencode(params),
                               headers={"Cookie": f"mpi_ui={cookie}"})
    assert resp.status_code < 500 or resp.status_code == 503, (path, params, resp.text)
    assert _is_a_page(resp), (path, params, resp.headers)


@FUZZ
@given(template=st.sampled_from(sorted(FORMS)), data=st.data(),
       raw=st.booleans())
def test_any_form_is_answered_with_a_page(seeded, template, data, raw):
    client, ids, csrf, cookie = seeded
    path = template.format(**ids)
    names = FORMS[template]
    fields = data.draw(st.dictionaries(st.sampled_from(names), TEXT, max_size=len(names)))
    body = (data.draw(st.binary(max_size=120)) if raw
            else urllib.parse.urlencode({"csrf": csrf, **fields}).encode())
    resp = client.simulate_post(path, body=body, headers={
        "Content-Type": "application/x-www-form-urlencoded", "Cookie": f"mpi_ui={cookie}"})
    assert resp.status_code < 500, (path, fields, resp.text)
    assert _is_a_page(resp), (path, fields, resp.headers)
