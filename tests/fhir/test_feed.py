"""PIXm ITI-104 (Patient Identity Feed FHIR): add and revise by conditional update,
resolve duplicates by a replaced-by link (a merge), remove by conditional delete; a source
that sends only its own domain's identifier; and what PIX and PDQm answer afterwards."""

from __future__ import annotations

import json

import falcon.testing
import pytest

from tests.fhir.conftest import FHIR_JSON, valid

RED = "urn:oid:1.3.6.1.4.1.21367.13.20.1000"
HEADERS = {"Content-Type": FHIR_JSON}


def alice(value: str, given: str, **extra):
    return {"resourceType": "Patient", "identifier": [{"system": RED, "value": value}],
            "name": [{"family": "MOHR", "given": [given]}], "gender": "female",
            "birthDate": "1958-01-30", **extra}


@pytest.fixture
def red(fhir):
    """The Red hospital's domain, registered to its source."""
    made = fhir.simulate_post("/api/v1/domains", json={
        "system": RED, "name": "Red hospital", "sources": ["red-ehr"]})
    assert made.status_code == 201
    return fhir


def feed(fhir, value: str, body) -> falcon.testing.Result:
    return fhir.simulate_put("/fhir/Patient", query_string=f"identifier={RED}|{value}",
                             body=json.dumps(body), headers=HEADERS)


def test_a_source_adds_and_revises_by_its_own_domains_identifier(red):
    added = feed(red, "IHERED-994", alice("IHERED-994", "ALICE"))
    assert added.status_code == 201, added.text
    systems = {i["system"]: i["value"] for i in valid(added.json)["identifier"]}
    assert systems["urn:mpi:source:red-ehr"] == "IHERED-994"  # whose record it is
    revised = feed(red, "IHERED-994", alice("IHERED-994", "ALICIA"))
    assert revised.status_code == 200 and revised.json["id"] == added.json["id"]
    assert revised.json["name"][0]["given"] == ["ALICIA"]


def test_resolve_duplicates_merges_the_subsumed_record_into_the_survivor(red):
    survivor = feed(red, "IHERED-994", alice("IHERED-994", "ALICE")).json
    subsumed = feed(red, "IHERED-m94", alice("IHERED-m94", "MAIDEN", birthDate="1958-01-31",
                                             gender="female")).json
    merge = alice("IHERED-m94", "MAIDEN", active=False, link=[{
        "other": {"identifier": {"system": RED, "value": "IHERED-994"}},
        "type": "replaced-by"}])
    merged = feed(red, "IHERED-m94", merge)
    assert merged.status_code == 200, merged.text
    body = valid(merged.json)
    assert body["active"] is False
    assert body["link"] == [{"other": {"reference": f"Patient/{survivor['id']}"},
                             "type": "replaced-by"}]
    after = valid(red.simulate_get(f"/fhir/Patient/{survivor['id']}").json)
    assert after["link"] == [{"other": {"reference": f"Patient/{subsumed['id']}"},
                              "type": "replaces"}]
    person = {i["system"]: i["value"] for i in after["identifier"]}["urn:mpi:person"]
    assert {i["system"]: i["value"] for i in body["identifier"]}["urn:mpi:person"] == person
    # PIX: the subsumed identifier is gone (ITI-83 post-merge); the survivor's has no trace
    # of it.
    gone = red.simulate_get("/fhir/Patient/$ihe-pix",
                            query_string=f"sourceIdentifier={RED}|IHERED-m94")
    assert gone.status_code == 404
    pix = valid(red.simulate_get("/fhir/Patient/$ihe-pix", query_string=(
        f"sourceIdentifier={RED}|IHERED-994")).json)["parameter"]
    assert [p["valueReference"]["reference"].rsplit("/", 1)[1] for p in pix
            if p["name"] == "targetId"] == [survivor["id"]]
    assert "IHERED-m94" not in json.dumps(pix)
    # PDQm case 6: the deprecated record is found inactive, pointing at its survivor.
    found = valid(red.simulate_get("/fhir/Patient", query_string="given=maiden").json)
    assert found["entry"][0]["resource"]["active"] is False
    # The merge is audited and in the change feed, with the link.
    events = red.simulate_get("/api/v1/events").json["events"]
    assert any(e["type"] == "PatientLinked" and e["data"]["how"] == "merge" for e in events)


def test_a_merge_by_reference_and_its_refusals(red):
    survivor = feed(red, "S-1", alice("S-1", "ALICE")).json
    feed(red, "D-1", alice("D-1", "ALICE", birthDate="1960-02-02"))

    def merge(value, **link):
        return feed(red, value, alice(value, "ALICE", active=False, birthDate="1960-02-02",
                                      link=[{"type": "replaced-by", **link}]))

    still_active = feed(red, "D-1", alice("D-1", "ALICE", link=[{
        "type": "replaced-by", "other": {"reference": f"Patient/{survivor['id']}"}}]))
    assert still_active.status_code == 422
    assert still_active.json["issue"][1]["expression"] == ["Patient.active"]
    nowhere = merge("D-1", other={"identifier": {"system": RED, "value": "NOPE"}})
    assert nowhere.status_code == 422
    wrong_kind = feed(red, "D-1", alice("D-1", "ALICE", active=False, link=[{
        "type": "seealso", "other": {"reference": f"Patient/{survivor['id']}"}}]))
    assert wrong_kind.status_code == 422
    done = merge("D-1", other={"reference": f"Patient/{survivor['id']}"})
    assert done.status_code == 200 and done.json["link"][0]["type"] == "replaced-by"
    chained = feed(red, "S-1", alice("S-1", "ALICE", active=False, link=[{
        "type": "replaced-by", "other": {"identifier": {"system": RED, "value": "D-1"}}}]))
    assert chained.status_code == 409  # D-1 was itself merged into S-1


def test_remove_by_conditional_delete(red):
    made = feed(red, "R-1", alice("R-1", "ALICE")).json
    gone = red.simulate_delete("/fhir/Patient", query_string=f"identifier={RED}|R-1")
    assert gone.status_code == 204
    assert red.simulate_get(f"/fhir/Patient/{made['id']}").status_code == 410


def test_iua_scopes_a_pixm_source_and_a_pdqm_consumer(secured):
    """IHE IUA: a Patient Identity Source whose token holds only ``ITI-104`` (and its own
    source) adds, revises and removes; it cannot search, read or feed another source's
    domain. A consumer holding only ``ITI-78`` searches and reads, and writes nothing;
    ``ITI-83`` cross-references."""
    client = secured.client
    admin = secured.token("admin", "mpi:admin")
    for system, name, owner in ((RED, "Red", "red-ehr"), ("urn:oid:1.7.7", "Lab", "lab")):
        made = client.simulate_post("/api/v1/domains", headers=admin,
                                    json={"system": system, "name": name, "sources": [owner]})
        assert made.status_code == 201, made.text
    source = {**HEADERS, **secured.token("red-feed", "ITI-104", sources="red-ehr")}
    put = {"path": "/fhir/Patient", "query_string": f"identifier={RED}|IU-1", "headers": source}
    added = client.simulate_put(**put, body=json.dumps(alice("IU-1", "ALICE")))
    assert added.status_code == 201, added.text  # ITI-104 adds without system/Patient.c
    revised = client.simulate_put(**put, body=json.dumps(alice("IU-1", "ALICIA")))
    assert revised.status_code == 200 and revised.json["id"] == added.json["id"]
    other_domain = client.simulate_put("/fhir/Patient", query_string="identifier=urn:oid:1.7.7|L",
                                       body=json.dumps(alice("L", "X")), headers=source)
    assert other_domain.status_code == 403
    for call in (client.simulate_get("/fhir/Patient", query_string="family=mohr",
                                     headers=source),
                 client.simulate_get(f"/fhir/Patient/{added.json['id']}", headers=source),
                 client.simulate_post("/fhir/Patient", body=json.dumps(alice("IU-2", "A")),
                                      headers=source)):
        assert call.status_code == 403, call.text
    consumer = secured.token("pdq-consumer", "ITI-78")
    found = client.simulate_get("/fhir/Patient", query_string="family=mohr", headers=consumer)
    assert found.status_code == 200 and [e["resource"]["id"] for e in found.json["entry"]] \
        == [added.json["id"]]
    assert valid(found.json)["entry"][0]["resource"]["name"][0]["given"] == ["ALICIA"]
    read = client.simulate_get(f"/fhir/Patient/{added.json['id']}", headers=consumer)
    assert read.status_code == 200
    assert client.simulate_put(**{**put, "headers": {**HEADERS, **consumer}},
                               body=json.dumps(alice("IU-1", "EVE"))).status_code == 403
    pix = client.simulate_get("/fhir/Patient/$ihe-pix",
                              query_string=f"sourceIdentifier={RED}|IU-1",
                              headers=secured.token("pix-consumer", "ITI-83"))
    assert pix.status_code == 200 and valid(pix.json)["resourceType"] == "Parameters"
    removed = client.simulate_delete("/fhir/Patient", query_string=f"identifier={RED}|IU-1",
                                     headers=source)
    assert removed.status_code == 204
    assert client.simulate_get(f"/fhir/Patient/{added.json['id']}",
                               headers=consumer).status_code == 410
