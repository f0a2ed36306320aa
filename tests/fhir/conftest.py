"""FHIR test helpers: every resource the server returns is validated against the FHIR
structure definitions (``fhir.resources``' R4B models; Patient, Bundle, Parameters,
OperationOutcome and CapabilityStatement are the same in R4 and R4B)."""

from __future__ import annotations

import json
from typing import Any

import falcon.testing
import pytest
from fhir.resources.R4B import get_fhir_model_class

FHIR_JSON = "application/fhir+json"
V2 = "http://terminology.hl7.org/CodeSystem/v2-0203"
MRN = "urn:oid:1.2.36.146.595.217.0.1"
SSN = "urn:oid:2.16.840.1.113883.4.1"


def valid(resource: dict[str, Any]) -> dict[str, Any]:
    """``resource`` after checking it against its StructureDefinition (raises if not)."""
    get_fhir_model_class(resource["resourceType"]).model_validate(resource)
    return resource


def fhir_patient(source_id: str = "A-1001", *, source: str = "st-marys-ehr",
                 family: str = "Smith", given: tuple[str, ...] = ("John", "Paul"),
                 birth_date: str | None = "1980-05-17", gender: str = "male",
                 mrn: str | None = None, ssn: str | None = "123-45-6789",
                 **extra: Any) -> dict[str, Any]:
    identifiers: list[dict[str, Any]] = [
        {"system": f"urn:mpi:source:{source}", "value": source_id}]
    if mrn:
        identifiers.append({"system": MRN, "value": mrn,
                            "type": {"coding": [{"system": V2, "code": "MR"}]}})
    if ssn:
        identifiers.append({"system": SSN, "value": ssn,
                            "type": {"coding": [{"system": V2, "code": "SS"}]}})
    resource: dict[str, Any] = {
        "resourceType": "Patient", "identifier": identifiers,
        "name": [{"use": "official", "family": family, "given": list(given)}],
        "gender": gender,
        "address": [{"line": ["12 High St"], "city": "Springfield", "state": "IL",
                     "postalCode": "62701", "country": "US"}],
        "telecom": [{"system": "phone", "value": "+1-217-555-0100", "use": "home"}],
    }
    if birth_date:
        resource["birthDate"] = birth_date
    resource.update(extra)
    return resource


def create(client: falcon.testing.TestClient, resource: dict[str, Any],
           **headers: str) -> falcon.testing.Result:
    return client.simulate_post("/fhir/Patient", body=json.dumps(resource),
                                headers={"Content-Type": FHIR_JSON, **headers})


@pytest.fixture
def fhir(client: falcon.testing.TestClient) -> falcon.testing.TestClient:
    return client
