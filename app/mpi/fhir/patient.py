"""A stored record as a FHIR R4 ``Patient``, and a ``Patient`` as a record to store.

Elements come out in the order of the Patient StructureDefinition (XML needs it; JSON
readers do not mind). On input, every element is either stored, deliberately dropped
(narrative, periods, extensions: none changes who the patient is) or refused with 422
naming it: an element the model does not keep yet is never silently lost.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from datetime import UTC, date, datetime
from typing import Any

from mpi.domain.errors import FieldProblem, InvalidInput, MalformedInput, reject_duplicate_keys
from mpi.domain.patient import Patient, PatientInput, parse_patient
from mpi.fhir import PERSON_SYSTEM, SOURCE_SYSTEM, V2_0203

MOTHERS_MAIDEN_NAME = "http://hl7.org/fhir/StructureDefinition/patient-mothersMaidenName"
MARITAL = "http://terminology.hl7.org/CodeSystem/v3-MaritalStatus"
NULL_FLAVOR = "http://terminology.hl7.org/CodeSystem/v3-NullFlavor"
CONTACT_ROLE = "http://terminology.hl7.org/CodeSystem/v2-0131"
BCP47 = "urn:ietf:bcp:47"


def _name(n: Any) -> dict[str, Any]:
    return _drop_none({"use": n.use, "family": n.family, "given": list(n.given),
                       "prefix": list(n.prefix), "suffix": list(n.suffix)})


def _telecom(t: Any) -> dict[str, Any]:
    return _drop_none({"system": t.system, "value": t.value, "use": t.use, "rank": t.rank})


def _address(a: Any) -> dict[str, Any]:
    return _drop_none({"use": a.use, "type": a.type, "line": list(a.line), "city": a.city,
                       "district": a.district, "state": a.state, "postalCode": a.postal_code,
                       "country": a.country})


def instant(value: datetime) -> str:
    """A FHIR ``instant``: UTC with microseconds and ``Z``."""
    moment = value if value.tzinfo else value.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _drop_none(value: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in value.items() if v not in (None, [], {})}


def to_resource(patient: Patient, *, domains: frozenset[str] | None = None,
                person_records: Sequence[str] | None = None) -> dict[str, Any]:
    """The record as a Patient resource. ``domains``, when given, keeps only identifiers
    in those systems (PDQm "which domains are returned"). ``person_records``, the ids of
    its person's live, active records oldest first (``PatientService.person_records``),
    makes it obey the PDQm Patient profile: no more than one Patient of a person is
    ``active``. The oldest is, with a ``seealso`` link to each other record; every other
    is ``active: false`` with a ``refer`` link to it ("in use and valid but not considered
    the main source of information"). Without it (a version from the history), the
    record is as its source keeps it."""
    identifiers: list[dict[str, Any]] = [{
        "use": "usual", "system": SOURCE_SYSTEM + patient.source, "value": patient.source_id,
        "assigner": {"display": patient.source}}]
    for ident in patient.identifiers:
        identifiers.append(_drop_none({
            "use": ident.use,
            "type": {"coding": [{"system": V2_0203, "code": ident.type}]} if ident.type else None,
            "system": ident.system, "value": ident.value}))
    if patient.person_id:
        identifiers.append({"use": "secondary", "system": PERSON_SYSTEM,
                            "value": patient.person_id})
    if domains is not None:
        identifiers = [i for i in identifiers if i["system"] in domains]
    resource: dict[str, Any] = {
        "resourceType": "Patient",
        "id": patient.id,
        "meta": {"versionId": str(patient.version), "lastUpdated": instant(patient.updated_at)},
        "extension": [{"url": MOTHERS_MAIDEN_NAME, "valueString": patient.mothers_maiden_name}]
        if patient.mothers_maiden_name else None,
        "identifier": identifiers,
        "active": patient.active and _is_primary(patient, person_records),
        "name": [_name(n) for n in patient.names],
        "telecom": [_telecom(t) for t in patient.telecom],
        "gender": patient.gender,
        "birthDate": patient.birth_date.isoformat() if patient.birth_date
        else patient.birth_date_partial,
    }
    if patient.deceased_date is not None:
        resource["deceasedDateTime"] = patient.deceased_date.isoformat()
    elif patient.deceased:
        resource["deceasedBoolean"] = True
    resource["address"] = [_address(a) for a in patient.addresses]
    if patient.marital_status:
        resource["maritalStatus"] = {"coding": [{
            "system": NULL_FLAVOR if patient.marital_status == "UNK" else MARITAL,
            "code": patient.marital_status}]}
    if patient.multiple_birth_order is not None:
        resource["multipleBirthInteger"] = patient.multiple_birth_order
    elif patient.multiple_birth is not None:
        resource["multipleBirthBoolean"] = patient.multiple_birth
    resource["contact"] = [_drop_none({
        "relationship": [{"coding": [{"system": CONTACT_ROLE, "code": r}]}
                         for r in c.relationship],
        "name": _name(c.name) if c.name else None,
        "telecom": [_telecom(t) for t in c.telecom],
        "address": _address(c.address) if c.address else None,
        "gender": c.gender}) for c in patient.contacts]
    resource["communication"] = [_drop_none({
        "language": {"coding": [{"system": BCP47, "code": c.language}]},
        "preferred": c.preferred}) for c in patient.communication]
    if patient.managing_organization:
        resource["managingOrganization"] = {"display": patient.managing_organization}
    links = []
    if patient.replaced_by:
        links.append({"other": {"reference": f"Patient/{patient.replaced_by}"},
                      "type": "replaced-by"})
    links += [{"other": {"reference": f"Patient/{other}"}, "type": "replaces"}
              for other in patient.replaces or ()]
    links += _person_links(patient, person_records)
    resource["link"] = links
    return _drop_none(resource)


def _is_primary(patient: Patient, records: Sequence[str] | None) -> bool:
    """Whether the record is its person's one active Patient (see :func:`to_resource`)."""
    return not records or patient.id not in records or records[0] == patient.id


def _person_links(patient: Patient, records: Sequence[str] | None) -> list[dict[str, Any]]:
    if not patient.active or not records or patient.id not in records or len(records) < 2:
        return []
    if records[0] != patient.id:
        return [{"other": {"reference": f"Patient/{records[0]}"}, "type": "refer"}]
    return [{"other": {"reference": f"Patient/{other}"}, "type": "seealso"}
            for other in records[1:]]


# --- input --------------------------------------------------------------------------------

# Patient elements: kept (mapped below), dropped on purpose, or refused (not stored yet).
# ``link`` is read by the routes (a source's merge, replaced-by) before this module sees
# the resource; any left here is refused.
_KEPT = {"resourceType", "id", "meta", "identifier", "active", "name", "telecom", "gender",
         "birthDate", "deceasedBoolean", "deceasedDateTime", "address", "extension",
         "multipleBirthBoolean", "multipleBirthInteger", "maritalStatus", "contact",
         "communication", "managingOrganization"}
_DROPPED = {"text", "language"}
_NOT_STORED = {"photo", "generalPractitioner", "contained", "implicitRules"}
_PART_DROPPED = {"id", "extension", "period", "text"}
_PARTS = {
    "name": {"use", "family", "given", "prefix", "suffix"},
    "identifier": {"use", "type", "system", "value", "assigner"},
    "telecom": {"system", "value", "use", "rank"},
    "address": {"use", "type", "line", "city", "district", "state", "postalCode", "country"},
    "contact": {"relationship", "name", "telecom", "address", "gender"},
    "communication": {"language", "preferred"},
}
_DATE_RE = re.compile(r"^\d{4}(-\d{2}(-\d{2})?)?$")
_DATETIME_RE = re.compile(r"^(\d{4}-\d{2}-\d{2})(T[0-9:.]+(Z|[+-]\d{2}:\d{2}))?$")


class _Reader:
    """Collects every problem with its FHIRPath before failing once."""

    def __init__(self) -> None:
        self.problems: list[FieldProblem] = []

    def problem(self, path: str, reason: str) -> None:
        self.problems.append(FieldProblem(path, reason))

    def items(self, resource: dict[str, Any], key: str) -> list[tuple[str, dict[str, Any]]]:
        """The objects of array element ``key``, with their paths, unknown keys reported."""
        value = resource.get(key, [])
        if not isinstance(value, list):
            self.problem(f"Patient.{key}", "must be an array")
            return []
        out = []
        for n, item in enumerate(value):
            path = f"Patient.{key}[{n}]"
            if not isinstance(item, dict):
                self.problem(path, "must be an object")
                continue
            for name in item:
                if name.startswith("_"):
                    continue  # a primitive's id/extensions: nothing to store
                if name == "modifierExtension":
                    self.problem(f"{path}.modifierExtension",
                                 "modifier extensions are not understood by this server")
                elif name not in _PARTS[key] and name not in _PART_DROPPED:
                    self.problem(f"{path}.{name}", "unknown element")
            out.append((path, item))
        return out


def parse_resource(body: bytes | dict[str, Any], *, today: date,
                   resource_id: str | None = None) -> PatientInput:
    """A Patient resource (JSON bytes or an already parsed object) as a record to store.

    ``resource_id`` is the id in the URL of an update: the body's id must equal it.
    Raises :class:`MalformedInput` (400) for a body that is not a JSON Patient and
    :class:`InvalidInput` (422) naming each bad element by its FHIRPath.
    """
    if isinstance(body, bytes):
        reject_duplicate_keys(body)
        try:
            resource = json.loads(body)
        except ValueError as exc:
            raise MalformedInput(f"the body is not valid JSON: {exc}") from None
    else:
        resource = body
    if not isinstance(resource, dict) or resource.get("resourceType") != "Patient":
        raise MalformedInput("the body must be a FHIR Patient resource",
                             [FieldProblem("resourceType", "must be Patient")])
    reader = _Reader()
    for name in resource:
        if name.startswith("_"):
            continue
        if name == "modifierExtension":
            reader.problem("Patient.modifierExtension",
                           "modifier extensions are not understood by this server")
        elif name == "link":
            reader.problem("Patient.link", "only a replaced-by link is accepted, on an update "
                           "(a source's merge)")
        elif name in _NOT_STORED:
            reader.problem(f"Patient.{name}", "is not stored by this server")
        elif name not in _KEPT and name not in _DROPPED:
            reader.problem(f"Patient.{name}", "unknown element")
    if resource_id is not None and resource.get("id") not in (None, resource_id):
        reader.problem("Patient.id", f"must be {resource_id}, the id in the URL")
    elif resource_id is None and "id" in resource:
        # A create: the server assigns the id (FHIR http.html 3.1.0.8.1 says ignore it).
        pass

    record: dict[str, Any] = {}
    paths: dict[str, str] = {}  # the record's field path -> the FHIRPath it came from
    source_paths: list[str] = []
    identifiers: list[dict[str, Any]] = []
    for path, item in reader.items(resource, "identifier"):
        system = item.get("system")
        if isinstance(system, str) and system.startswith(SOURCE_SYSTEM):
            source_paths.append(path)
            record["source"] = system[len(SOURCE_SYSTEM):]
            record["source_id"] = item.get("value")
            paths["source"], paths["source_id"] = f"{path}.system", f"{path}.value"
            continue
        if system == PERSON_SYSTEM:
            continue  # the enterprise identity is the server's to assign
        ident: dict[str, Any] = {"system": system, "value": item.get("value")}
        if "use" in item:
            ident["use"] = item["use"]
        if "type" in item:
            ident["type"] = _v2_type(reader, f"{path}.type", item["type"])
        paths[f"identifiers[{len(identifiers)}]"] = path
        identifiers.append(ident)
    if not source_paths:
        reader.problem("Patient.identifier", f"needs the record's id in its source: system "
                       f"{SOURCE_SYSTEM}<source>, e.g. {SOURCE_SYSTEM}st-marys-ehr")
    elif len(source_paths) > 1:
        reader.problem(source_paths[1], "a record has one source: give one identifier in "
                       f"a {SOURCE_SYSTEM} system")
    record["identifiers"] = identifiers

    record["names"] = []
    for path, item in reader.items(resource, "name"):
        paths[f"names[{len(record['names'])}]"] = path
        record["names"].append({k: item[k] for k in _PARTS["name"] if k in item})
    record["telecom"] = []
    for path, item in reader.items(resource, "telecom"):
        paths[f"telecom[{len(record['telecom'])}]"] = path
        record["telecom"].append({k: item[k] for k in _PARTS["telecom"] if k in item})
    record["addresses"] = []
    for path, item in reader.items(resource, "address"):
        paths[f"addresses[{len(record['addresses'])}]"] = path
        address = {k: item[k] for k in _PARTS["address"] if k in item and k != "postalCode"}
        if "postalCode" in item:
            address["postal_code"] = item["postalCode"]
        record["addresses"].append(address)
    for key, field in (("active", "active"), ("gender", "gender")):
        if key in resource:
            record[field] = resource[key]
    if "birthDate" in resource:
        born = _date(reader, "Patient.birthDate", resource["birthDate"])
        key = "birth_date" if born is None or len(born) == 10 else "birth_date_partial"
        record[key] = born
        paths[key] = "Patient.birthDate"
    if "deceasedBoolean" in resource:
        record["deceased"] = resource["deceasedBoolean"]
        paths["deceased"] = "Patient.deceasedBoolean"
    if "deceasedDateTime" in resource:
        value = resource["deceasedDateTime"]
        match = _DATETIME_RE.match(value) if isinstance(value, str) else None
        if match is None:
            reader.problem("Patient.deceasedDateTime", "must be a full date (YYYY-MM-DD), "
                           "optionally with a time; a partial date is not stored")
        else:
            record["deceased"] = True
            record["deceased_date"] = match.group(1)
        paths["deceased_date"] = "Patient.deceasedDateTime"
    extensions = resource.get("extension", [])
    if not isinstance(extensions, list):
        reader.problem("Patient.extension", "must be an array")
        extensions = []
    for n, ext in enumerate(extensions):
        if isinstance(ext, dict) and ext.get("url") == MOTHERS_MAIDEN_NAME:
            record["mothers_maiden_name"] = ext.get("valueString")
            paths["mothers_maiden_name"] = f"Patient.extension[{n}].valueString"
        # Other extensions say nothing this server stores: dropped (not modifiers).
    if "maritalStatus" in resource:
        record["marital_status"] = _code(reader, "Patient.maritalStatus",
                                         resource["maritalStatus"], (MARITAL, NULL_FLAVOR))
    record["communication"] = []
    for path, item in reader.items(resource, "communication"):
        paths[f"communication[{len(record['communication'])}]"] = path
        entry: dict[str, Any] = {"language": _code(reader, f"{path}.language",
                                                   item.get("language"), (BCP47,))}
        if "preferred" in item:
            entry["preferred"] = item["preferred"]
        record["communication"].append(entry)
    record["contacts"] = []
    for path, item in reader.items(resource, "contact"):
        paths[f"contacts[{len(record['contacts'])}]"] = path
        contact: dict[str, Any] = {k: item[k] for k in ("name", "telecom", "gender")
                                   if k in item}
        roles = item.get("relationship", [])
        contact["relationship"] = [_code(reader, f"{path}.relationship[{n}]", r,
                                         (CONTACT_ROLE,))
                                   for n, r in enumerate(roles if isinstance(roles, list)
                                                         else [roles])]
        if isinstance(item.get("address"), dict):
            address = {k: v for k, v in item["address"].items() if k in _PARTS["address"]
                       and k != "postalCode"}
            if "postalCode" in item["address"]:
                address["postal_code"] = item["address"]["postalCode"]
            contact["address"] = address
        record["contacts"].append(contact)
    if "managingOrganization" in resource:
        organization = resource["managingOrganization"]
        display = organization.get("display") if isinstance(organization, dict) else None
        if not isinstance(display, str):
            reader.problem("Patient.managingOrganization",
                           "needs a display (the organization's name; references to "
                           "Organization resources are not kept)")
        else:
            record["managing_organization"] = display
            paths["managing_organization"] = "Patient.managingOrganization.display"
    if "multipleBirthBoolean" in resource:
        record["multiple_birth"] = resource["multipleBirthBoolean"]
        paths["multiple_birth"] = "Patient.multipleBirthBoolean"
    if "multipleBirthInteger" in resource:
        record["multiple_birth_order"] = resource["multipleBirthInteger"]
        paths["multiple_birth_order"] = "Patient.multipleBirthInteger"
    if reader.problems:
        raise InvalidInput(reader.problems, "the Patient is invalid")
    try:
        return parse_patient(json.dumps(record).encode(), today=today)
    except InvalidInput as exc:
        raise InvalidInput([FieldProblem(_fhir_path(p.field, paths), p.reason)
                            for p in exc.problems], "the Patient is invalid") from None


def _date(reader: _Reader, path: str, value: Any) -> Any:
    if not isinstance(value, str) or not _DATE_RE.match(value):
        reader.problem(path, "must be a date: YYYY, YYYY-MM or YYYY-MM-DD")
        return None
    return value


def _code(reader: _Reader, path: str, value: Any, systems: tuple[str, ...]) -> str | None:
    """The code of a CodeableConcept's first coding in one of ``systems``."""
    codings = value.get("coding") if isinstance(value, dict) else None
    if isinstance(codings, list):
        for coding in codings:
            if isinstance(coding, dict) and coding.get("system") in systems:
                code = coding.get("code")
                if isinstance(code, str):
                    return code
    reader.problem(path, f"needs a coding from {' or '.join(systems)}")
    return None


def _v2_type(reader: _Reader, path: str, value: Any) -> str | None:
    """An identifier type: one HL7 v2 table 0203 coding (the only kind stored)."""
    codings = value.get("coding") if isinstance(value, dict) else None
    if isinstance(codings, list):
        for coding in codings:
            if isinstance(coding, dict) and coding.get("system") == V2_0203:
                code = coding.get("code")
                return code if isinstance(code, str) else None
    reader.problem(path, f"needs a coding from {V2_0203} (e.g. MR, SS, DL)")
    return None


_RENAMES = {"birth_date": "birthDate", "birth_date_partial": "birthDate",
            "deceased_date": "deceasedDateTime", "postal_code": "postalCode",
            "deceased": "deceasedBoolean", "marital_status": "maritalStatus",
            "managing_organization": "managingOrganization", "contacts": "contact"}


def fhir_problems(exc: InvalidInput) -> InvalidInput:
    """A service's field problems (record field names) with FHIRPaths instead."""
    return InvalidInput([FieldProblem(_fhir_path(p.field, {}), p.reason)
                         for p in exc.problems], exc.message)


def _fhir_path(field: str, paths: dict[str, str]) -> str:
    """The FHIRPath of a record field path such as ``names[0].family``."""
    if field in paths:
        return paths[field]
    head, dot, rest = field.partition(".")
    if head in paths:
        tail = ".".join(_RENAMES.get(p, p) for p in rest.split(".")) if dot else ""
        return paths[head] + ("." + tail if tail else "")
    if field == "body":
        return "Patient"
    top = {"names": "name", "identifiers": "identifier", "addresses": "address",
           "contacts": "contact"}
    return "Patient." + top.get(head, _RENAMES.get(head, head)) + (dot + rest if dot else "")
