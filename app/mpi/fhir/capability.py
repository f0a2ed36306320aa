"""The instance CapabilityStatement (``GET /fhir/metadata``): exactly what is implemented."""

from __future__ import annotations

from typing import Any

from mpi.domain.access import IHE_SCOPES
from mpi.fhir import FHIR_JSON, FHIR_XML
from mpi.fhir.search import SEARCH_PARAMS

PDQM = "https://profiles.ihe.net/ITI/PDQm/CapabilityStatement/"
PIXM = "https://profiles.ihe.net/ITI/PIXm/CapabilityStatement/"
_SEARCH_DOCS = {
    "string": "starts with, case and accents ignored; :exact and :contains; :missing",
    "token": "system|value, system| or |value; comma for OR; :missing",
    "date": "eq, ne, lt, gt, le, ge, sa, eb, ap; YYYY, YYYY-MM, YYYY-MM-DD or an instant",
}


def capability_statement(base: str, software_version: str) -> dict[str, Any]:
    params = [{"name": name, "definition": _definition(name), "type": kind,
               "documentation": _SEARCH_DOCS[kind]}
              for name, kind in sorted(SEARCH_PARAMS.items())]
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": "2026-12-04",
        "kind": "instance",
        "instantiates": [PDQM + "IHE.PDQm.Supplier", PDQM + "IHE.PDQm.Supplier.Match",
                         PIXM + "IHE.PIXm.Manager"],
        "software": {"name": "mpi", "version": software_version},
        "implementation": {"description": "Master Patient Index", "url": base},
        "fhirVersion": "4.0.1",
        "format": [FHIR_JSON, FHIR_XML, "json", "xml"],
        "rest": [{
            "mode": "server",
            "security": {
                "service": [{"coding": [{
                    "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                    "code": "SMART-on-FHIR"}]}],
                "description": "Bearer tokens (OIDC JWT or the service's API tokens) with "
                               "SMART v2 scopes system/Patient.[cruds], or the IHE IUA "
                               "scopes of the transactions: " + "; ".join(
                                   f"{k} ({v})" for k, v in IHE_SCOPES.items()),
            },
            "resource": [{
                "type": "Patient",
                "profile": "http://hl7.org/fhir/StructureDefinition/Patient",
                "documentation": "Each stored record of a source. One Patient per person is "
                                 "active (its oldest live record, with seealso links to "
                                 "the others; they are active=false with a refer link to "
                                 "it); a record merged by its source is replaced-by its "
                                 "survivor",
                "supportedProfile": ["https://profiles.ihe.net/ITI/PDQm/StructureDefinition/"
                                     "IHE.PDQm.Patient"],
                "interaction": [{"code": c} for c in (
                    "read", "vread", "update", "delete", "history-instance", "search-type",
                    "create")],
                "versioning": "versioned-update",
                "readHistory": True,
                "updateCreate": False,
                "conditionalCreate": True,
                "conditionalRead": "not-supported",
                "conditionalUpdate": True,
                "conditionalDelete": "single",
                "searchParam": params,
                "operation": [
                    {"name": "match",
                     "definition": "https://profiles.ihe.net/ITI/PDQm/OperationDefinition/"
                                   "PDQmMatch"},
                    {"name": "ihe-pix",
                     "definition": "https://profiles.ihe.net/ITI/PIXm/OperationDefinition/"
                                   "IHE.PIXm.pix"},
                ],
            }, {
                "type": "Person",
                "profile": "http://hl7.org/fhir/StructureDefinition/Person",
                "documentation": "The enterprise identity: a link to each of its records, "
                                 "with an identity-assurance level",
                "interaction": [{"code": "read"}],
            }],
        }],
    }


_INDIVIDUAL = {"family", "given", "address", "address-city", "address-country",
               "address-postalcode", "address-state", "birthdate", "gender", "telecom"}


def _definition(name: str) -> str:
    """The canonical URL of the core SearchParameter ``name`` implements."""
    core = "http://hl7.org/fhir/SearchParameter/"
    if name == "mothersMaidenName":
        return f"{core}patient-extensions-Patient-mothersMaidenName"
    if name.startswith("_"):
        return f"{core}Resource-{name[1:]}"
    return f"{core}{'individual' if name in _INDIVIDUAL else 'Patient'}-{name}"
