"""Schema-driven fuzzing of the whole API on PostgreSQL: zero server errors.

Schemathesis reads the service's own OpenAPI document and generates requests for every
operation, valid and deliberately invalid ones (wrong types, out-of-range numbers, strings
past their limits, missing fields), sent to the WSGI app over a real PostgreSQL database
(SQLite ignores varchar lengths, which hid a 500). The token holds every scope, so each
request reaches its handler. The check is the one that matters: no 5xx, ever. The number
of cases per operation is ``FUZZ_EXAMPLES`` (default 50); the run prints how many requests
it sent and what they were answered with.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from collections import Counter
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import falcon
import falcon.testing
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode

from mpi.api.app import create_app
from mpi.config import Settings, parse_database_url
from mpi.domain.access import ADMIN, AUDIT, FEED, STEWARD
from mpi.domain.audit import Actor
from mpi.search.indexer import Indexer
from mpi.storage.db import close_database, connection, database_for
from mpi.wiring import build
from tests.conftest import _clean
from tests.helpers import patient

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "50"))
SENT: Counter[int] = Counter()


@dataclasses.dataclass
class Fuzzed:
    app: falcon.App
    headers: dict[str, str]


@pytest.fixture(scope="module")
def fuzzed(postgres_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fuzzed]:
    db = database_for(parse_database_url(postgres_url), max_connections=4)
    with connection(db):
        _clean(db)
    configured = Settings.defaults(database_url=postgres_url, auth_mode="token",
                                   search_index_path=tmp_path_factory.mktemp("fuzz-ix"))
    services = build(configured, db=db, clock=lambda: datetime(2026, 6, 1))
    with connection(db):
        secret = services.tokens.create(
            "fuzzer", ["system/Patient.cruds", STEWARD, AUDIT, FEED, ADMIN], "*",
            Actor("tests")).secret
        for n in range(3):  # a few records (and their persons) for the reads to find
            body = json.dumps(patient(source_id=f"FZ-{n}")).encode()
            services.patients.create(services.patients.parse(body),
                                     Actor("fuzzer", sources=frozenset({"*"})))
    indexer = Indexer(db, configured.search_index_path)
    with connection(db):
        indexer.catch_up()
    yield Fuzzed(create_app(services), {"Authorization": f"Bearer {secret}"})
    indexer.stop()
    close_database(db)
    print(f"\nschema fuzzing on PostgreSQL: {sum(SENT.values())} requests, "
          f"server errors: {sum(n for s, n in SENT.items() if s >= 500)}, "
          f"statuses: {dict(sorted(SENT.items()))}")


def _document() -> dict[str, Any]:
    """The OpenAPI document, as the service serves it (it does not depend on the
    database, so an app over an unused embedded one gives it at collection time)."""
    with tempfile.TemporaryDirectory() as tmp:
        services = build(Settings.defaults(database_url=f"sqlite:///{tmp}/unused.db",
                                           search_index_path=Path(tmp) / "ix"))
        document = falcon.testing.TestClient(create_app(services)).simulate_get(
            "/openapi.json").json
        close_database(services.db)
    return document


schema = schemathesis.openapi.from_dict(_document())
schema.config.generation.update(modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
                                max_examples=EXAMPLES, deterministic=True)


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
def test_no_request_makes_the_api_answer_5xx(case: Any, fuzzed: Fuzzed) -> None:
    response = case.call(app=fuzzed.app, headers=fuzzed.headers)
    SENT[response.status_code] += 1
    case.validate_response(response, checks=[not_a_server_error])
