"""FHIR Patient interactions (http.html): create, read, update, delete, the conditional
forms, versions and ETags, Prefer, formats, and OperationOutcome errors; on both backends."""

from __future__ import annotations

import json
from typing import Any

from tests.fhir.conftest import FHIR_JSON, SSN, create, fhir_patient, valid


def test_create_then_read_returns_the_same_patient_with_version_headers(fhir):
    made = create(fhir, fhir_patient())
    assert made.status_code == 201
    body = valid(made.json)
    assert made.headers["location"].endswith(f"/fhir/Patient/{body['id']}/_history/1")
    assert made.headers["etag"] == 'W/"1"' and made.headers["content-type"] == FHIR_JSON
    read = fhir.simulate_get(f"/fhir/Patient/{body['id']}")
    assert read.status_code == 200 and valid(read.json) == body
    assert read.headers["etag"] == 'W/"1"' and "last-modified" in read.headers
    systems = {i["system"]: i["value"] for i in body["identifier"]}
    assert systems["urn:mpi:source:st-marys-ehr"] == "A-1001"
    assert systems[SSN] == "123-45-6789"
    assert "urn:mpi:person" in systems  # the enterprise identity
    assert body["name"] == [{"use": "official", "family": "Smith", "given": ["John", "Paul"]}]
    assert body["address"][0]["postalCode"] == "62701" and body["birthDate"] == "1980-05-17"
    assert body["meta"]["versionId"] == "1" and body["meta"]["lastUpdated"].endswith("Z")


def test_if_none_match_with_the_current_version_is_304(fhir):
    pid = create(fhir, fhir_patient()).json["id"]
    assert fhir.simulate_get(f"/fhir/Patient/{pid}",
                             headers={"If-None-Match": 'W/"1"'}).status_code == 304
    assert fhir.simulate_get(f"/fhir/Patient/{pid}",
                             headers={"If-None-Match": 'W/"7"'}).status_code == 200


def test_update_honours_if_match_and_works_without_it(fhir):
    made = create(fhir, fhir_patient()).json
    changed = {**made, "gender": "other"}
    stale = fhir.simulate_put(f"/fhir/Patient/{made['id']}", body=json.dumps(changed),
                              headers={"Content-Type": FHIR_JSON, "If-Match": 'W/"5"'})
    assert stale.status_code == 412 and valid(stale.json)["resourceType"] == "OperationOutcome"
    ok = fhir.simulate_put(f"/fhir/Patient/{made['id']}", body=json.dumps(changed),
                           headers={"Content-Type": FHIR_JSON, "If-Match": 'W/"1"'})
    assert ok.status_code == 200 and valid(ok.json)["gender"] == "other"
    assert ok.headers["etag"] == 'W/"2"' and ok.json["meta"]["versionId"] == "2"
    # FHIR clients send no If-Match: the update applies to the current version.
    again = fhir.simulate_put(f"/fhir/Patient/{made['id']}",
                              body=json.dumps({**changed, "gender": "female"}),
                              headers={"Content-Type": FHIR_JSON})
    assert again.status_code == 200 and again.json["meta"]["versionId"] == "3"


def test_update_with_another_id_in_the_body_is_refused_naming_it(fhir):
    made = create(fhir, fhir_patient()).json
    wrong = fhir.simulate_put(f"/fhir/Patient/{made['id']}",
                              body=json.dumps({**made, "id": "someone-else"}),
                              headers={"Content-Type": FHIR_JSON})
    assert wrong.status_code == 422
    assert ["Patient.id"] in [i.get("expression") for i in valid(wrong.json)["issue"]]


def test_delete_then_read_is_410_and_deleting_again_succeeds(fhir):
    pid = create(fhir, fhir_patient()).json["id"]
    assert fhir.simulate_delete(f"/fhir/Patient/{pid}").status_code == 204
    gone = fhir.simulate_get(f"/fhir/Patient/{pid}")
    assert gone.status_code == 410 and valid(gone.json)["issue"][0]["code"] == "deleted"
    assert fhir.simulate_delete(f"/fhir/Patient/{pid}").status_code == 204


def test_unknown_id_is_404_operation_outcome(fhir):
    missing = fhir.simulate_get("/fhir/Patient/00000000-0000-4000-8000-000000000999")
    assert missing.status_code == 404
    assert valid(missing.json)["issue"][0] == {
        "severity": "error", "code": "not-found",
        "diagnostics": missing.json["issue"][0]["diagnostics"]}
    assert fhir.simulate_get("/fhir/Patient/not-a-uuid").status_code == 404


def test_conditional_create_creates_once_then_returns_the_match(fhir):
    header = {"If-None-Exist": "identifier=urn:mpi:source:st-marys-ehr|A-1001"}
    first = create(fhir, fhir_patient(), **header)
    second = create(fhir, fhir_patient(), **header)
    assert first.status_code == 201 and second.status_code == 200
    assert second.json["id"] == first.json["id"]
    create(fhir, fhir_patient("A-2", ssn="999-99-0001"))
    several = create(fhir, fhir_patient("A-3"), **{"If-None-Exist": "family=smith"})
    assert several.status_code == 412 and valid(several.json)["issue"][0]["code"] == "conflict"


def test_conditional_update_creates_updates_or_refuses_several(fhir):
    url = "/fhir/Patient?identifier=urn:mpi:source:lab|L-1"
    headers = {"Content-Type": FHIR_JSON}
    made = fhir.simulate_put(url, body=json.dumps(fhir_patient("L-1", source="lab")),
                             headers=headers)
    assert made.status_code == 201
    revised = fhir.simulate_put(url, body=json.dumps(fhir_patient(
        "L-1", source="lab", family="Smyth")), headers=headers)
    assert revised.status_code == 200 and revised.json["id"] == made.json["id"]
    assert revised.json["name"][0]["family"] == "Smyth"
    create(fhir, fhir_patient("L-2", source="lab", ssn=None))
    several = fhir.simulate_put("/fhir/Patient?identifier=urn:mpi:source:lab|",
                                body=json.dumps(fhir_patient("L-9", source="lab")),
                                headers=headers)
    assert several.status_code == 412


def test_conditional_delete_by_identifier(fhir):
    pid = create(fhir, fhir_patient()).json["id"]
    url = "/fhir/Patient?identifier=urn:mpi:source:st-marys-ehr|A-1001"
    assert fhir.simulate_delete(url).status_code == 204
    assert fhir.simulate_get(f"/fhir/Patient/{pid}").status_code == 410
    assert fhir.simulate_delete(url).status_code == 204  # nothing left to delete


def test_prefer_minimal_and_operation_outcome(fhir):
    minimal = create(fhir, fhir_patient(), Prefer="return=minimal")
    assert minimal.status_code == 201 and minimal.content == b""
    assert minimal.headers["location"]
    outcome = create(fhir, fhir_patient("A-2"), Prefer="return=OperationOutcome")
    assert outcome.status_code == 201
    assert valid(outcome.json)["resourceType"] == "OperationOutcome"


def test_invalid_patient_names_each_element_by_fhirpath(fhir):
    bad = fhir_patient(birthDate="1980-02-30", gender="robot")
    bad["name"][0]["family"] = 7
    bad["telecom"][0]["value"] = "not a phone"
    answer = create(fhir, bad)
    assert answer.status_code == 422
    paths = [i.get("expression", [None])[0] for i in valid(answer.json)["issue"]]
    assert {"Patient.name[0].family", "Patient.gender", "Patient.birthDate",
            "Patient.telecom[0]"} <= set(paths)


def test_elements_not_stored_are_refused_not_dropped(fhir):
    answer = create(fhir, fhir_patient(maritalStatus={"text": "married"}))
    assert answer.status_code == 422
    assert answer.json["issue"][1]["expression"] == ["Patient.maritalStatus"]
    modifier = create(fhir, fhir_patient(modifierExtension=[{"url": "http://x", "valueBoolean":
                                                             True}]))
    assert modifier.status_code == 422


def test_a_patient_needs_its_source_identifier(fhir):
    resource = fhir_patient()
    resource["identifier"] = resource["identifier"][1:]
    answer = create(fhir, resource)
    assert answer.status_code == 422
    assert answer.json["issue"][1]["expression"] == ["Patient.identifier"]


def test_not_a_patient_or_not_json_is_400(fhir):
    assert create(fhir, {"resourceType": "Observation"}).status_code == 400
    broken = fhir.simulate_post("/fhir/Patient", body=b"{not json",
                                headers={"Content-Type": FHIR_JSON})
    assert broken.status_code == 400 and valid(broken.json)["resourceType"] == "OperationOutcome"


def test_formats_json_accepted_unsupported_refused(fhir):
    plain = fhir.simulate_post("/fhir/Patient", body=json.dumps(fhir_patient()),
                               headers={"Content-Type": "application/json"})
    assert plain.status_code == 201
    pid = plain.json["id"]
    assert fhir.simulate_get(f"/fhir/Patient/{pid}", params={"_format": "json"}).status_code \
        == 200
    refused = fhir.simulate_get(f"/fhir/Patient/{pid}", params={"_format": "text/turtle"})
    assert refused.status_code == 406
    assert valid(refused.json)["issue"][0]["code"] == "not-supported"
    by_accept = fhir.simulate_get(f"/fhir/Patient/{pid}", headers={"Accept": "text/csv"})
    assert by_accept.status_code == 406
    wrong_body = fhir.simulate_post("/fhir/Patient", body="<Patient/>",
                                    headers={"Content-Type": "text/plain"})
    assert wrong_body.status_code == 415 and wrong_body.json["resourceType"] == \
        "OperationOutcome"


def test_capability_statement_lists_what_is_implemented(fhir):
    answer = fhir.simulate_get("/fhir/metadata")
    statement = valid(answer.json)
    assert answer.status_code == 200 and statement["fhirVersion"] == "4.0.1"
    assert any(i.endswith("IHE.PDQm.Supplier") for i in statement["instantiates"])
    assert any(i.endswith("IHE.PIXm.Manager") for i in statement["instantiates"])
    patient = statement["rest"][0]["resource"][0]
    params = {p["name"]: p["type"] for p in patient["searchParam"]}
    assert params["family"] == "string" and params["identifier"] == "token"
    assert params["birthdate"] == "date"
    assert {o["name"] for o in patient["operation"]} == {"match", "ihe-pix"}
    assert patient["conditionalUpdate"] is True and patient["conditionalDelete"] == "single"


def test_fhir_writes_and_reads_are_audited_and_in_the_change_feed(fhir):
    pid = create(fhir, fhir_patient()).json["id"]
    fhir.simulate_get(f"/fhir/Patient/{pid}")
    fhir.simulate_get("/fhir/Patient", params={"family": "smith"})
    trail = fhir.simulate_get(f"/api/v1/patients/{pid}/audit").json["items"]
    actions = [row["action"] for row in trail]
    assert "patient:record:create" in actions and "patient:record:read" in actions
    recent = fhir.simulate_get("/api/v1/audit/recent").json["items"]
    assert any(row["action"] == "patient:record:search" for row in recent)
    events = fhir.simulate_get("/api/v1/events").json["events"]
    assert any(e["type"] == "PatientCreated" and e["entity_id"] == pid for e in events)


def test_vread_and_history_come_from_the_change_log(fhir):
    made = create(fhir, fhir_patient()).json
    pid = made["id"]
    fhir.simulate_put(f"/fhir/Patient/{pid}", body=json.dumps({**made, "gender": "other"}),
                      headers={"Content-Type": FHIR_JSON})
    first = fhir.simulate_get(f"/fhir/Patient/{pid}/_history/1")
    assert first.status_code == 200 and valid(first.json)["gender"] == "male"
    assert first.headers["etag"] == 'W/"1"'
    assert fhir.simulate_get(f"/fhir/Patient/{pid}/_history/2").json["gender"] == "other"
    assert fhir.simulate_get(f"/fhir/Patient/{pid}/_history/9").status_code == 404
    fhir.simulate_delete(f"/fhir/Patient/{pid}")
    history = valid(fhir.simulate_get(f"/fhir/Patient/{pid}/_history").json)
    assert history["type"] == "history" and history["total"] == 3
    assert [e["request"]["method"] for e in history["entry"]] == ["DELETE", "PUT", "POST"]
    assert "resource" not in history["entry"][0]
    assert [e["resource"]["meta"]["versionId"] for e in history["entry"][1:]] == ["2", "1"]
    assert fhir.simulate_get(f"/fhir/Patient/{pid}/_history/3").status_code == 410
    missing = "00000000-0000-4000-8000-000000000999"
    assert fhir.simulate_get(f"/fhir/Patient/{missing}/_history").status_code == 404


def test_mothers_maiden_name_and_multiple_birth_round_trip_and_search(fhir):
    mmn = "http://hl7.org/fhir/StructureDefinition/patient-mothersMaidenName"
    made = create(fhir, fhir_patient(extension=[{"url": mmn, "valueString": "Okafor"},
                                                {"url": "http://example.org/x",
                                                 "valueString": "dropped"}],
                                     multipleBirthInteger=2))
    body = valid(made.json)
    assert made.status_code == 201
    assert body["extension"] == [{"url": mmn, "valueString": "Okafor"}]
    assert body["multipleBirthInteger"] == 2
    rest = fhir.simulate_get(f"/api/v1/patients/{body['id']}").json
    assert rest["mothers_maiden_name"] == "Okafor" and rest["multiple_birth_order"] == 2
    assert rest["multiple_birth"] is True
    found = fhir.simulate_get("/fhir/Patient", query_string="mothersMaidenName=oka").json
    assert found["total"] == 1
    assert fhir.simulate_get("/fhir/Patient",
                             query_string="mothersMaidenName:exact=okafor").json["total"] == 0
    bad = create(fhir, fhir_patient("A-2", multipleBirthInteger=0, ssn=None))
    assert bad.status_code == 422
    assert bad.json["issue"][1]["expression"] == ["Patient.multipleBirthInteger"]


def test_partial_birth_dates_are_kept_searched_and_matched(fhir):
    year = create(fhir, fhir_patient("P-1", birth_date="1980", ssn=None, family="Partial"))
    month = create(fhir, fhir_patient("P-2", birth_date="1975-02", ssn=None, family="Partial",
                                      given=("Jane",), gender="female"))
    assert year.status_code == 201 and valid(year.json)["birthDate"] == "1980"
    assert valid(month.json)["birthDate"] == "1975-02"
    rest = fhir.simulate_get(f"/api/v1/patients/{year.json['id']}").json
    assert rest["birth_date_partial"] == "1980" and "birth_date" not in rest

    def ids(query):
        return {e["resource"]["id"] for e in fhir.simulate_get(
            "/fhir/Patient", query_string=f"family=partial&{query}").json.get("entry", [])}

    y, m = year.json["id"], month.json["id"]
    assert ids("birthdate=1980") == {y}  # the year 1980 lies within 1980
    assert ids("birthdate=1980-05") == set()  # but not within May 1980
    assert ids("birthdate=1975") == {m} and ids("birthdate=1975-02") == {m}
    assert ids("birthdate=ge1980-06-01") == {y}  # ends after the value starts
    assert ids("birthdate=lt1976") == {m} and ids("birthdate=sa1979") == {y}
    assert ids("birthdate=eb1980") == {m}
    # $match takes the year as partial evidence: the same person, a year-only birth date.
    matched = fhir.simulate_post("/fhir/Patient/$match", json={
        "resourceType": "Patient", "name": [{"family": "Partial", "given": ["John"]}],
        "birthDate": "1980-05-17", "gender": "male"}, headers={"Content-Type": FHIR_JSON})
    assert matched.json["entry"][0]["resource"]["id"] == y
    future = create(fhir, fhir_patient("P-3", birth_date="2999", ssn=None))
    assert future.status_code == 422
    assert future.json["issue"][1]["expression"] == ["Patient.birthDate"]


def test_marital_status_languages_contacts_and_organization_round_trip(fhir):
    extra: dict[str, Any] = {
        "maritalStatus": {"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/v3-MaritalStatus", "code": "M"}]},
        "communication": [{"language": {"coding": [{"system": "urn:ietf:bcp:47",
                                                    "code": "es-MX"}]}, "preferred": True}],
        "contact": [{"relationship": [{"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/v2-0131", "code": "N"}]}],
            "name": {"family": "Smith", "given": ["Mary"]},
            "telecom": [{"system": "phone", "value": "+1-217-555-0199"}],
            "address": {"city": "Springfield", "postalCode": "62701"}}],
        "managingOrganization": {"display": "St Mary's Hospital"},
    }
    made = create(fhir, fhir_patient(**extra))
    assert made.status_code == 201, made.text
    body = valid(made.json)
    for key, value in extra.items():
        assert body[key] == value, key
    rest = fhir.simulate_get(f"/api/v1/patients/{body['id']}").json
    assert rest["marital_status"] == "M" and rest["contacts"][0]["relationship"] == ["N"]
    assert rest["communication"] == [{"language": "es-MX", "preferred": True}]
    xml = fhir.simulate_get(f"/fhir/Patient/{body['id']}", params={"_format": "xml"})
    from fhir.resources.R4B import get_fhir_model_class
    parsed: Any = get_fhir_model_class("Patient").model_validate_xml(xml.content)
    assert parsed.contact[0].name.given == ["Mary"]
    bad = create(fhir, fhir_patient("A-9", ssn=None, maritalStatus={"text": "married"},
                                    communication=[{"language": {"text": "Klingon"}}]))
    assert bad.status_code == 422
    paths = [i.get("expression", [None])[0] for i in bad.json["issue"]]
    assert "Patient.maritalStatus" in paths and "Patient.communication[0].language" in paths


def test_the_enterprise_identity_is_a_person_linking_its_records(fhir):
    first = create(fhir, fhir_patient()).json
    second = create(fhir, fhir_patient("L-1", source="lab")).json
    person_id = next(i["value"] for i in first["identifier"] if i["system"] == "urn:mpi:person")
    answer = fhir.simulate_get(f"/fhir/Person/{person_id}")
    person = valid(answer.json)
    assert answer.status_code == 200 and person["active"] is True
    assert {(link["target"]["reference"], link["assurance"]) for link in person["link"]} == {
        (f"Patient/{first['id']}", "level2"), (f"Patient/{second['id']}", "level3")}
    assert fhir.simulate_get("/fhir/Person/00000000-0000-4000-8000-000000000999"
                             ).status_code == 404
