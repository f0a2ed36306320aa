"""Every route of the API, in one place. The OpenAPI document is generated from this list."""

from __future__ import annotations

from mpi import version
from mpi.api import openapi
from mpi.api.resources.audit import PatientAudit, RecentAudit, UserAudit
from mpi.api.resources.docs import OpenApiDocument, SwaggerPage
from mpi.api.resources.domains import DomainCollection, DomainItem
from mpi.api.resources.events import EventFeed
from mpi.api.resources.health import HealthResource, ReadyResource
from mpi.api.resources.match import PatientMatch
from mpi.api.resources.metrics import MetricsResource
from mpi.api.resources.patients import PatientCollection, PatientItem
from mpi.api.resources.persons import (
    MergeUndo,
    PatientPerson,
    PersonHistory,
    PersonItem,
    PersonLink,
    PersonLinks,
    PersonMerges,
)
from mpi.api.resources.reviews import ReviewCollection, ReviewItemResource, ReviewResolve
from mpi.api.resources.search import PatientSearch
from mpi.fhir.resources import (
    FhirMatch,
    FhirMetadata,
    FhirPatientHistory,
    FhirPatientInstance,
    FhirPatientSearch,
    FhirPatientType,
    FhirPatientVersion,
    FhirPerson,
    FhirPix,
)
from mpi.wiring import Services

PREFIX = "/api/v1"
DOCS_STATIC = f"{PREFIX}/docs/static"


def build_routes(services: Services) -> list[tuple[str, object]]:
    s = services
    routes: list[tuple[str, object]] = [
        (f"{PREFIX}/health", HealthResource()),
        (f"{PREFIX}/health/ready", ReadyResource(s.db, s.search,
                                                 s.settings.search_ready_max_lag)),
        (f"{PREFIX}/patients", PatientCollection(s.patients)),
        # A literal segment: Falcon tries it before the {patient_id:uuid} field.
        (f"{PREFIX}/patients/search", PatientSearch(s.search)),
        (f"{PREFIX}/patients/{{patient_id:uuid}}", PatientItem(s.patients)),
        (f"{PREFIX}/patients/{{patient_id:uuid}}/audit", PatientAudit(s.audit_trail)),
        (f"{PREFIX}/patients/{{patient_id:uuid}}/person", PatientPerson(s.persons)),
        (f"{PREFIX}/patients/match", PatientMatch(s.matching)),
        (f"{PREFIX}/persons/{{person_id:uuid}}", PersonItem(s.persons)),
        (f"{PREFIX}/persons/{{person_id:uuid}}/history", PersonHistory(s.persons)),
        (f"{PREFIX}/persons/{{person_id:uuid}}/links", PersonLinks(s.stewards)),
        (f"{PREFIX}/persons/{{person_id:uuid}}/links/{{patient_id:uuid}}",
         PersonLink(s.stewards)),
        (f"{PREFIX}/persons/merge", PersonMerges(s.stewards)),
        (f"{PREFIX}/merges/{{merge_id:uuid}}/undo", MergeUndo(s.stewards)),
        (f"{PREFIX}/reviews", ReviewCollection(s.stewards)),
        (f"{PREFIX}/reviews/{{review_id:uuid}}", ReviewItemResource(s.stewards)),
        (f"{PREFIX}/reviews/{{review_id:uuid}}/resolve", ReviewResolve(s.stewards)),
        (f"{PREFIX}/audit/recent", RecentAudit(s.audit_trail)),
        (f"{PREFIX}/audit/user", UserAudit(s.audit_trail)),
        (f"{PREFIX}/events", EventFeed(s.change_feed)),
        (f"{PREFIX}/domains", DomainCollection(s.domains)),
        (f"{PREFIX}/domains/{{domain_id:uuid}}", DomainItem(s.domains)),
        ("/fhir/metadata", FhirMetadata()),
        ("/fhir/Patient", FhirPatientType(s.patients, s.domains)),
        ("/fhir/Patient/_search", FhirPatientSearch(s.patients, s.domains)),
        ("/fhir/Patient/$match", FhirMatch(s.matching, s.persons, s.patients)),
        ("/fhir/Patient/$ihe-pix", FhirPix(s.patients, s.persons, s.domains)),
        ("/fhir/Patient/{patient_id:uuid}", FhirPatientInstance(s.patients)),
        ("/fhir/Patient/{patient_id:uuid}/_history", FhirPatientHistory(s.patients)),
        ("/fhir/Person/{person_id:uuid}", FhirPerson(s.persons)),
        ("/fhir/Patient/{patient_id:uuid}/_history/{version_id:int(min=1)}",
         FhirPatientVersion(s.patients)),
        ("/metrics", MetricsResource(s.work, s.stewards, s.search, s.engine,
                                     link_threshold=s.settings.matching_threshold,
                                     review_threshold=s.settings.matching_review_threshold)),
        (f"{PREFIX}/docs", SwaggerPage(spec_url="/openapi.json", static_url=DOCS_STATIC)),
    ]
    spec = OpenApiDocument(lambda: openapi.build(routes, version=version()))
    routes.append(("/openapi.json", spec))
    routes.append((f"{PREFIX}/openapi.json", spec))
    return routes
