"""``$match`` (PDQm ITI-119) and ``$ihe-pix`` (PIXm ITI-83): the numbered cases of the IHE
texts, on both backends."""

from __future__ import annotations

import json

import pytest

from tests.fhir.conftest import FHIR_JSON, MRN, SSN, create, fhir_patient, valid

GRADE = "http://hl7.org/fhir/StructureDefinition/match-grade"


@pytest.fixture
def people(fhir):
    return {
        "john": create(fhir, fhir_patient("A-1", mrn="M-1")).json["id"],
        "john-lab": create(fhir, fhir_patient("L-1", source="lab")).json["id"],
        "mary": create(fhir, fhir_patient("A-2", family="Jones", given=("Mary",),
                                          gender="female", birth_date="1962-08-09",
                                          ssn="321-54-9876", mrn="M-2",
                                          address=[{"city": "Dover", "state": "DE"}],
                                          telecom=[])).json["id"],
    }


def match(fhir, body):
    answer = fhir.simulate_post("/fhir/Patient/$match", body=json.dumps(body),
                                headers={"Content-Type": FHIR_JSON})
    return answer


def parameters(patient, **params):
    out = [{"name": "resource", "resource": patient}]
    if "only_certain" in params:
        out.append({"name": "onlyCertainMatches", "valueBoolean": params["only_certain"]})
    if "count" in params:
        out.append({"name": "count", "valueInteger": params["count"]})
    return {"resourceType": "Parameters", "parameter": out}


QUERY = {"resourceType": "Patient", "name": [{"family": "Smith", "given": ["John"]}],
         "birthDate": "1980-05-17", "gender": "male",
         "identifier": [{"system": SSN, "value": "123-45-6789"}]}


def test_cases_1_and_2_graded_scored_entries_most_likely_first(fhir, people):
    answer = match(fhir, parameters(QUERY))
    bundle = valid(answer.json)
    assert answer.status_code == 200 and bundle["type"] == "searchset"
    ids = [e["resource"]["id"] for e in bundle["entry"]]
    assert set(ids) == {people["john"], people["john-lab"]}  # both records of the person
    for entry in bundle["entry"]:
        assert entry["search"]["mode"] == "match" and 0 < entry["search"]["score"] <= 1
        assert entry["search"]["extension"][0] == {"url": GRADE, "valueCode": "certain"}
    # A bare Patient is the same request without parameters.
    bare = valid(match(fhir, QUERY).json)
    assert [e["resource"]["id"] for e in bare["entry"]] == ids


def test_case3_only_certain_matches_returns_the_certain_person(fhir, people):
    bundle = valid(match(fhir, parameters(QUERY, only_certain=True)).json)
    assert {e["resource"]["id"] for e in bundle["entry"]} == {people["john"],
                                                              people["john-lab"]}


def test_case4_only_certain_with_an_uncertain_match_is_empty(fhir, people):
    vague = {"resourceType": "Patient", "name": [{"family": "Jones", "given": ["Mary"]}]}
    loose = valid(match(fhir, parameters(vague)).json)
    assert loose.get("entry") and all(
        e["search"]["extension"][0]["valueCode"] != "certain" for e in loose["entry"])
    strict = valid(match(fhir, parameters(vague, only_certain=True)).json)
    assert "entry" not in strict and strict["total"] == 0


def test_case6_count_limits_the_entries(fhir, people):
    bundle = valid(match(fhir, parameters(QUERY, count=1)).json)
    assert len(bundle["entry"]) == 1 and bundle["entry"][0]["resource"]["id"] == people["john"]


def test_case7_no_match_is_an_empty_bundle(fhir, people):
    nobody = {"resourceType": "Patient", "name": [{"family": "Zzyzx", "given": ["Qa"]}],
              "birthDate": "2001-01-01"}
    bundle = valid(match(fhir, parameters(nobody)).json)
    assert "entry" not in bundle and bundle["total"] == 0


def test_case9_errors_are_operation_outcomes(fhir, people):
    unknown = parameters(QUERY)
    unknown["parameter"][0]["modifierExtension"] = [{"url": "http://x", "valueCode": "y"}]
    assert match(fhir, unknown).status_code == 400
    assert valid(match(fhir, {"resourceType": "Parameters", "parameter": []}).json)[
        "resourceType"] == "OperationOutcome"
    bad = match(fhir, parameters({**QUERY, "birthDate": "1980-02-30"}))
    assert bad.status_code == 422
    assert bad.json["issue"][1]["expression"] == ["Patient.birthDate"]
    assert match(fhir, parameters(QUERY, count=0)).status_code == 400


def pix(fhir, query: str):
    return fhir.simulate_get("/fhir/Patient/$ihe-pix", query_string=query)


def test_pix_success_every_identifier_of_the_person_but_the_source(fhir, people):
    answer = pix(fhir, f"sourceIdentifier={MRN}|M-1")
    params = valid(answer.json)["parameter"]
    assert answer.status_code == 200
    identifiers = {(p["valueIdentifier"]["system"], p["valueIdentifier"]["value"])
                   for p in params if p["name"] == "targetIdentifier"}
    assert (MRN, "M-1") not in identifiers
    assert {("urn:mpi:source:st-marys-ehr", "A-1"), ("urn:mpi:source:lab", "L-1"),
            (SSN, "123-45-6789")} <= identifiers
    targets = {p["valueReference"]["reference"].rsplit("/", 1)[1] for p in params
               if p["name"] == "targetId"}
    assert targets == {people["john"], people["john-lab"]}


def test_pix_target_system_filters_and_post_form(fhir, people):
    only = valid(pix(fhir, f"sourceIdentifier={MRN}|M-1&targetSystem=urn:mpi:source:lab")
                 .json)["parameter"]
    assert [p["valueIdentifier"]["value"] for p in only if p["name"] == "targetIdentifier"] \
        == ["L-1"]
    body = {"resourceType": "Parameters", "parameter": [
        {"name": "sourceIdentifier", "valueIdentifier": {"system": MRN, "value": "M-1"}},
        {"name": "targetSystem", "valueUri": "urn:mpi:source:lab"}]}
    posted = fhir.simulate_post("/fhir/Patient/$ihe-pix", body=json.dumps(body),
                                headers={"Content-Type": FHIR_JSON})
    assert posted.status_code == 200 and valid(posted.json)["parameter"] == only


def test_pix_logical_id_form(fhir, people):
    answer = pix(fhir, f"sourceIdentifier=Patient/{people['mary']}")
    refs = [p["valueReference"]["reference"] for p in valid(answer.json)["parameter"]
            if p["name"] == "targetId"]
    assert answer.status_code == 200 and refs[0].endswith(people["mary"])


def test_pix_failure_cases(fhir, people):
    not_found = pix(fhir, f"sourceIdentifier={MRN}|NOPE")
    assert not_found.status_code == 404
    assert valid(not_found.json)["issue"][0]["diagnostics"] == \
        "sourceIdentifier Patient Identifier not found"
    unknown_source = pix(fhir, "sourceIdentifier=urn:oid:9.9.9|1")
    assert unknown_source.status_code == 400
    assert unknown_source.json["issue"][0]["code"] == "code-invalid"
    unknown_target = pix(fhir, f"sourceIdentifier={MRN}|M-1&targetSystem=urn:oid:9.9.9")
    assert unknown_target.status_code == 403
    assert unknown_target.json["issue"][0]["diagnostics"] == "targetSystem not found"
    assert pix(fhir, "").status_code == 400


def test_registered_domains_decide_what_pix_and_pdqm_know(fhir, people):
    known = pix(fhir, f"sourceIdentifier={MRN}|M-1&targetSystem={SSN}")
    assert known.status_code == 200  # nothing registered: the systems in use are known
    fhir.simulate_post("/api/v1/domains", json={"system": MRN, "name": "MRN",
                                                "sources": ["st-marys-ehr"]})
    assert pix(fhir, f"sourceIdentifier={MRN}|M-1").status_code == 200
    assert pix(fhir, f"sourceIdentifier={MRN}|M-1&targetSystem={SSN}").status_code == 403
    assert pix(fhir, f"sourceIdentifier={SSN}|123-45-6789").status_code == 400
    pdqm = fhir.simulate_get("/fhir/Patient", query_string=f"identifier={SSN}|")
    assert pdqm.status_code == 404


def test_a_feed_writes_only_in_domains_its_source_may_assign_in(fhir, people):
    fhir.simulate_post("/api/v1/domains", json={"system": "urn:oid:1.7.7", "name": "Lab",
                                                "sources": ["lab"]})
    fhir.simulate_post("/api/v1/domains", json={"system": MRN, "name": "MRN",
                                                "sources": ["st-marys-ehr"]})
    # AUTH_MODE=none: the local client may write every source, so both are allowed ...
    headers = {"Content-Type": FHIR_JSON}
    answer = fhir.simulate_put(f"/fhir/Patient?identifier={MRN}|M-2",
                               body=json.dumps(valid(fhir.simulate_get(
                                   f"/fhir/Patient/{people['mary']}").json)), headers=headers)
    assert answer.status_code == 200
    # ... and a domain that is not registered is refused once domains are.
    refused = fhir.simulate_delete("/fhir/Patient?identifier=urn:oid:9.9|1")
    assert refused.status_code == 403 and "urn:oid:9.9" in refused.json["issue"][0][
        "diagnostics"]
