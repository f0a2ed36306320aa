"""The patient API, on SQLite and on PostgreSQL (every test runs on both)."""

from __future__ import annotations

import json

import falcon.testing
import pytest

from tests.helpers import MRN, SSN, patient

URL = "/api/v1/patients"


def post(client: falcon.testing.TestClient, body: object, **headers: str):
    return client.simulate_post(URL, json=body, headers=headers or None)


def test_create_returns_the_record_with_location_and_etag(client):
    resp = post(client, patient())
    assert resp.status_code == 201
    body = resp.json
    assert body["id"] == "00000000-0000-4000-8000-000000000001"
    assert resp.headers["location"] == f"{URL}/{body['id']}"
    assert resp.headers["etag"] == '"1"'
    assert body["version"] == 1 and body["active"] is True
    assert body["names"][0] == {"use": "official", "family": "Smith", "given": ["John", "Paul"],
                                "prefix": [], "suffix": []}
    assert body["identifiers"] == [{"system": SSN, "value": "123-45-6789", "type": "SS"}]
    assert body["addresses"][0]["line"] == ["12 High St"]
    assert body["telecom"][0]["value"] == "+1-217-555-0100"
    assert body["created_at"] == body["updated_at"] == "2026-01-15T09:30:00Z"


def test_read_back_equals_created(client):
    created = post(client, patient()).json
    resp = client.simulate_get(f"{URL}/{created['id']}")
    assert resp.status_code == 200
    assert resp.json == created
    assert resp.headers["etag"] == '"1"'


def test_unknown_and_malformed_ids_are_404(client):
    assert client.simulate_get(f"{URL}/7d1f6a43-6d0b-4a55-9a8e-000000000000").status_code == 404
    assert client.simulate_get(f"{URL}/not-a-uuid").status_code == 404


def test_second_post_of_same_source_record_is_409_naming_existing(client):
    first = post(client, patient()).json
    resp = post(client, patient(names=[{"family": "Other"}], identifiers=[]))
    assert resp.status_code == 409
    assert resp.headers["content-type"] == "application/problem+json"
    assert resp.json["existing_id"] == first["id"]
    assert resp.json["errors"] == [
        {"field": "source_id", "reason": "already taken by a live record"}]


def test_an_identifier_another_record_carries_is_evidence_not_a_conflict(client):
    """Sources share national ids, and duplicates inside a source are what the MPI finds:
    the second record is stored and, carrying the same person's details, linked to them."""
    first = post(client, patient()).json
    resp = post(client, patient(source="city-lab", source_id="L-77"))
    assert resp.status_code == 201, resp.text
    assert resp.json["person_id"] == first["person_id"]


@pytest.mark.parametrize("family", ["ß" * 200, "ﬃ" * 200, "ﷺ" * 20])
def test_names_that_grow_when_folded_are_stored(client, family):
    resp = post(client, patient(names=[{"family": family}]))
    assert resp.status_code == 201, resp.text
    assert resp.json["names"][0]["family"] == family


def test_same_identifier_value_in_another_system_is_fine(client):
    post(client, patient())
    other = patient(source_id="A-2000",
                    identifiers=[{"system": MRN, "value": "123-45-6789", "type": "MR"}])
    assert post(client, other).status_code == 201


def test_update_requires_if_match(client):
    created = post(client, patient()).json
    resp = client.simulate_put(f"{URL}/{created['id']}", json=patient())
    assert resp.status_code == 428


def test_update_with_current_version_then_stale_version(client, clock):
    created = post(client, patient()).json
    clock.advance(minutes=5)
    changed = patient(names=[{"family": "Smith-Jones", "given": ["John"]}])
    resp = client.simulate_put(f"{URL}/{created['id']}", json=changed,
                               headers={"If-Match": '"1"'})
    assert resp.status_code == 200, resp.text
    assert resp.json["version"] == 2
    assert resp.headers["etag"] == '"2"'
    assert resp.json["names"][0]["family"] == "Smith-Jones"
    assert resp.json["created_at"] == "2026-01-15T09:30:00Z"
    assert resp.json["updated_at"] == "2026-01-15T09:35:00Z"

    stale = client.simulate_put(f"{URL}/{created['id']}", json=patient(),
                                headers={"If-Match": '"1"'})
    assert stale.status_code == 412
    assert stale.json["current_version"] == 2
    assert client.simulate_get(f"{URL}/{created['id']}").json["names"][0]["family"] == "Smith-Jones"


def test_update_accepts_echoed_read_only_fields(client):
    created = post(client, patient()).json
    echoed = dict(created, gender="unknown")
    resp = client.simulate_put(f"{URL}/{created['id']}", json=echoed,
                               headers={"If-Match": '"1"'})
    assert resp.status_code == 200, resp.text
    assert resp.json["gender"] == "unknown"


@pytest.mark.parametrize("tag", ['W/"1"', '"1_0"', '"99999999999999999999"', '"0"', '"x"'])
def test_if_match_must_be_a_strong_version_tag(client, tag):
    created = post(client, patient()).json
    assert client.simulate_put(f"{URL}/{created['id']}", json=patient(),
                               headers={"If-Match": tag}).status_code == 412
    assert client.simulate_delete(f"{URL}/{created['id']}",
                                  headers={"If-Match": tag}).status_code == 412
    assert client.simulate_get(f"{URL}/{created['id']}").json["version"] == 1


def test_update_with_another_records_id_in_body_is_422(client):
    created = post(client, patient()).json
    resp = client.simulate_put(f"{URL}/{created['id']}",
                               json=dict(patient(), id="00000000-0000-4000-8000-000000000099"),
                               headers={"If-Match": '"1"'})
    assert resp.status_code == 422
    assert resp.json["errors"][0]["field"] == "id"


def test_update_to_a_source_id_held_elsewhere_is_409_and_changes_nothing(client):
    post(client, patient())
    second = post(client, patient(source_id="B-1", identifiers=[])).json
    resp = client.simulate_put(f"{URL}/{second['id']}", json=patient(),
                               headers={"If-Match": '"1"'})
    assert resp.status_code == 409
    assert resp.json["errors"][0]["field"] == "source_id"
    assert client.simulate_get(f"{URL}/{second['id']}").json["version"] == 1


def test_update_keeping_own_identifiers_is_fine(client):
    created = post(client, patient()).json
    resp = client.simulate_put(f"{URL}/{created['id']}", json=patient(gender="female"),
                               headers={"If-Match": '"1"'})
    assert resp.status_code == 200, resp.text


def test_delete_is_soft_and_frees_source_id_and_identifiers(client):
    created = post(client, patient()).json
    resp = client.simulate_delete(f"{URL}/{created['id']}")
    assert resp.status_code == 204
    assert client.simulate_get(f"{URL}/{created['id']}").status_code == 410
    assert client.simulate_delete(f"{URL}/{created['id']}").status_code == 410
    assert client.simulate_put(f"{URL}/{created['id']}", json=patient(),
                               headers={"If-Match": '"2"'}).status_code == 410
    assert client.simulate_get(URL).json["items"] == []
    again = post(client, patient())
    assert again.status_code == 201
    assert again.json["id"] != created["id"]


def test_delete_with_stale_if_match_is_412(client):
    created = post(client, patient()).json
    client.simulate_put(f"{URL}/{created['id']}", json=patient(), headers={"If-Match": '"1"'})
    resp = client.simulate_delete(f"{URL}/{created['id']}", headers={"If-Match": '"1"'})
    assert resp.status_code == 412
    assert client.simulate_delete(f"{URL}/{created['id']}",
                                  headers={"If-Match": '"2"'}).status_code == 204


# --- bad input: always 4xx with the field and reason, never a 500 or a partial write ------


@pytest.mark.parametrize(("change", "field"), [
    ({"birth_date": "1980-02-30"}, "birth_date"),
    ({"birth_date": "17/05/1980"}, "birth_date"),
    ({"birth_date": "2999-01-01"}, "birth_date"),
    ({"birth_date": 19800517}, "birth_date"),
    ({"gender": "M"}, "gender"),
    ({"names": [], "identifiers": [], "birth_date": None}, "body"),
    ({"names": [{}]}, "names[0]"),
    ({"names": [{"family": "   "}]}, "names[0].family"),
    ({"names": [{"family": 42}]}, "names[0].family"),
    ({"names": [{"given": [""]}]}, "names[0].given[0]"),
    ({"source": ""}, "source"),
    ({"source_id": None}, "source_id"),
    ({"identifiers": [{"system": SSN}]}, "identifiers[0].value"),
    ({"identifiers": [{"system": "not a uri", "value": "1"}]}, "identifiers[0].system"),
    ({"telecom": [{"system": "email", "value": "not-an-email"}]}, "telecom[0]"),
    ({"telecom": [{"system": "pigeon", "value": "x"}]}, "telecom[0].system"),
    ({"addresses": [{}]}, "addresses[0]"),
    ({"active": "yes"}, "active"),
    ({"deceased_date": "2000-01-01"}, "deceased_date"),
    ({"colour": "blue"}, "colour"),
    ({"id": "00000000-0000-4000-8000-000000000001"}, "id"),
    ({"names": [{"family": "Nul\u0000Byte"}]}, "names[0].family"),
    ({"source_id": "A\u0000"}, "source_id"),
    ({"identifiers": [{"system": SSN, "value": "1\u00002"}]}, "identifiers[0].value"),
    ({"telecom": [{"system": "phone", "value": "555-0100", "rank": 2**31}]}, "telecom[0].rank"),
])
def test_invalid_fields_are_422_naming_the_field(client, change, field):
    body = patient(**{k: v for k, v in change.items() if v is not None})
    for key, value in change.items():
        if value is None:
            body.pop(key)
    resp = post(client, body)
    assert resp.status_code == 422, resp.text
    assert resp.headers["content-type"] == "application/problem+json"
    fields = [e["field"] for e in resp.json["errors"]]
    assert field in fields
    assert all(e["reason"] for e in resp.json["errors"])
    assert client.simulate_get(URL).json["items"] == []


def test_every_bad_field_is_named_at_once(client):
    resp = post(client, patient(gender="x", birth_date="nope", names=[{}]))
    assert resp.status_code == 422
    assert {e["field"] for e in resp.json["errors"]} == {"gender", "birth_date", "names[0]"}


@pytest.mark.parametrize("body", [b"{", b"not json", b"\xff\xfe", b'{"a": 1,}'])
def test_malformed_json_is_400(client, body):
    resp = client.simulate_post(URL, body=body, headers={"Content-Type": "application/json"})
    assert resp.status_code == 400
    assert resp.json["title"] == "Malformed request body"


@pytest.mark.parametrize("body", [b"[]", b"null", b"42", b'"x"'])
def test_json_that_is_not_an_object_is_422(client, body):
    resp = client.simulate_post(URL, body=body, headers={"Content-Type": "application/json"})
    assert resp.status_code == 422
    assert resp.json["errors"] == [{"field": "body", "reason": "must be a JSON object"}]


def test_empty_body_is_400(client):
    resp = client.simulate_post(URL, body=b"", headers={"Content-Type": "application/json"})
    assert resp.status_code == 400


def test_wrong_content_type_is_415(client):
    resp = client.simulate_post(URL, body=json.dumps(patient()),
                                headers={"Content-Type": "text/plain"})
    assert resp.status_code == 415
    assert client.simulate_post(URL, body=json.dumps(patient())).status_code == 415


def test_body_over_one_mebibyte_is_413(client):
    big = json.dumps(dict(patient(), padding="x" * (1024 * 1024))).encode()
    resp = client.simulate_post(URL, body=big, headers={"Content-Type": "application/json"})
    assert resp.status_code == 413


def _post_chunked(client, body: bytes) -> str:
    """POST without Content-Length (as with chunked transfer); returns the status line."""
    env = falcon.testing.create_environ(path=URL, method="POST", body=body,
                                        headers={"Content-Type": "application/json"})
    del env["CONTENT_LENGTH"]
    start = falcon.testing.StartResponseMock()
    b"".join(client.app(env, start))
    assert start.status is not None
    return start.status


def test_body_over_limit_without_declared_length_is_413(client):
    big = json.dumps(dict(patient(), padding="x" * (1024 * 1024))).encode()
    assert _post_chunked(client, big).startswith("413")


def test_body_without_declared_length_is_read(client):
    assert _post_chunked(client, json.dumps(patient()).encode()).startswith("201")


def test_unsupported_method_is_405_problem(client):
    resp = client.simulate_patch(URL)
    assert resp.status_code == 405
    assert resp.headers["content-type"] == "application/problem+json"


def test_bad_user_header_is_400(client):
    resp = post(client, patient(), **{"X-User-ID": "has space"})
    assert resp.status_code == 400


# --- listing -------------------------------------------------------------------------------


def _seed(client, n: int) -> list[dict]:
    made = []
    for i in range(n):
        body = patient(source_id=f"S-{i}",
                       names=[{"family": "Müller" if i % 2 else "Smith", "given": [f"G{i}"]}],
                       birth_date=f"19{50 + i}-01-0{1 + i % 9}",
                       identifiers=[{"system": MRN, "value": f"MRN-{i}", "type": "MR"}])
        made.append(post(client, body).json)
    return made


def test_list_paginates_with_a_cursor_in_creation_order(client):
    made = _seed(client, 5)
    first = client.simulate_get(URL, params={"limit": 2}).json
    assert [p["id"] for p in first["items"]] == [made[0]["id"], made[1]["id"]]
    second = client.simulate_get(URL, params={"limit": 2, "cursor": first["next_cursor"]}).json
    third = client.simulate_get(URL, params={"limit": 2, "cursor": second["next_cursor"]}).json
    assert [p["id"] for p in second["items"] + third["items"]] == [m["id"] for m in made[2:]]
    assert "next_cursor" not in third


def test_list_filters(client):
    made = _seed(client, 4)
    by_family = client.simulate_get(URL, params={"family": "MULLER"}).json["items"]
    assert [p["id"] for p in by_family] == [made[1]["id"], made[3]["id"]]
    by_date = client.simulate_get(URL, params={"birth_date": "1952-01-03"}).json["items"]
    assert [p["id"] for p in by_date] == [made[2]["id"]]
    by_ident = client.simulate_get(URL, params={"identifier": f"{MRN}|MRN-3"}).json["items"]
    assert [p["id"] for p in by_ident] == [made[3]["id"]]
    by_value = client.simulate_get(URL, params={"identifier": "MRN-0"}).json["items"]
    assert [p["id"] for p in by_value] == [made[0]["id"]]
    by_source = client.simulate_get(URL, params={"source": "st-marys-ehr",
                                                 "source_id": "S-2"}).json["items"]
    assert [p["id"] for p in by_source] == [made[2]["id"]]
    none = client.simulate_get(URL, params={"source": "elsewhere"}).json["items"]
    assert none == []


@pytest.mark.parametrize("params", [{"limit": "0"}, {"limit": "x"}, {"cursor": "-1"},
                                    {"birth_date": "1980-5-1"},
                                    {"cursor": "99999999999999999999999"},
                                    {"family": "Smi\u0000th"}, {"identifier": "\u0000"},
                                    {"identifier": "urn:x|"}])
def test_list_rejects_bad_parameters(client, params):
    resp = client.simulate_get(URL, params=params)
    assert resp.status_code == 400
    assert resp.json["errors"][0]["field"] == next(iter(params))


def test_relatives_at_one_address_are_never_merged(client):
    """Registered through the API with the shipped model: a wife and a son at John's
    address and phone (other given names, birth dates, SSNs) get persons of their own.
    Before address and phone counted once, both were linked to John with p 0.99999."""
    john = post(client, patient()).json
    wife = post(client, patient(source_id="A-2001", gender="female", birth_date="1982-03-09",
                                names=[{"family": "Smith", "given": ["Grace"]}],
                                identifiers=[{"system": SSN, "value": "987-65-4321"}])).json
    son = post(client, patient(source_id="A-3001", birth_date="2009-11-30",
                               names=[{"family": "Smith", "given": ["Chidi"]}],
                               identifiers=[])).json
    assert len({john["person_id"], wife["person_id"], son["person_id"]}) == 3
