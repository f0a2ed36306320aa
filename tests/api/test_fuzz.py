"""Property: no request body or query string makes the API answer 5xx (both backends)."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers import patient

URL = "/api/v1/patients"
FUZZ = settings(max_examples=120, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])

scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=10), inner, max_size=4),
                           max_leaves=12)
FIELDS = ["source", "source_id", "names", "gender", "birth_date", "deceased", "deceased_date",
          "identifiers", "addresses", "telecom", "active", "id"]


@FUZZ
@given(body=json_values)
def test_any_json_body_is_answered_without_5xx(client, body):
    resp = client.simulate_post(URL, body=json.dumps(body),
                                headers={"Content-Type": "application/json"})
    assert resp.status_code in (400, 422), resp.text


@FUZZ
@given(field=st.sampled_from(FIELDS), value=json_values, source_id=st.text(max_size=30))
def test_a_valid_record_with_one_field_replaced_is_answered_without_5xx(client, field, value,
                                                                      source_id):
    body = patient(source_id=source_id or "x", identifiers=[])
    body[field] = value
    resp = client.simulate_post(URL, body=json.dumps(body),
                                headers={"Content-Type": "application/json"})
    assert resp.status_code in (201, 400, 409, 422), resp.text


@FUZZ
@given(raw=st.binary(max_size=200))
def test_any_bytes_are_answered_without_5xx(client, raw):
    resp = client.simulate_post(URL, body=raw, headers={"Content-Type": "application/json"})
    assert resp.status_code in (400, 422), resp.text


@FUZZ
@given(params=st.dictionaries(st.sampled_from(["family", "birth_date", "identifier", "source",
                                               "source_id", "cursor", "limit"]),
                              st.text(max_size=30), max_size=4))
def test_any_query_string_is_answered_without_5xx(client, params):
    resp = client.simulate_get(URL, params=params)
    assert resp.status_code in (200, 400), resp.text
