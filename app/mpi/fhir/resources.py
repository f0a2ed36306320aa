"""FHIR R4 routes (http.html; PDQm ITI-78/ITI-119; PIXm ITI-83) over the same services.

Every responder declares its SMART scope like the REST API's, and every read, search,
match and write is audited by the service it calls. Errors leave as OperationOutcome
(``mpi.api.errors`` renders every error under ``/fhir`` so).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import falcon

from mpi import version
from mpi.api.access import actor_for, public, requires
from mpi.api.errors import Problem
from mpi.api.openapi import Param, operation
from mpi.api.resources.common import MAX_BODY_BYTES, json_body, read_body
from mpi.domain.access import smart
from mpi.domain.criteria import Criteria, Term, Token
from mpi.domain.errors import Deleted, FieldProblem, InvalidInput, reject_duplicate_keys
from mpi.domain.patient import Patient, PatientInput
from mpi.fhir import PERSON_SYSTEM, SOURCE_SYSTEM
from mpi.fhir.capability import capability_statement
from mpi.fhir.formats import CONTENT_TYPES, Format, named, parse_accept, wanted
from mpi.fhir.patient import fhir_problems, instant, parse_resource, to_resource
from mpi.fhir.search import (
    Search,
    SearchError,
    identifier_token,
    parse,
    parse_pairs,
    split_values,
    system_of,
)
from mpi.fhir.xml import from_xml, to_xml
from mpi.identity.match import MatchService
from mpi.identity.persons import PersonService
from mpi.patients.domains import DomainService
from mpi.patients.service import PatientService

BASE = "/fhir"
MATCH_GRADE = "http://hl7.org/fhir/StructureDefinition/match-grade"
_TAGS = ["fhir"]


# --- formats -------------------------------------------------------------------------------

def negotiate(req: falcon.Request) -> Format:
    """The answer's format (kept on ``req.context``); 406 unless JSON or XML will do."""
    chosen = response_format(req)
    if chosen is None:
        raise _not_acceptable("this server answers in application/fhir+json or "
                              "application/fhir+xml (_format=json or _format=xml)")
    return chosen


def response_format(req: falcon.Request) -> Format | None:
    accept = req.get_header("Accept")
    chosen = wanted(req.get_param("_format"), accept, parse_accept(accept) if accept else None)
    req.context.fhir_format = chosen
    return chosen


def _not_acceptable(detail: str) -> Problem:
    return Problem(falcon.HTTP_406, "Not acceptable", detail,
                   extra={"fhir_code": "not-supported"})


def fhir_body(req: falcon.Request, resp: falcon.Response, resource: Any,
              params: dict[str, Any]) -> None:
    """A FHIR body: JSON (``application/fhir+json``, ``application/json``) left as bytes in
    ``req.context.body``, or XML (``application/fhir+xml``, ``application/xml``) read into
    its JSON form; 415 for anything else."""
    negotiate(req)
    kind = named(req.content_type)
    if kind is None:
        raise Problem(falcon.HTTP_415, "Unsupported media type",
                      "send the body as application/fhir+json or application/fhir+xml")
    if kind == "json":
        json_body(req, resp, resource, params)
        return
    req.context.body = from_xml(read_body(req))


def send(req: falcon.Request, resp: falcon.Response, body: dict[str, Any],
         status: str = falcon.HTTP_200) -> None:
    kind: Format = getattr(req.context, "fhir_format", None) or "json"
    resp.status = status
    resp.content_type = CONTENT_TYPES[kind]
    resp.data = to_xml(body) if kind == "xml" else json.dumps(body, ensure_ascii=False).encode()


def base_url(req: falcon.Request) -> str:
    return req.prefix + BASE


def _version_headers(resp: falcon.Response, patient: Patient) -> None:
    resp.set_header("ETag", f'W/"{patient.version}"')
    resp.last_modified = patient.updated_at


def _if_match(req: falcon.Request) -> int | None:
    """The version an ``If-Match: W/"n"`` names (weak or strong), else None."""
    header = req.get_header("If-Match")
    if header is None:
        return None
    tag = header.strip()
    tag = tag[2:] if tag.startswith("W/") else tag
    tag = tag.strip('"')
    if not tag.isdigit() or len(tag) > 9:
        raise Problem(falcon.HTTP_412, "Precondition failed",
                      'If-Match must name a version, e.g. W/"3"')
    return int(tag)


def _prefer_return(req: falcon.Request) -> str:
    for part in (req.get_header("Prefer") or "").split(","):
        name, _, value = part.strip().partition("=")
        if name.strip().lower() == "return":
            return value.strip().strip('"').lower()
    return "representation"


def rendered(patients: PatientService, records: Sequence[Patient], *,
             domains: frozenset[str] | None = None) -> list[dict[str, Any]]:
    """``records`` as Patient resources with their person's links: one statement finds
    each person's live, active records, so that no more than one Patient of a person is
    active (PDQm Patient profile; :func:`mpi.fhir.patient.to_resource`)."""
    persons = patients.person_records({p.person_id for p in records if p.person_id})
    return [to_resource(p, domains=domains, person_records=persons.get(p.person_id or ""))
            for p in records]


def _written(req: falcon.Request, resp: falcon.Response, patients: PatientService,
             patient: Patient, status: str) -> None:
    """The answer to a create or update: headers, and the body ``Prefer`` asks for."""
    location = f"{base_url(req)}/Patient/{patient.id}/_history/{patient.version}"
    resp.location = location if status == falcon.HTTP_201 else None
    if status != falcon.HTTP_201:
        resp.set_header("Content-Location", location)
    _version_headers(resp, patient)
    prefer = _prefer_return(req)
    if prefer == "minimal":
        resp.status = status
        return
    if prefer == "operationoutcome":
        send(req, resp, {"resourceType": "OperationOutcome", "issue": [{
            "severity": "information", "code": "informational",
            "diagnostics": f"Patient/{patient.id} version {patient.version} stored"}]}, status)
        return
    send(req, resp, rendered(patients, [patient])[0], status)


def _search_of(req: falcon.Request, pairs: list[tuple[str, str]]) -> Search:
    try:
        return parse(pairs)
    except SearchError as exc:
        raise Problem(falcon.HTTP_400, "Bad request", "a search parameter is invalid",
                      errors=exc.problems) from None


def _query_pairs(req: falcon.Request) -> list[tuple[str, str]]:
    try:
        return parse_pairs(req.query_string)
    except SearchError as exc:
        raise Problem(falcon.HTTP_400, "Bad request", "the query string is invalid",
                      errors=exc.problems) from None


def _conditions(req: falcon.Request, pairs: list[tuple[str, str]]) -> Search:
    """A conditional request's criteria (``_format`` says how to answer, not what)."""
    return _search_of(req, [(k, v) for k, v in pairs if k != "_format"])


def _matches(patients: PatientService, req: falcon.Request, search: Search,
             what: str) -> list[Patient]:
    """Up to two live records matching a conditional request's criteria (more is 412)."""
    if not search.criteria.terms:
        raise Problem(falcon.HTTP_412, "Precondition failed",
                      f"a conditional {what} needs search criteria, e.g. "
                      "identifier=system|value")
    found = patients.find(search.criteria, actor_for(req), offset=0, count=2, total=False)
    if len(found.items) > 1:
        raise Problem(falcon.HTTP_412, "Precondition failed",
                      f"the criteria of this conditional {what} match more than one Patient; "
                      "make them more selective")
    return found.items


# --- resources -------------------------------------------------------------------------------

class FhirMetadata:
    @public
    @operation("FHIR CapabilityStatement", tags=_TAGS,
               responses={200: ("The CapabilityStatement (application/fhir+json)", None)})
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        negotiate(req)
        send(req, resp, capability_statement(base_url(req), version()))


class FhirPatientType:
    """``[base]/Patient``: search (ITI-78), create, conditional update and delete."""

    def __init__(self, patients: PatientService, domains: DomainService):
        self._patients = patients
        self._domains = domains

    @requires(smart("Patient", "s"), transaction="ITI-78")
    @operation("FHIR Patient search (PDQm ITI-78)", tags=_TAGS,
               params=tuple(Param(p, "query", f"FHIR search parameter {p}")
                            for p in ("family", "given", "identifier", "birthdate",
                                      "_count")),
               responses={200: ("A searchset Bundle", None),
                          400: ("A parameter is invalid (OperationOutcome)", None),
                          404: ("An identifier domain is not known (PDQm case 4)", None)})
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        negotiate(req)
        search_patients(self._patients, self._domains, req, resp, _query_pairs(req))

    @requires(smart("Patient", "c"))
    @operation("FHIR Patient create (conditional with If-None-Exist)", tags=_TAGS,
               responses={201: ("Created", None), 200: ("If-None-Exist matched one", None),
                          400: ("Not a FHIR Patient", None),
                          412: ("If-None-Exist matched several", None),
                          415: ("Not FHIR JSON", None),
                          422: ("An element is invalid (OperationOutcome)", None)})
    @falcon.before(fhir_body)
    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        sent = _sent(req)
        if sent.survivor is not None:
            raise InvalidInput([FieldProblem("Patient.link", "a new record cannot replace "
                                             "another; merge by updating the subsumed one")])
        _with_source(self._domains, sent.resource, [], actor_for(req))
        data = parse_resource(sent.resource, today=self._patients.today())
        condition = req.get_header("If-None-Exist")
        if condition is not None:
            try:
                pairs = parse_pairs(condition.lstrip("?"))
            except SearchError as exc:
                raise Problem(falcon.HTTP_400, "Bad request", "If-None-Exist is invalid",
                              errors=exc.problems) from None
            existing = _matches(self._patients, req, _conditions(req, pairs), "create")
            if existing:
                _written(req, resp, self._patients, existing[0], falcon.HTTP_200)
                return
        patient = self._patients.create(data, actor_for(req))
        _written(req, resp, self._patients, patient, falcon.HTTP_201)

    @requires(smart("Patient", "u"), transaction="ITI-104")
    @operation("FHIR Patient conditional update (PIXm ITI-104 add/revise)", tags=_TAGS,
               responses={200: ("Updated", None), 201: ("No match: created", None),
                          412: ("The criteria match several", None)})
    @falcon.before(fhir_body)
    def on_put(self, req: falcon.Request, resp: falcon.Response) -> None:
        conditions = _conditions(req, _query_pairs(req))
        self._may_feed(req, conditions)
        existing = _matches(self._patients, req, conditions, "update")
        actor = actor_for(req)
        sent = _sent(req)
        _with_source(self._domains, sent.resource, _criteria_identifiers(conditions), actor)
        if not existing:
            if sent.survivor is not None:
                raise InvalidInput([FieldProblem("Patient.link", "no Patient matches the "
                                                 "criteria: there is no record to merge")])
            principal = getattr(req.context, "principal", None)
            need = smart("Patient", "c")
            if principal is not None and not principal.may(need, "ITI-104"):
                raise Problem(falcon.HTTP_403, "Forbidden",
                              f"no Patient matches, and creating one needs the scope {need} "
                              "(or ITI-104)")
            data = parse_resource(sent.resource, today=self._patients.today())
            _written(req, resp, self._patients, self._patients.create(data, actor),
                     falcon.HTTP_201)
            return
        target = existing[0]
        data = parse_resource(sent.resource, today=self._patients.today(),
                              resource_id=target.id)
        merged = _update_or_merge(self._patients, req, target.id, data, sent)
        _written(req, resp, self._patients, merged, falcon.HTTP_200)

    @requires(smart("Patient", "d"), transaction="ITI-104")
    @operation("FHIR Patient conditional delete (PIXm ITI-104 remove)", tags=_TAGS,
               responses={204: ("Deleted, or nothing matched", None),
                          412: ("The criteria match several", None)})
    def on_delete(self, req: falcon.Request, resp: falcon.Response) -> None:
        negotiate(req)
        conditions = _conditions(req, _query_pairs(req))
        self._may_feed(req, conditions)
        existing = _matches(self._patients, req, conditions, "delete")
        if existing:
            self._patients.delete(existing[0].id, actor_for(req), expected_version=None)
        resp.status = falcon.HTTP_204

    def _may_feed(self, req: falcon.Request, conditions: Search) -> None:
        """PIXm ITI-104: a source feeds (revises, removes) records only by identifiers in
        the domains it may assign in; 403 naming the domain otherwise."""
        actor = actor_for(req)
        for term in conditions.criteria.terms:
            for token in term.values if term.subject == "identifier" else ():
                if isinstance(token, Token) and (token.system or token.kind == "person"):
                    system = system_of(token)
                    if not self._domains.may_feed(system, actor):
                        raise Problem(falcon.HTTP_403, "Forbidden",
                                      f"this client's sources may not assign identifiers in "
                                      f"the domain {system}", extra={"fhir_code": "forbidden"})


@dataclass
class _Sent:
    """A Patient body as sent: the resource without its ``link``, and the record a
    ``replaced-by`` link names (an id, or an identifier to find it by)."""

    resource: Any
    survivor: str | Token | None


def _sent(req: falcon.Request) -> _Sent:
    resource = _json(req.context.body)
    if not isinstance(resource, dict) or "link" not in resource:
        return _Sent(resource, None)
    resource = dict(resource)
    links = resource.pop("link")
    path = "Patient.link"
    if not isinstance(links, list) or not links or not all(isinstance(x, dict) for x in links):
        raise InvalidInput([FieldProblem(path, "give one link, of type replaced-by")])
    # The links the server writes (replaces, and its person's seealso and refer), sent back
    # by a client that read, changed and updated the record, are not the source's to set.
    sent = [(n, x) for n, x in enumerate(links) if x.get("type") not in SERVER_LINKS]
    if not sent:
        if resource.get("active") is False:
            if any(x.get("type") == "refer" for x in links):
                # The server's own answer for a record that is not its person's active
                # Patient: the record stays as its source keeps it (active).
                resource["active"] = True
            else:
                raise InvalidInput([FieldProblem(f"{path}[0].type", "a merge names its "
                                                 "survivor with a replaced-by link")])
        return _Sent(resource, None)
    if len(sent) != 1:
        raise InvalidInput([FieldProblem(path, "give one link, of type replaced-by")])
    n, link = sent[0]
    if link.get("type") != "replaced-by":
        raise InvalidInput([FieldProblem(f"{path}[{n}].type", "only replaced-by is accepted "
                                         "from a source (the server writes replaces, seealso "
                                         "and refer)")])
    other = link.get("other")
    if isinstance(other, dict) and isinstance(other.get("reference"), str):
        reference = other["reference"]
        base = base_url(req) + "/"
        local = reference[len(base):] if reference.startswith(base) else reference
        kind, _, record_id = local.partition("/")
        if kind != "Patient" or "/" in record_id or not record_id:
            raise InvalidInput([FieldProblem(f"{path}[{n}].other.reference",
                                             "must be Patient/<id> on this server")])
        return _Sent(resource, record_id)
    ident = other.get("identifier") if isinstance(other, dict) else None
    if isinstance(ident, dict) and isinstance(ident.get("system"), str) and isinstance(
            ident.get("value"), str):
        return _Sent(resource, identifier_token(ident["system"], ident["value"]))
    raise InvalidInput([FieldProblem(f"{path}[{n}].other", "needs a reference "
                                     "(Patient/<id>) or an identifier with system and value")])


#: Patient.link types the server writes; sent back, they are ignored.
SERVER_LINKS = ("replaces", "seealso", "refer")


def _update_or_merge(patients: PatientService, req: falcon.Request, record_id: str,
                     data: PatientInput, sent: _Sent) -> Patient:
    actor = actor_for(req)
    if sent.survivor is None:
        return patients.update(record_id, data, actor, expected_version=_if_match(req))
    survivor = sent.survivor
    if isinstance(survivor, Token):
        found = patients.find(Criteria((Term("identifier", (survivor,)),)), actor, offset=0,
                              count=2, total=False).items
        if len(found) != 1:
            raise InvalidInput([FieldProblem(
                "Patient.link[0].other.identifier",
                "matches no live Patient" if not found else "matches several Patients")])
        survivor = found[0].id
    try:
        return patients.merge_into(record_id, data, survivor, actor,
                                   expected_version=_if_match(req))
    except InvalidInput as exc:
        raise fhir_problems(exc) from None


def _criteria_identifiers(conditions: Search) -> list[tuple[str, str]]:
    """The (system, value) identifiers a conditional request's criteria name."""
    return [(t.system, t.value) for term in conditions.criteria.terms
            if term.subject == "identifier"
            for t in term.values if isinstance(t, Token) and t.kind == "identifier"
            and t.system and t.value]


def _with_source(domains: DomainService, resource: Any, criteria: list[tuple[str, str]],
                 actor: Any) -> None:
    """Give a Patient sent without its ``urn:mpi:source:`` identifier one, when the
    registered domains settle whose record it is (a PIXm source sends only the identifier
    in its own domain): the criteria's identifier first, then the body's."""
    if not isinstance(resource, dict) or not isinstance(resource.get("identifier", []), list):
        return
    identifiers = resource.get("identifier", [])
    if any(isinstance(i, dict) and str(i.get("system", "")).startswith(SOURCE_SYSTEM)
           for i in identifiers):
        return
    body = [(i["system"], i["value"]) for i in identifiers if isinstance(i, dict)
            and isinstance(i.get("system"), str) and isinstance(i.get("value"), str)]
    found = domains.source_for([*criteria, *body], actor)
    if found is not None:
        source, record_id = found
        resource["identifier"] = [{"system": SOURCE_SYSTEM + source, "value": record_id},
                                  *identifiers]


class FhirPatientSearch:
    """``POST [base]/Patient/_search``: the same search with form-encoded parameters."""

    def __init__(self, patients: PatientService, domains: DomainService):
        self._patients = patients
        self._domains = domains

    @requires(smart("Patient", "s"), transaction="ITI-78")
    @operation("FHIR Patient search by POST (PDQm ITI-78)", tags=_TAGS,
               responses={200: ("A searchset Bundle", None),
                          415: ("Not application/x-www-form-urlencoded", None)})
    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        negotiate(req)
        content_type = (req.content_type or "").split(";")[0].strip().lower()
        if content_type not in ("", "application/x-www-form-urlencoded"):
            raise Problem(falcon.HTTP_415, "Unsupported media type",
                          "send the parameters as application/x-www-form-urlencoded")
        raw = req.bounded_stream.read(MAX_BODY_BYTES + 1)
        if len(raw) > MAX_BODY_BYTES:
            raise Problem(falcon.HTTP_413, "Content too large", "the form is too large")
        try:
            form = parse_pairs(raw.decode("ascii"))
        except (UnicodeDecodeError, SearchError):
            raise Problem(falcon.HTTP_400, "Bad request",
                          "the form is not percent-encoded UTF-8") from None
        search_patients(self._patients, self._domains, req, resp, _query_pairs(req) + form)


def search_patients(patients: PatientService, domains: DomainService, req: falcon.Request,
                    resp: falcon.Response, pairs: list[tuple[str, str]]) -> None:
    search = _search_of(req, pairs)
    if search.domains is not None:
        unknown = domains.unknown(search.domains)
        if unknown:
            names = ", ".join(unknown)
            raise Problem(falcon.HTTP_404, "Not found", f"targetSystem not found: {names}",
                          extra={"fhir_severity": "warning", "fhir_code": "not-found"})
    found = patients.find(search.criteria, actor_for(req), offset=search.offset,
                          count=search.count, total=search.total)
    base = f"{base_url(req)}/Patient"
    links = [{"relation": "self", "url": f"{base}?{search.query_string(offset=search.offset)}"}]
    if not search.summary_count:
        links.append({"relation": "first", "url": f"{base}?{search.query_string()}"})
        if search.offset > 0:
            previous = max(0, search.offset - search.count)
            links.append({"relation": "previous",
                          "url": f"{base}?{search.query_string(offset=previous)}"})
        if found.more:
            links.append({"relation": "next", "url": f"{base}?"
                          f"{search.query_string(offset=search.offset + search.count)}"})
    bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset"}
    if found.total is not None:
        bundle["total"] = found.total
    bundle["link"] = links
    entries = [{"fullUrl": f"{base}/{p.id}", "resource": resource, "search": {"mode": "match"}}
               for p, resource in zip(found.items, rendered(patients, found.items,
                                                            domains=search.domains),
                                      strict=True)]
    if search.ignored:
        entries.append({"resource": {"resourceType": "OperationOutcome", "issue": [{
            "severity": "warning", "code": "not-supported",
            "diagnostics": "ignored unknown parameters: " + ", ".join(
                sorted(set(search.ignored)))[:500]}]}, "search": {"mode": "outcome"}})
    if entries:
        bundle["entry"] = entries
    send(req, resp, bundle)


class FhirPatientInstance:
    """``[base]/Patient/{id}``: read, update, delete."""

    def __init__(self, patients: PatientService):
        self._patients = patients

    @requires(smart("Patient", "r"), transaction="ITI-78")
    @operation("FHIR Patient read", tags=_TAGS,
               responses={200: ("The Patient", None), 304: ("Not modified", None),
                          404: ("No such Patient", None), 410: ("Deleted", None)})
    def on_get(self, req: falcon.Request, resp: falcon.Response, patient_id: object) -> None:
        negotiate(req)
        patient = self._patients.get(str(patient_id), actor_for(req))
        _version_headers(resp, patient)
        tags = req.get_header("If-None-Match")
        if tags and any(t.strip().removeprefix("W/").strip('"') in (str(patient.version), "*")
                        for t in tags.split(",")):
            resp.status = falcon.HTTP_304
            return
        send(req, resp, rendered(self._patients, [patient])[0])

    @requires(smart("Patient", "u"))
    @operation("FHIR Patient update", tags=_TAGS,
               responses={200: ("Updated", None), 400: ("Not a FHIR Patient", None),
                          404: ("No such Patient (ids are the server's)", None),
                          412: ("If-Match names another version", None),
                          422: ("An element is invalid (OperationOutcome)", None)})
    @falcon.before(fhir_body)
    def on_put(self, req: falcon.Request, resp: falcon.Response, patient_id: object) -> None:
        sent = _sent(req)
        data = parse_resource(sent.resource, today=self._patients.today(),
                              resource_id=str(patient_id))
        updated = _update_or_merge(self._patients, req, str(patient_id), data, sent)
        _written(req, resp, self._patients, updated, falcon.HTTP_200)

    @requires(smart("Patient", "d"))
    @operation("FHIR Patient delete", tags=_TAGS,
               responses={204: ("Deleted", None), 404: ("No such Patient", None)})
    def on_delete(self, req: falcon.Request, resp: falcon.Response,
                  patient_id: object) -> None:
        negotiate(req)
        # Deleting what is already deleted succeeds (http.html, delete).
        with contextlib.suppress(Deleted):
            self._patients.delete(str(patient_id), actor_for(req),
                                  expected_version=_if_match(req))
        resp.status = falcon.HTTP_204


class FhirPatientVersion:
    """``[base]/Patient/{id}/_history/{vid}``: vread, from the change log."""

    def __init__(self, patients: PatientService):
        self._patients = patients

    @requires(smart("Patient", "r"))
    @operation("FHIR Patient vread", tags=_TAGS,
               responses={200: ("That version", None), 404: ("No such version", None),
                          410: ("That version is the deletion", None)})
    def on_get(self, req: falcon.Request, resp: falcon.Response, patient_id: object,
               version_id: int) -> None:
        negotiate(req)
        found = self._patients.versions(str(patient_id), actor_for(req), version=version_id)
        if not found:
            raise Problem(falcon.HTTP_404, "Not found",
                          f"Patient/{patient_id} has no version {version_id}")
        if found[0].patient is None:
            raise Problem(falcon.HTTP_410, "Gone",
                          f"version {version_id} of Patient/{patient_id} is its deletion")
        _version_headers(resp, found[0].patient)
        send(req, resp, to_resource(found[0].patient))


class FhirPatientHistory:
    """``[base]/Patient/{id}/_history``: every version, newest first."""

    def __init__(self, patients: PatientService):
        self._patients = patients

    @requires(smart("Patient", "r"))
    @operation("FHIR Patient history", tags=_TAGS,
               responses={200: ("A history Bundle, newest first", None),
                          404: ("No such Patient", None)})
    def on_get(self, req: falcon.Request, resp: falcon.Response, patient_id: object) -> None:
        negotiate(req)
        versions = self._patients.versions(str(patient_id), actor_for(req))
        base = f"{base_url(req)}/Patient/{patient_id}"
        entries = []
        for v in versions:
            entry: dict[str, Any] = {"fullUrl": base}
            if v.patient is not None:
                entry["resource"] = to_resource(v.patient)
            method, status = (("DELETE", "204 No Content") if v.deleted else
                              ("POST", "201 Created") if v.version == 1 else ("PUT", "200 OK"))
            entry["request"] = {"method": method,
                                "url": "Patient" if method == "POST" else f"Patient/{patient_id}"}
            entry["response"] = {"status": status, "etag": f'W/"{v.version}"',
                                 "lastModified": instant(v.occurred_at)}
            entries.append(entry)
        bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "history",
                                  "total": len(entries),
                                  "link": [{"relation": "self", "url": f"{base}/_history"}]}
        if entries:
            bundle["entry"] = entries
        send(req, resp, bundle)


class FhirPerson:
    """``[base]/Person/{id}``: the enterprise identity, a ``Person`` whose links are its
    records, with how sure the link is (``assurance``)."""

    def __init__(self, persons: PersonService):
        self._persons = persons

    @requires(smart("Person", "r"))
    @operation("FHIR Person read (the enterprise identity)", tags=_TAGS,
               responses={200: ("The Person", None), 404: ("No such person", None)})
    def on_get(self, req: falcon.Request, resp: falcon.Response, person_id: object) -> None:
        negotiate(req)
        person = self._persons.person(str(person_id), actor_for(req))
        send(req, resp, person_resource(person))


def person_resource(person: Any) -> dict[str, Any]:
    """A person as FHIR ``Person``: active unless merged into another (then a link to
    that one), and a link to each live record with an identity-assurance level: level4 a
    person's hand (steward or source merge), level3 the engine's certain link, level2 a
    record placed as new or after review."""
    links: list[dict[str, Any]] = []
    if person.merged_into:
        links.append({"target": {"reference": f"Person/{person.merged_into}"},
                      "assurance": "level4"})
    for record in person.records:
        level = ("level4" if record.manual else
                 "level3" if record.how == "auto" else "level2")
        links.append({"target": {"reference": f"Patient/{record.patient.id}"},
                      "assurance": level})
    resource: dict[str, Any] = {
        "resourceType": "Person", "id": person.id,
        "meta": {"lastUpdated": instant(person.updated_at)},
        "identifier": [{"use": "official", "system": PERSON_SYSTEM, "value": person.id}],
        "active": person.status == "active",
    }
    if links:
        resource["link"] = links
    return resource


# --- operations ------------------------------------------------------------------------------

def _json(body: bytes | dict[str, Any]) -> Any:
    """A JSON body parsed (an XML one arrives parsed); 400 when it is not JSON."""
    if isinstance(body, dict):
        return body
    reject_duplicate_keys(body)
    try:
        return json.loads(body)
    except ValueError as exc:
        raise Problem(falcon.HTTP_400, "Bad request", f"the body is not JSON: {exc}") from None


def _parameters(body: bytes | dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """A ``Parameters`` resource's parameters by name."""
    resource = _json(body)
    if not isinstance(resource, dict) or resource.get("resourceType") != "Parameters":
        raise Problem(falcon.HTTP_400, "Bad request", "the body must be a Parameters resource")
    if resource.get("modifierExtension"):
        raise _unknown_modifier("Parameters.modifierExtension")
    out: dict[str, list[dict[str, Any]]] = {}
    params = resource.get("parameter", [])
    if not isinstance(params, list):
        raise Problem(falcon.HTTP_400, "Bad request", "Parameters.parameter must be an array")
    for n, param in enumerate(params):
        if not isinstance(param, dict) or not isinstance(param.get("name"), str):
            raise Problem(falcon.HTTP_400, "Bad request",
                          f"Parameters.parameter[{n}] needs a name")
        if param.get("modifierExtension"):
            raise _unknown_modifier(f"Parameters.parameter[{n}].modifierExtension")
        out.setdefault(param["name"], []).append(param)
    return out


def _unknown_modifier(path: str) -> Problem:
    return Problem(falcon.HTTP_400, "Bad request", "a modifier extension is not understood",
                   errors=[FieldProblem(path, "modifier extensions are not understood by "
                                              "this server")])


class FhirMatch:
    """``POST [base]/Patient/$match`` (ITI-119): ranked, graded records of likely persons."""

    def __init__(self, matching: MatchService, persons: PersonService,
                 patients: PatientService):
        self._matching = matching
        self._persons = persons
        self._patients = patients

    @requires(smart("Patient", "s"), transaction="ITI-119")
    @operation("FHIR Patient $match (PDQm ITI-119)", tags=_TAGS,
               responses={200: ("A searchset Bundle, most likely first", None),
                          400: ("Not a Parameters or Patient; unknown modifier", None),
                          422: ("The Patient is invalid", None)})
    @falcon.before(fhir_body)
    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        body = req.context.body
        only_certain, count = False, 10
        parsed = _json(body)
        if isinstance(parsed, dict) and parsed.get("resourceType") == "Parameters":
            params = _parameters(parsed)
            resources = params.get("resource", [])
            if len(resources) != 1 or not isinstance(resources[0].get("resource"), dict):
                raise Problem(falcon.HTTP_400, "Bad request",
                              "Parameters needs exactly one 'resource' holding a Patient")
            patient_json = resources[0]["resource"]
            for param in params.get("onlyCertainMatches", [])[:1]:
                if not isinstance(param.get("valueBoolean"), bool):
                    raise Problem(falcon.HTTP_400, "Bad request",
                                  "onlyCertainMatches needs valueBoolean")
                only_certain = param["valueBoolean"]
            for param in params.get("count", [])[:1]:
                value = param.get("valueInteger")
                if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 100:
                    raise Problem(falcon.HTTP_400, "Bad request",
                                  "count needs valueInteger from 1 to 100")
                count = value
        else:
            patient_json = parsed
        data = _match_input(patient_json, self._patients.today())
        actor = actor_for(req)
        result = self._matching.match(data, actor, limit=max(count, 10))
        candidates = [c for c in result.candidates if c.grade != "unlikely"]
        if only_certain:
            certain = [c for c in candidates if c.grade == "certain"]
            candidates = certain if len(certain) == 1 else []
        base = f"{base_url(req)}/Patient"
        entries: list[dict[str, Any]] = []
        records_of = self._persons.records_of([c.person_id for c in candidates], actor) \
            if candidates else {}
        ranked = [(candidate, patient) for candidate in candidates
                  for patient in sorted(records_of.get(candidate.person_id, []),
                                        key=lambda p: p.id != candidate.best_record_id)]
        ranked = ranked[:count]
        for (candidate, patient), resource in zip(
                ranked, rendered(self._patients, [p for _, p in ranked]), strict=True):
            entries.append({
                "fullUrl": f"{base}/{patient.id}",
                "resource": resource,
                "search": {"extension": [{"url": MATCH_GRADE, "valueCode": candidate.grade}],
                           "mode": "match", "score": round(candidate.probability, 6)}})
        bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset",
                                  "total": len(entries)}
        if entries:
            bundle["entry"] = entries
        send(req, resp, bundle)


def _match_input(resource: dict[str, Any], today: Any) -> PatientInput:
    """The Patient to match: as a stored record, but it needs no source identifier."""
    if isinstance(resource, dict) and resource.get("resourceType") == "Patient":
        identifiers = resource.get("identifier")
        has_source = isinstance(identifiers, list) and any(
            isinstance(i, dict) and str(i.get("system", "")).startswith(SOURCE_SYSTEM)
            for i in identifiers)
        if not has_source:
            resource = {**resource, "identifier": [
                *(identifiers if isinstance(identifiers, list) else []),
                {"system": SOURCE_SYSTEM + "match", "value": "match-input"}]}
    return parse_resource(resource, today=today)


class FhirPix:
    """``[base]/Patient/$ihe-pix`` (ITI-83): every identifier of the person a source
    identifier belongs to, and a reference to each of its records."""

    def __init__(self, patients: PatientService, persons: PersonService,
                 domains: DomainService):
        self._patients = patients
        self._persons = persons
        self._domains = domains

    @requires(smart("Patient", "r"), transaction="ITI-83")
    @operation("PIXm $ihe-pix (ITI-83)", tags=_TAGS,
               params=(Param("sourceIdentifier", "query", "system|value", required=True),
                       Param("targetSystem", "query", "A domain to return (repeatable)")),
               responses={200: ("Parameters with targetIdentifier and targetId", None),
                          400: ("The source domain is not known", None),
                          403: ("A target domain is not known", None),
                          404: ("The source identifier is not known", None)})
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        negotiate(req)
        pairs = _query_pairs(req)
        self._answer(req, resp, [v for k, v in pairs if k == "sourceIdentifier"],
                     [v for k, v in pairs if k == "targetSystem"])

    @requires(smart("Patient", "r"), transaction="ITI-83")
    @operation("PIXm $ihe-pix by POST (ITI-83)", tags=_TAGS,
               responses={200: ("Parameters with targetIdentifier and targetId", None)})
    @falcon.before(fhir_body)
    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        params = _parameters(req.context.body)
        sources = []
        for param in params.get("sourceIdentifier", []):
            ident = param.get("valueIdentifier")
            if not isinstance(ident, dict):
                raise Problem(falcon.HTTP_400, "Bad request",
                              "sourceIdentifier needs valueIdentifier")
            sources.append(f"{ident.get('system', '')}|{ident.get('value', '')}")
        targets = [str(p.get("valueUri", "")) for p in params.get("targetSystem", [])]
        self._answer(req, resp, sources, targets)

    def _answer(self, req: falcon.Request, resp: falcon.Response, sources: list[str],
                targets: list[str]) -> None:
        if len(sources) != 1:
            raise Problem(falcon.HTTP_400, "Bad request",
                          "give exactly one sourceIdentifier (system|value)")
        source = sources[0]
        wanted = [t for target in targets for t in split_values(target)]
        base = f"{base_url(req)}/Patient/"
        actor = actor_for(req)
        if source.startswith(base) or source.startswith("Patient/"):
            # The logical-id form: a reference to one of this server's Patients.
            record_id = source.rsplit("/", 1)[1]
            patient = self._patients.get(record_id, actor)
            source_system, source_value = None, None
        else:
            try:
                token = parse([("identifier", source)]).criteria.terms[0].values[0]
            except (SearchError, IndexError):
                token = None
            if not isinstance(token, Token) or token.value is None or (
                    token.system is None and token.kind == "identifier"):
                raise _pix_error(falcon.HTTP_400, "code-invalid",
                                 "sourceIdentifier Assigning Authority not found")
            if self._domains.unknown([system_of(token)]):
                raise _pix_error(falcon.HTTP_400, "code-invalid",
                                 "sourceIdentifier Assigning Authority not found")
            if any(not system or "|" in system for system in wanted) or (
                    wanted and self._domains.unknown(wanted)):
                raise _pix_error(falcon.HTTP_403, "code-invalid", "targetSystem not found")
            found = self._patients.find(Criteria((Term("identifier", (token,)),)), actor,
                                        offset=0, count=1, total=False)
            if not found.items:
                raise _pix_error(falcon.HTTP_404, "not-found",
                                 "sourceIdentifier Patient Identifier not found")
            patient = found.items[0]
            source_system, source_value = system_of(token), token.value
        if patient.replaced_by is not None:
            # Post-merge policy (ITI-83 2:3.83.4.2.2.5): the subsumed identifier is gone.
            raise _pix_error(falcon.HTTP_404, "not-found",
                             "sourceIdentifier Patient Identifier not found")
        person = self._persons.person_of_patient(patient.id, actor)
        records = [r for r in person.records if r.patient.replaced_by is None]
        wanted_systems = set(wanted)
        parameters: list[dict[str, Any]] = []
        seen: set[tuple[str, str]] = set()
        for record in records:
            for ident in to_resource(record.patient)["identifier"]:
                key = (ident["system"], ident["value"])
                if key == (source_system, source_value) or key in seen:
                    continue
                if wanted_systems and ident["system"] not in wanted_systems:
                    continue
                seen.add(key)
                parameters.append({"name": "targetIdentifier", "valueIdentifier": {
                    k: v for k, v in ident.items() if k in ("use", "type", "system", "value",
                                                             "assigner")}})
        for record in records:
            parameters.append({"name": "targetId",
                               "valueReference": {"reference": base + record.patient.id}})
        send(req, resp, {"resourceType": "Parameters", "parameter": parameters})


def _pix_error(status: str, code: str, diagnostics: str) -> Problem:
    return Problem(status, "PIX query failed", diagnostics, extra={"fhir_code": code})
