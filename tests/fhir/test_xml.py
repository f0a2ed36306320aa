"""FHIR XML (IHE requires JSON and XML): every shape the service writes parses with
``fhir.resources``' XML parser against the structure definitions, XML bodies are read,
and a document type declaration is refused (no entity expansion)."""

from __future__ import annotations

import json
from typing import Any

from fhir.resources.R4B import get_fhir_model_class

from tests.fhir.conftest import FHIR_JSON, MRN, create, fhir_patient

FHIR_XML = "application/fhir+xml"
XML = {"Content-Type": FHIR_XML, "Accept": FHIR_XML}
PATIENT_XML = """<?xml version="1.0" encoding="UTF-8"?>
<Patient xmlns="http://hl7.org/fhir">
  <text><status value="generated"/><div xmlns="http://www.w3.org/1999/xhtml">John</div></text>
  <identifier><system value="urn:mpi:source:ehr"/><value value="X-1"/></identifier>
  <identifier>
    <type><coding><system value="http://terminology.hl7.org/CodeSystem/v2-0203"/>
      <code value="MR"/></coding></type>
    <system value="urn:oid:1.2.36.146.595.217.0.1"/><value value="M-9"/>
  </identifier>
  <active value="true"/>
  <name><use value="official"/><family value="Smith"/><given value="John"/>
    <given value="Paul"/></name>
  <telecom><system value="phone"/><value value="+1-217-555-0100"/><rank value="1"/></telecom>
  <gender value="male"/><birthDate value="1980-05-17"/>
  <address><line value="12 High St"/><line value="Flat 2"/><city value="Springfield"/>
    <postalCode value="62701"/></address>
</Patient>"""


def valid_xml(kind: str, body: bytes) -> Any:
    return get_fhir_model_class(kind).model_validate_xml(body)


def test_an_xml_patient_is_stored_and_answered_in_xml(fhir):
    made = fhir.simulate_post("/fhir/Patient", body=PATIENT_XML, headers=XML)
    assert made.status_code == 201 and made.headers["content-type"] == FHIR_XML
    patient = valid_xml("Patient", made.content)
    assert patient.name[0].given == ["John", "Paul"] and patient.telecom[0].rank == 1
    assert patient.address[0].line == ["12 High St", "Flat 2"]
    as_json = fhir.simulate_get(f"/fhir/Patient/{patient.id}").json
    assert as_json["identifier"][1]["type"]["coding"][0]["code"] == "MR"
    from_xml = json.loads(patient.model_dump_json())
    assert from_xml.pop("meta")["versionId"] == as_json.pop("meta")["versionId"]
    assert from_xml == as_json  # the same resource either way


def test_every_answer_shape_is_valid_xml(fhir):
    pid = create(fhir, fhir_patient(mrn="M-1")).json["id"]
    checks = [
        ("Patient", fhir.simulate_get(f"/fhir/Patient/{pid}", params={"_format": "xml"})),
        ("Bundle", fhir.simulate_get("/fhir/Patient", query_string="family=smith&_format=xml")),
        ("CapabilityStatement", fhir.simulate_get("/fhir/metadata", headers={
            "Accept": FHIR_XML})),
        ("OperationOutcome", fhir.simulate_get(
            "/fhir/Patient/00000000-0000-4000-8000-000000000999", headers={"Accept": FHIR_XML})),
        ("Parameters", fhir.simulate_get("/fhir/Patient/$ihe-pix", query_string=(
            f"sourceIdentifier={MRN}|M-1&_format=xml"))),
    ]
    for kind, answer in checks:
        assert answer.headers["content-type"] == FHIR_XML, kind
        valid_xml(kind, answer.content)


def test_match_takes_and_gives_xml(fhir):
    pid = create(fhir, fhir_patient()).json["id"]
    body = """<Parameters xmlns="http://hl7.org/fhir">
      <parameter><name value="resource"/><resource><Patient>
        <name><family value="Smith"/><given value="John"/></name>
        <birthDate value="1980-05-17"/></Patient></resource></parameter>
      <parameter><name value="onlyCertainMatches"/><valueBoolean value="true"/></parameter>
      <parameter><name value="count"/><valueInteger value="3"/></parameter>
    </Parameters>"""
    answer = fhir.simulate_post("/fhir/Patient/$match", body=body, headers=XML)
    bundle = valid_xml("Bundle", answer.content)
    assert answer.status_code == 200 and bundle.entry[0].resource.id == pid
    assert bundle.entry[0].search.extension[0].valueCode == "certain"


def test_format_parameter_overrides_accept(fhir):
    answer = fhir.simulate_get("/fhir/metadata", params={"_format": "json"},
                               headers={"Accept": FHIR_XML})
    assert answer.headers["content-type"] == FHIR_JSON
    assert fhir.simulate_get("/fhir/metadata", headers={
        "Accept": "text/html, application/fhir+xml;q=0.9"}).headers["content-type"] == FHIR_XML


def test_a_document_type_declaration_is_refused(fhir):
    bomb = ('<?xml version="1.0"?><!DOCTYPE p [<!ENTITY a "aaaaaaaaaa">'
            '<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">]>'
            '<Patient xmlns="http://hl7.org/fhir"><gender value="&b;"/></Patient>')
    answer = fhir.simulate_post("/fhir/Patient", body=bomb, headers=XML)
    assert answer.status_code == 400 and answer.headers["content-type"] == FHIR_XML
    assert b"document type declaration" in answer.content


def test_malformed_or_foreign_xml_is_400(fhir):
    for body in ("<Patient", '<Patient xmlns="urn:other"/>',
                 '<Patient xmlns="http://hl7.org/fhir"><gender value="a"/>'
                 '<gender value="b"/></Patient>'):
        answer = fhir.simulate_post("/fhir/Patient", body=body, headers=XML)
        assert answer.status_code == 400, body
        valid_xml("OperationOutcome", answer.content)
