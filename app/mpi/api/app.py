"""The WSGI application: ``create_app(services)`` wires it; ``get_app()`` is gunicorn's entry."""

from __future__ import annotations

import atexit
from typing import Any

import falcon

from mpi import config, metrics
from mpi.api import errors
from mpi.api.access import AccessControl
from mpi.api.middleware import DatabaseConnection, RequestContext
from mpi.api.routes import DOCS_STATIC, build_routes
from mpi.ui import pages as ui
from mpi.wiring import Services


def create_app(services: Services, *, run_indexer: bool = False) -> falcon.App:
    """A ready-to-serve Falcon app over ``services`` (``mpi.wiring.build``). Opens no
    connection by itself; ``run_indexer`` also starts this process's indexer thread,
    which writes the index only if it wins the directory's writer lock (``mpi serve``:
    it stands by while the indexer process holds it), and the thread that keeps the
    registry's value frequencies current for matching (MATCHING_FREQUENCIES_REFRESH)."""
    if run_indexer:
        services.indexer(standby=True).start()
        services.upkeep.start()
    middleware: list[Any] = [
        RequestContext(), DatabaseConnection(services.db),
        AccessControl(services.authenticator, services.work,
                      services.settings.trusted_proxies),
    ]
    metrics.pool_size(services.settings.database_max_connections)
    app = falcon.App(middleware=middleware)
    app.req_options.strip_url_path_trailing_slash = True
    pages, page_routes = ui.routes(services)
    errors.register(app, pages={ui.UI: ui.error_renderer(pages)})
    for template, resource in [*build_routes(services), *page_routes]:
        app.add_route(template, resource)
    from swagger_ui_bundle import swagger_ui_path

    app.add_static_route(DOCS_STATIC, str(swagger_ui_path))
    app.add_static_route(ui.STATIC_ROUTE, str(ui.STATIC))
    return app


def get_app() -> falcon.App:
    """For ``gunicorn 'mpi.api.app:get_app()'``: settings from the environment."""
    from mpi import logs, wiring

    settings = config.load()
    logs.configure(settings)
    wiring.prepare(settings)
    services = wiring.build(settings)
    # The reads' audit rows that wait (AUDIT_READ_WINDOW) are written as the worker exits.
    atexit.register(services.work.close)
    return create_app(services, run_indexer=True)
