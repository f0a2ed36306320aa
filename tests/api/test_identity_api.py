"""Enterprise identity over HTTP, with the real matcher and the shipped model (both backends)."""

from __future__ import annotations

import pytest

from tests.helpers import patient

API = "/api/v1"


def post(client, body, **kw):
    return client.simulate_post(f"{API}/patients", json=body, **kw)


def john(**changes):
    return patient(**changes)


def mary(**changes):
    body = patient(source_id="M-1", gender="female", birth_date="1955-11-02",
                   names=[{"use": "official", "family": "Okonkwo", "given": ["Mary"]}],
                   identifiers=[{"system": "urn:oid:2.16.840.1.113883.4.1",
                                 "value": "987-65-4321", "type": "SS"}],
                   addresses=[{"line": ["4 Elm Rd"], "city": "Peoria", "state": "IL",
                               "postal_code": "61602"}],
                   telecom=[{"system": "phone", "value": "309-555-0199"}])
    body.update(changes)
    return body


def test_every_patient_carries_its_person(client):
    created = post(client, john())
    assert created.status_code == 201, created.text
    person_id = created.json["person_id"]
    assert client.simulate_get(f"{API}/patients/{created.json['id']}").json[
        "person_id"] == person_id
    assert client.simulate_get(f"{API}/patients").json["items"][0]["person_id"] == person_id


def test_the_same_person_from_two_sources_is_one_person_with_every_identifier(client):
    a = post(client, john()).json
    mrn = {"system": "urn:oid:1.2.36.146.595.217.0.1", "value": "MRN-555", "type": "MR"}
    b = post(client, john(source="city-lab", source_id="L-1",
                          identifiers=[*john()["identifiers"], mrn])).json
    assert b["person_id"] == a["person_id"]
    person = client.simulate_get(f"{API}/persons/{a['person_id']}")
    assert person.status_code == 200
    assert sorted(r["patient"]["id"] for r in person.json["records"]) == sorted(
        [a["id"], b["id"]])
    values = {i["value"]: i for i in person.json["identifiers"]}
    assert set(values) == {"123-45-6789", "MRN-555"}
    assert sorted(values["123-45-6789"]["sources"]) == ["city-lab", "st-marys-ehr"]
    linked = next(r for r in person.json["records"] if r["patient"]["id"] == b["id"])
    assert linked["how"] == "auto" and linked["probability"] >= 0.95
    assert linked["model_version"]
    via = client.simulate_get(f"{API}/patients/{b['id']}/person")
    assert via.json["id"] == a["person_id"]


def test_different_people_are_different_persons(client):
    a = post(client, john()).json
    m = post(client, mary()).json
    assert a["person_id"] != m["person_id"]


def test_match_scores_without_storing(client):
    stored = post(client, john()).json
    before = client.simulate_get(f"{API}/patients").json["items"]
    resp = client.simulate_post(f"{API}/patients/match",
                                json=john(source="x", source_id="probe"))
    assert resp.status_code == 200, resp.text
    body = resp.json
    assert body["decision"] == "link" and body["person_id"] == stored["person_id"]
    (top,) = body["candidates"]
    assert top["grade"] == "certain" and top["probability"] >= 0.95
    assert top["best_record_id"] == stored["id"]
    explanation = top["explanation"]
    assert explanation["reason"] and explanation["model_version"] == body["model_version"]
    assert {c["comparison"] for c in explanation["comparisons"]} >= {"birth_date"}
    assert client.simulate_get(f"{API}/patients").json["items"] == before
    nobody = client.simulate_post(f"{API}/patients/match", json=mary()).json
    assert nobody["decision"] == "new" and nobody["candidates"] == []


def test_merge_undo_and_history_over_http(client):
    a = post(client, john()).json
    m = post(client, mary()).json
    resp = client.simulate_post(f"{API}/persons/merge", json={
        "survivor_id": a["person_id"], "merged_id": m["person_id"]},
        headers={"X-User-ID": "steward-7"})
    assert resp.status_code == 201, resp.text
    merge = resp.json
    assert resp.headers["location"] == f"{API}/merges/{merge['id']}"
    assert client.simulate_get(f"{API}/patients/{m['id']}").json["person_id"] == a["person_id"]
    gone = client.simulate_get(f"{API}/persons/{m['person_id']}").json
    assert gone["status"] == "merged" and gone["merged_into"] == a["person_id"]
    undo = client.simulate_post(f"{API}/merges/{merge['id']}/undo")
    assert undo.status_code == 200 and undo.json["undone_at"]
    assert client.simulate_post(f"{API}/merges/{merge['id']}/undo").status_code == 409
    history = client.simulate_get(f"{API}/persons/{a['person_id']}/history").json["items"]
    assert [h["action"] for h in history][:2] == ["merge_undone", "merged"]
    assert history[1]["actor"] == "local"  # AUTH_MODE=none: X-User-ID is not the actor
    events = [e["type"] for e in client.simulate_get(f"{API}/events").json["events"]]
    assert "PersonsMerged" in events and "MergeUndone" in events


def test_manual_link_and_unlink_over_http(client):
    a = post(client, john()).json
    m = post(client, mary()).json
    linked = client.simulate_post(f"{API}/persons/{a['person_id']}/links",
                                  json={"patient_id": m["id"]})
    assert linked.status_code == 200, linked.text
    assert {r["patient"]["id"] for r in linked.json["records"]} == {a["id"], m["id"]}
    unlinked = client.simulate_delete(f"{API}/persons/{a['person_id']}/links/{m['id']}")
    assert unlinked.status_code == 200
    assert unlinked.json["id"] not in (a["person_id"], m["person_id"])
    again = client.simulate_delete(f"{API}/persons/{a['person_id']}/links/{m['id']}")
    assert again.status_code == 409


def test_review_queue_over_http(client):
    a = post(client, john()).json
    # Same family, birth date, address and phone, another given name, no SSN: a twin or the
    # same person mistyped. Never linked outright; a steward decides.
    b = post(client, john(source="walk-in", source_id="W-1", identifiers=[],
                          names=[{"family": "Smith", "given": ["Peter"]}])).json
    assert b["person_id"] != a["person_id"]
    reviews = client.simulate_get(f"{API}/reviews").json["items"]
    assert reviews, "a probable match must be queued"
    review = reviews[0]
    assert review["patient_id"] == b["id"] and review["person_id"] == a["person_id"]
    assert review["explanation"]["reason"]
    one = client.simulate_get(f"{API}/reviews/{review['id']}")
    assert one.status_code == 200 and one.json["status"] == "open"
    bad = client.simulate_post(f"{API}/reviews/{review['id']}/resolve",
                               json={"resolution": "maybe"})
    assert bad.status_code == 422 and bad.json["errors"][0]["field"] == "resolution"
    done = client.simulate_post(f"{API}/reviews/{review['id']}/resolve",
                                json={"resolution": "link"})
    assert done.status_code == 200 and done.json["resolution"] == "link"
    assert client.simulate_get(f"{API}/patients/{b['id']}").json["person_id"] == a["person_id"]
    assert client.simulate_get(f"{API}/reviews").json["items"] == []
    assert client.simulate_get(f"{API}/reviews?status=resolved").json["items"][0][
        "id"] == review["id"]


@pytest.mark.parametrize(("method", "path", "body", "status"), [
    ("GET", "/persons/00000000-0000-4000-8000-00000000ffff", None, 404),
    ("GET", "/persons/not-a-uuid", None, 404),
    ("GET", "/reviews?status=maybe", None, 400),
    ("GET", "/reviews?person_id=nope", None, 400),
    ("POST", "/persons/merge", {"survivor_id": "x", "merged_id": "y"}, 422),
    ("POST", "/persons/merge", {"survivor_id": "00000000-0000-4000-8000-00000000ffff"}, 422),
    ("POST", "/persons/merge", [], 422),
    ("POST", "/reviews/00000000-0000-4000-8000-00000000ffff/resolve",
     {"resolution": "link"}, 404),
    ("POST", "/merges/00000000-0000-4000-8000-00000000ffff/undo", None, 404),
    ("POST", "/patients/match", {"source": "x"}, 422),
    ("POST", "/patients/match?limit=0", {"source": "x"}, 400),
])
def test_bad_identity_requests_are_4xx_naming_the_problem(client, method, path, body, status):
    resp = client.simulate_request(method, f"{API}{path}", json=body)
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"] == "application/problem+json"
