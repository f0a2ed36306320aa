"""The composition root: every service from Settings; settings reach every reader."""

from __future__ import annotations

import json
from collections.abc import Callable

import peewee
import pytest

from mpi.config import Settings
from mpi.domain.audit import Actor
from mpi.domain.identity import MatchResult
from mpi.search.index import Hit, Results
from mpi.search.service import SearchRequest
from mpi.storage.db import close_database, database_for
from mpi.storage.patients import PatientFilter
from mpi.wiring import Services, build
from tests.conftest import Ids
from tests.helpers import patient
from tests.identity.fake_engine import FakeEngine

ACTOR = Actor("reader-1")
SET_ASYNC = "SET LOCAL synchronous_commit TO off"
RETURNING_ASYNC = "set_config('synchronous_commit', 'off', true)"  # a one-statement unit


class OneHit:
    """A search index that finds one given record."""

    def __init__(self) -> None:
        self.patient_id = ""

    def search(self, query: object, *, offset: int, limit: int) -> Results:
        return Results([Hit(self.patient_id, 1.0, None)], 1, 0)

    def position(self) -> int | None:
        return 0


def _readers(services: Services, patient_id: str, person_id: str,
             review_id: str) -> dict[str, Callable[[], object]]:
    """Every read the services offer, each audited in a unit of work of its own."""
    body = json.dumps(patient(source_id="probe")).encode()
    return {
        "patients.get": lambda: services.patients.get(patient_id, ACTOR),
        "patients.list_page": lambda: services.patients.list_page(
            PatientFilter(), ACTOR, after=None, limit=10),
        "search.search": lambda: services.search.search(SearchRequest(q="smith"), ACTOR),
        "matching.match": lambda: services.matching.match(services.matching.parse(body),
                                                          ACTOR),
        "persons.person": lambda: services.persons.person(person_id, ACTOR),
        "persons.person_of_patient": lambda: services.persons.person_of_patient(
            patient_id, ACTOR),
        "persons.history": lambda: services.persons.history(person_id, ACTOR, before=None,
                                                            limit=10),
        "stewards.reviews": lambda: services.stewards.reviews(
            ACTOR, status=None, kind=None, person_id=None, after=None, limit=10),
        "stewards.review": lambda: services.stewards.review(review_id, ACTOR),
        "audit_trail.for_patient": lambda: services.audit_trail.for_patient(
            patient_id, ACTOR, before=None, limit=10),
        "audit_trail.recent": lambda: services.audit_trail.recent(ACTOR, before=None,
                                                                  limit=10),
        "audit_trail.by_user": lambda: services.audit_trail.by_user("clerk", ACTOR,
                                                                    before=None, limit=10),
        "change_feed.read": lambda: services.change_feed.read(ACTOR, after=0, limit=10),
    }


@pytest.mark.parametrize("synchronous_reads", [False, True])
def test_every_reader_honours_audit_synchronous_reads(settings: Settings, backend: str,
                                                      clock, synchronous_reads: bool,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A read's audit row skips the disk flush on PostgreSQL unless the setting asks for it,
    whichever service reads (the search service once built its own audit log, which
    ignored the setting); a write never skips it."""
    db = database_for(settings.database, max_connections=2)
    index = OneHit()
    services = build(Settings.defaults(**{**vars(settings),
                                          "audit_synchronous_reads": synchronous_reads}),
                     db=db, clock=clock, new_id=Ids(), search_index=index, engine=FakeEngine())
    db.connect()
    try:
        clerk = Actor("clerk")
        first = services.patients.create(services.patients.parse(
            json.dumps(patient(source_id="A-1")).encode()), clerk)
        services.patients.create(services.patients.parse(json.dumps(patient(  # a review
            source_id="A-2", names=[{"family": "Smith", "given": ["Jon"]}])).encode()), clerk)
        index.patient_id = first.id
        reviews = services.stewards.reviews(ACTOR, status=None, kind=None, person_id=None,
                                            after=None, limit=1).items
        assert reviews, "the fixture needs a review to read"
        statements: list[str] = []
        if backend == "postgresql":
            # Every statement the driver is given: through peewee, prepared, or in a
            # pipeline with others (a unit's audit rows and events go in one).
            from psycopg import Cursor

            send = Cursor.execute

            def spy_driver(cursor: Cursor, query: object, *args: object,
                           **kwargs: object) -> object:
                statements.append(str(query))
                return send(cursor, query, *args, **kwargs)  # type: ignore[call-overload]

            monkeypatch.setattr(Cursor, "execute", spy_driver)
        else:
            execute = db.execute_sql

            def spy(sql: str, params: object = None, *args: object, **kwargs: object) -> object:
                statements.append(sql)
                return execute(sql, params, *args, **kwargs)

            monkeypatch.setattr(db, "execute_sql", spy)
        readers = _readers(services, first.id, str(first.person_id), reviews[0].id)
        for name, read in readers.items():
            statements.clear()
            result = read()
            # A record read's rows may wait (AUDIT_READ_WINDOW, on by default): written now,
            # in this thread, where the spy sees them.
            services.work.flush_reads()
            if isinstance(result, MatchResult):
                assert result.candidates, name
            relaxed = sum(SET_ASYNC in sql or RETURNING_ASYNC in sql for sql in statements)
            expected = 1 if backend == "postgresql" and not synchronous_reads else 0
            assert relaxed == expected, (name, statements)
        statements.clear()
        services.patients.update(first.id, services.patients.parse(json.dumps(patient(
            source_id="A-1", gender="female")).encode()), clerk, expected_version=None)
        assert not any(SET_ASYNC in sql or RETURNING_ASYNC in sql for sql in statements)
    finally:
        db.close()
        close_database(db)


def test_one_unit_of_work_and_one_database_for_everything(settings: Settings, clock) -> None:
    db = database_for(settings.database, max_connections=1)
    services = build(settings, db=db, clock=clock, new_id=Ids())
    assert services.db is db
    assert services.work.clock is clock
    assert services.work.synchronous_reads == settings.audit_synchronous_reads
    assert services.indexer().poll_interval == settings.search_poll_interval
    assert services.indexer().commit_interval == settings.search_commit_interval == 1.0
    assert services.engine.link_threshold == settings.matching_threshold
    close_database(db)


def test_the_models_are_bound_to_the_built_database(settings: Settings, clock) -> None:
    from mpi.storage.db import database_proxy

    db = database_for(settings.database, max_connections=1)
    build(settings, db=db, clock=clock, new_id=Ids())
    assert database_proxy.obj is db
    assert isinstance(db, peewee.Database)
    close_database(db)
