"""The WSGI application: ``create_app(settings)`` wires it; ``get_app()`` is gunicorn's entry."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

import falcon
import peewee

from mpi import config
from mpi.api import errors
from mpi.api.middleware import DatabaseConnection, RequestContext
from mpi.api.routes import DOCS_STATIC, build_routes
from mpi.audit.log import AuditLog
from mpi.events.log import ChangeLog
from mpi.identity.matcher import engine_for
from mpi.identity.service import IdentityService
from mpi.search.index import SearchIndex, WhooshSearchIndex
from mpi.search.indexer import Indexer
from mpi.search.service import SearchService
from mpi.services.patients import PatientService, utc_now
from mpi.storage.db import database_proxy, make_database
from mpi.storage.patients import PatientRepository


def build_services(settings: config.Settings, *, db: peewee.Database | None = None,
                   clock: Callable[[], datetime] = utc_now,
                   new_id: Callable[[], uuid.UUID] = uuid.uuid4,
                   ) -> tuple[peewee.Database, PatientService]:
    """The database (bound to the models, not connected) and the patient service with its
    identity service, as the API and the command-line tools use them."""
    db = db if db is not None else make_database(settings)
    database_proxy.initialize(db)
    audit = AuditLog(synchronous_reads=settings.audit_synchronous_reads)
    changes, patients = ChangeLog(db), PatientRepository()
    identity = IdentityService(db, engine_for(settings), clock=clock, new_id=new_id,
                               audit=audit, changes=changes, patients=patients)
    service = PatientService(db, clock=clock, new_id=new_id, repository=patients, audit=audit,
                             changes=changes, identity=identity)
    return db, service


def create_app(settings: config.Settings, *, db: peewee.Database | None = None,
               clock: Callable[[], datetime] = utc_now,
               new_id: Callable[[], uuid.UUID] = uuid.uuid4,
               search_index: SearchIndex | None = None,
               run_indexer: bool = False) -> falcon.App:
    """A ready-to-serve Falcon app for ``settings``. Opens no connection by itself.

    ``search_index`` defaults to the whoosh index at SEARCH_INDEX_PATH (read
    only); ``run_indexer`` also starts this process's indexer thread, which
    writes the index if it wins the directory's writer lock (``mpi serve``).
    """
    db, service = build_services(settings, db=db, clock=clock, new_id=new_id)
    if search_index is None:
        search_index = WhooshSearchIndex(settings.search_index_path)
    search = SearchService(db, search_index, clock=clock, fuzzy=settings.search_fuzzy_distance)
    if run_indexer:
        Indexer(db, settings.search_index_path,
                poll_interval=settings.search_poll_interval).start()

    middleware: list[Any] = [RequestContext(), DatabaseConnection(db)]
    app = falcon.App(middleware=middleware)
    app.req_options.strip_url_path_trailing_slash = True
    errors.register(app)
    for template, resource in build_routes(db, service, search):
        app.add_route(template, resource)
    from swagger_ui_bundle import swagger_ui_path

    app.add_static_route(DOCS_STATIC, str(swagger_ui_path))
    return app


def get_app() -> falcon.App:
    """For ``gunicorn 'mpi.api.app:get_app()'``: settings from the environment."""
    from mpi import logs
    from mpi.storage.bootstrap import prepare_database

    settings = config.load()
    logs.configure(settings)
    prepare_database(settings)
    return create_app(settings, run_indexer=True)
