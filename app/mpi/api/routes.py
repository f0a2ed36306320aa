"""Every route of the API, in one place. The OpenAPI document is generated from this list."""

from __future__ import annotations

import peewee

from mpi import version
from mpi.api import openapi
from mpi.api.resources.audit import PatientAudit, RecentAudit, UserAudit
from mpi.api.resources.docs import OpenApiDocument, SwaggerPage
from mpi.api.resources.events import EventFeed
from mpi.api.resources.health import HealthResource, ReadyResource
from mpi.api.resources.patients import PatientCollection, PatientItem
from mpi.api.resources.persons import (
    MergeUndo,
    PatientMatch,
    PatientPerson,
    PersonHistory,
    PersonItem,
    PersonLink,
    PersonLinks,
    PersonMerges,
    ReviewCollection,
    ReviewItemResource,
    ReviewResolve,
)
from mpi.api.resources.search import PatientSearch
from mpi.search.service import SearchService
from mpi.services.patients import PatientService

PREFIX = "/api/v1"
DOCS_STATIC = f"{PREFIX}/docs/static"


def build_routes(db: peewee.Database, service: PatientService,
                 search: SearchService) -> list[tuple[str, object]]:
    identity = service.identity
    routes: list[tuple[str, object]] = [
        (f"{PREFIX}/health", HealthResource()),
        (f"{PREFIX}/health/ready", ReadyResource(db)),
        (f"{PREFIX}/patients", PatientCollection(service)),
        # A literal segment: Falcon tries it before the {patient_id:uuid} field.
        (f"{PREFIX}/patients/search", PatientSearch(search)),
        (f"{PREFIX}/patients/{{patient_id:uuid}}", PatientItem(service)),
        (f"{PREFIX}/patients/{{patient_id:uuid}}/audit", PatientAudit(service)),
        (f"{PREFIX}/patients/{{patient_id:uuid}}/person", PatientPerson(identity)),
        (f"{PREFIX}/patients/match", PatientMatch(service)),
        (f"{PREFIX}/persons/{{person_id:uuid}}", PersonItem(identity)),
        (f"{PREFIX}/persons/{{person_id:uuid}}/history", PersonHistory(identity)),
        (f"{PREFIX}/persons/{{person_id:uuid}}/links", PersonLinks(identity)),
        (f"{PREFIX}/persons/{{person_id:uuid}}/links/{{patient_id:uuid}}", PersonLink(identity)),
        (f"{PREFIX}/persons/merge", PersonMerges(identity)),
        (f"{PREFIX}/merges/{{merge_id:uuid}}/undo", MergeUndo(identity)),
        (f"{PREFIX}/reviews", ReviewCollection(identity)),
        (f"{PREFIX}/reviews/{{review_id:uuid}}", ReviewItemResource(identity)),
        (f"{PREFIX}/reviews/{{review_id:uuid}}/resolve", ReviewResolve(identity)),
        (f"{PREFIX}/audit/recent", RecentAudit(service)),
        (f"{PREFIX}/audit/user", UserAudit(service)),
        (f"{PREFIX}/events", EventFeed(service)),
        (f"{PREFIX}/docs", SwaggerPage(spec_url="/openapi.json", static_url=DOCS_STATIC)),
    ]
    spec = OpenApiDocument(lambda: openapi.build(routes, version=version()))
    routes.append(("/openapi.json", spec))
    routes.append((f"{PREFIX}/openapi.json", spec))
    return routes
