"""One URL, one body, one reading: what two parsers could take two ways is a 400 naming
the part (both backends). Found in a drill: ``after=`` read from the start, a repeated
parameter took the last value, a key given twice in a body took the last (a validating
proxy reading the first would have passed another record), and invalid UTF-8 in a query
value was answered 200."""

from __future__ import annotations

import json

import pytest

from tests.helpers import patient

URL = "/api/v1/patients"


def _refused(resp, name: str) -> None:
    assert resp.status_code == 400, resp.text
    assert name in [e["field"] for e in resp.json["errors"]], resp.json


@pytest.mark.parametrize(("path", "query", "name", "reason"), [
    ("/api/v1/events", "after=", "after", "is empty"),
    ("/api/v1/events", "after=0&after=5", "after", "more than once"),
    ("/api/v1/audit/recent", "limit=1&limit=500", "limit", "more than once"),
    ("/api/v1/audit/user", "user_id=%ff%fe", "user_id", "not valid UTF-8"),
    (URL, "family=smith&family=jones", "family", "more than once"),
    (URL, "family=%C3%28", "family", "not valid UTF-8"),
    (URL, "family=+", "family", "is empty"),
    (f"{URL}/search", "q=smith&q=jones", "q", "more than once"),
    (f"{URL}/search", "q=%80abc", "q", "not valid UTF-8"),
])
def test_ambiguous_query_parameters_are_400_naming_them(client, path, query, name, reason):
    resp = client.simulate_get(path, query_string=query)
    _refused(resp, name)
    assert reason in {e["field"]: e["reason"] for e in resp.json["errors"]}[name]


def test_good_parameters_still_read(client):
    client.simulate_post(URL, json=patient())
    resp = client.simulate_get(URL, query_string="family=Smith&limit=5")
    assert resp.status_code == 200 and len(resp.json["items"]) == 1
    assert client.simulate_get("/api/v1/events", query_string="after=0").status_code == 200
    # Percent-encoded UTF-8 is UTF-8.
    assert client.simulate_get(URL, query_string="family=Hern%C3%A1ndez").status_code == 200


@pytest.mark.parametrize("body", [
    '{"source": "ehr", "source": "lab"}',
    # The second "family" is the one a last-wins parser stores.
    '{"names": [{"family": "Smith", "family": "Jones"}]}',
])
def test_a_key_given_twice_in_a_body_is_400_naming_it_and_writes_nothing(client, body):
    record = patient()
    text = json.dumps(record)[:-1] + ", " + body[1:]  # the record, then the doubled keys
    resp = client.simulate_post(URL, body=text, headers={"Content-Type": "application/json"})
    key = "source" if '"source"' in body else "family"
    _refused(resp, key)
    assert client.simulate_get(URL).json["items"] == []


def test_a_key_given_twice_in_a_steward_body_is_400(client):
    created = client.simulate_post(URL, json=patient()).json
    resp = client.simulate_post(f"/api/v1/persons/{created['person_id']}/links",
                                body=f'{{"patient_id": "a", "patient_id": "{created["id"]}"}}',
                                headers={"Content-Type": "application/json"})
    _refused(resp, "patient_id")
