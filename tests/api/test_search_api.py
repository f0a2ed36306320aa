"""GET /api/v1/patients/search, on SQLite and on PostgreSQL (every test runs on both)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import falcon.testing
import pytest

from mpi import logs
from mpi.api.app import create_app
from mpi.config import Settings
from mpi.search.index import NullSearchIndex
from mpi.search.indexer import Indexer
from mpi.storage.db import close_database, database_for
from mpi.wiring import build
from tests.conftest import Clock, Ids
from tests.helpers import MRN, patient

URL = "/api/v1/patients"
SEARCH = f"{URL}/search"


class Api:
    def __init__(self, client: falcon.testing.TestClient, indexer: Indexer):
        self.client = client
        self.indexer = indexer

    def create(self, **changes: Any) -> dict[str, Any]:
        resp = self.client.simulate_post(URL, json=patient(**changes))
        assert resp.status_code == 201, resp.text
        return resp.json

    def search(self, **params: Any) -> falcon.testing.Result:
        """Search after the indexer has caught up (what the background thread does)."""
        with self.indexer_connection():
            self.indexer.catch_up()
        return self.client.simulate_get(SEARCH, params=params,
                                        headers={"X-User-ID": "clerk-7"})

    def indexer_connection(self) -> Any:
        from mpi.storage.db import connection

        return connection(self.indexer._db)

    def found(self, **params: Any) -> list[str]:
        resp = self.search(**params)
        assert resp.status_code == 200, resp.text
        return [item["patient"]["id"] for item in resp.json["items"]]


@pytest.fixture
def api(settings: Settings, clock: Clock) -> Iterator[Api]:
    database = database_for(settings.database, max_connections=4)
    app = create_app(build(settings, db=database, clock=clock, new_id=Ids()))
    indexer = Indexer(database, settings.search_index_path)
    yield Api(falcon.testing.TestClient(app), indexer)
    indexer.stop()
    close_database(database)


def _people(api: Api) -> dict[str, dict[str, Any]]:
    return {
        "john": api.create(),
        "jon": api.create(source_id="A-2", names=[{"family": "Smyth", "given": ["Jon"]}],
                          birth_date="1981-02-03", identifiers=[], telecom=[]),
        "maria": api.create(source_id="A-3", names=[{"family": "Hernández", "given": ["María",
                                                                                     "José"]}],
                            birth_date="1975-03-03",
                            identifiers=[{"system": MRN, "value": "MRN-00042"}],
                            addresses=[{"line": ["1 Elm Road"], "city": "Shelbyville"}],
                            telecom=[{"system": "email", "value": "maria@example.org"}]),
    }


def test_free_text_fuzzy_phonetic_and_part_of_a_name(api):
    p = _people(api)
    assert api.found(q="smith")[0] == p["john"]["id"]  # exact first
    assert set(api.found(q="smith")) == {p["john"]["id"], p["jon"]["id"]}  # Smyth sounds alike
    assert api.found(q="hernandes") == [p["maria"]["id"]]  # one edit, accents folded
    assert api.found(q="ernan") == [p["maria"]["id"]]  # part of a name
    assert api.found(q="hern*") == [p["maria"]["id"]]
    assert api.found(q="smith", fuzzy=0, limit=5)[0] == p["john"]["id"]


def test_identifier_birth_date_address_telecom_source(api):
    p = _people(api)
    assert api.found(q="mrn00042") == [p["maria"]["id"]]
    assert api.found(q="123456789") == [p["john"]["id"]]
    assert api.found(q="1975-03-03") == [p["maria"]["id"]]
    assert api.found(q="shelbyville") == [p["maria"]["id"]]
    assert api.found(q="maria@example.org") == [p["maria"]["id"]]
    assert api.found(q="555-0100") == [p["john"]["id"]]
    assert api.found(q="A-3") == [p["maria"]["id"]]
    assert len(api.found(q="source:st-marys-ehr")) == 3


def test_boolean_phrases_and_fields(api):
    p = _people(api)
    assert api.found(q="smith AND NOT jon") == [p["john"]["id"]]
    assert set(api.found(q="hernandez OR smyth~0")) == {p["maria"]["id"], p["jon"]["id"]}
    assert api.found(q='given:"maria jose"') == [p["maria"]["id"]]
    assert api.found(q='"jose maria"') == []
    assert api.found(q="family:smyth~0 birth_year:1981") == [p["jon"]["id"]]
    assert api.found(q="(john OR jon) birth_date:1980-05*") == [p["john"]["id"]]


def test_name_and_birth_year_shortcut(api):
    p = _people(api)
    assert api.found(name="john smith", birth_year="1980") == [p["john"]["id"]]
    assert api.found(name="smith", birth_year="1981") == [p["jon"]["id"]]
    assert api.found(name="smith", birth_date="1975-03-03") == []
    assert api.found(q="jose", family="hernandez") == [p["maria"]["id"]]


def test_results_carry_score_person_and_the_current_record(api):
    p = _people(api)
    body = api.search(q="smith").json
    assert [i["score"] for i in body["items"]] == sorted(
        (i["score"] for i in body["items"]), reverse=True)
    first = body["items"][0]
    assert first["person_id"] is not None  # the enterprise person the record is linked to
    assert first["person_id"] == p["john"]["person_id"]
    assert first["patient"]["id"] == p["john"]["id"]
    assert first["patient"]["names"] == p["john"]["names"]
    assert body["total"] == 2 and body["offset"] == 0 and body["next_offset"] is None
    feed = api.client.simulate_get("/api/v1/events", params={"after": 0, "limit": 1000}).json
    assert body["index_cursor"] == feed["events"][-1]["id"]  # the index has every event


def test_pagination(api):
    for n in range(5):
        api.create(source_id=f"P-{n}", identifiers=[], names=[{"family": "Page",
                                                               "given": [f"N{n}"]}])
    first = api.search(q="family:page", limit=2).json
    assert first["total"] == 5 and first["next_offset"] == 2 and len(first["items"]) == 2
    rest = api.search(q="family:page", limit=2, offset=4).json
    assert len(rest["items"]) == 1 and rest["next_offset"] is None
    pages = [i["patient"]["id"] for o in (0, 2, 4)
             for i in api.search(q="family:page", limit=2, offset=o).json["items"]]
    assert len(set(pages)) == 5


def test_deleted_records_never_come_back_even_before_the_index_catches_up(api):
    p = _people(api)
    api.found(q="smith")  # indexed
    assert api.client.simulate_delete(f"{URL}/{p['john']['id']}").status_code == 204
    # Not caught up yet: the index still has John, the database says he is gone.
    resp = api.client.simulate_get(SEARCH, params={"q": "smith"})
    assert [i["patient"]["id"] for i in resp.json["items"]] == [p["jon"]["id"]]
    assert api.found(q="smith") == [p["jon"]["id"]]  # and after it has


def test_updates_are_searchable(api):
    p = _people(api)
    changed = patient(names=[{"family": "Quimby", "given": ["John"]}])
    resp = api.client.simulate_put(f"{URL}/{p['john']['id']}", json=changed,
                                   headers={"If-Match": '"1"'})
    assert resp.status_code == 200
    assert api.found(q="family:quimby") == [p["john"]["id"]]
    assert api.found(q="family:smith~0") == []


@pytest.mark.parametrize("params, field, reason", [
    ({"q": "smith AND"}, "q", "AND at position 7 needs a term after it"),
    ({"q": "colour:blue"}, "q", "unknown field 'colour'"),
    ({"q": '"open'}, "q", "never closed"),
    ({"q": "smith~5"}, "q", "too large"),
    ({}, "q", "give q or at least one of"),
    ({"birth_year": "eighty"}, "birth_year", "must be a whole number"),
    ({"birth_year": "1200"}, "birth_year", "between 1850 and 9999"),
    ({"birth_date": "1980-02-30", "name": "x"}, "birth_date", "YYYY-MM-DD"),
    ({"q": "x", "fuzzy": "3"}, "fuzzy", "between 0 and 2"),
    ({"q": "x", "limit": "0"}, "limit", "between 1 and 100"),
    ({"q": "x", "offset": "-1"}, "offset", "between 0 and 10000"),
    ({"q": "x" * 501}, "q", "at most 500 characters"),
])
def test_bad_queries_are_400_naming_the_field(api, params, field, reason):
    api.create()
    resp = api.search(**params)
    assert resp.status_code == 400, resp.text
    assert resp.headers["content-type"] == "application/problem+json"
    (problem,) = resp.json["errors"]
    assert problem["field"] == field and reason in problem["reason"], problem


def test_search_is_audited(api):
    _people(api)
    found = api.found(q="smith", name="john")
    resp = api.client.simulate_get("/api/v1/audit/user", params={"user_id": "local"})
    (entry,) = [e for e in resp.json["items"] if e["action"] == "patient:record:search"]
    assert entry["new_value"]["query"]["q"] == "smith"
    assert entry["new_value"]["query"]["name"] == "john"
    assert entry["new_value"]["returned"] == found and len(found) == 2  # Jon sounds like John


def test_route_does_not_collide_with_patient_ids(api):
    assert api.client.simulate_get(f"{URL}/search", params={"q": "x"}).status_code in (200, 503)
    assert api.client.simulate_get(f"{URL}/00000000-0000-4000-8000-00000000dead"
                                   ).status_code == 404


def test_without_an_index_the_answer_is_503_not_an_empty_list(api):
    resp = api.client.simulate_get(SEARCH, params={"q": "smith"})  # nothing indexed yet
    assert resp.status_code == 503
    assert resp.headers["retry-after"] == "2"
    assert "being built" in resp.json["detail"]


@pytest.mark.parametrize("how", ["zeros", "truncated"])
def test_a_damaged_index_is_a_503_with_retry_after_never_a_500(api, settings, how):
    """A truncated segment raised struct.error -> 500 in the drill."""
    api.create()
    api.search(q="smith")  # indexed and opened by the worker's reader
    current = (settings.search_index_path / "CURRENT").read_text().strip()
    for segment in (settings.search_index_path / current).glob("*.seg"):
        size = segment.stat().st_size
        with open(segment, "r+b") as fh:
            if how == "zeros":
                fh.write(b"\0" * size)
            else:
                fh.truncate(size // 3)
    statuses = set()
    for query in ("smith", "john", "jo*", "smyth"):
        resp = api.client.simulate_get(SEARCH, params={"q": query})
        statuses.add(resp.status_code)
        if resp.status_code == 503:
            assert resp.headers["retry-after"] == "2"
    assert statuses <= {200, 503} and 500 not in statuses
    assert api.indexer.verify_and_repair() is True  # what the idle indexer does
    assert api.client.simulate_get(SEARCH, params={"q": "smith"}).json["total"] == 1


def test_null_index_finds_nothing(settings, clock):
    database = database_for(settings.database, max_connections=2)
    client = falcon.testing.TestClient(create_app(build(settings, db=database, clock=clock,
                                                        search_index=NullSearchIndex())))
    resp = client.simulate_get(SEARCH, params={"q": "smith"})
    assert resp.status_code == 200 and resp.json["items"] == []
    assert resp.json["index_cursor"] is None
    close_database(database)


def test_no_patient_data_in_logs(api, caplog, monkeypatch):
    caplog.set_level(logging.DEBUG)
    levels = logs.logging_config(Settings.defaults(log_level="DEBUG"))["loggers"]
    monkeypatch.setattr(logging.getLogger("peewee"), "level",
                        logging.getLevelName(levels["peewee"]["level"]))
    api.create(names=[{"family": "Zebulonovich", "given": ["Quintus"]}])
    api.search(q="zebulonovich AND")
    api.search(q="zebulonovich")
    api.search(name="quintus", birth_year="1980")
    text = caplog.text + "".join(str(r.__dict__) for r in caplog.records)
    assert "ebulonovich" not in text.lower() and "quintus" not in text.lower()


def test_an_index_that_is_behind_says_so_and_the_audit_row_too(api, clock):
    """An instance whose index has not caught up (restarted on an old index, say) answers
    with what it has, and says the answer may be incomplete: how many changes it lacks and
    how old the oldest is. A clerk who sees no result must not take it for "not
    registered"."""
    _people(api)
    body = api.search(q="smith").json
    assert body["index_complete"] is True
    assert body["index_behind_events"] == 0 and body["index_behind_seconds"] is None
    clock.advance(seconds=5)
    late = api.create(source_id="L-1", names=[{"family": "Latecomer", "given": ["Lou"]}],
                      identifiers=[])
    clock.advance(seconds=7)
    # The indexer has not run since: the new record and its link are not in the index.
    behind = api.client.simulate_get(SEARCH, params={"q": "latecomer"},
                                     headers={"X-User-ID": "clerk-7"}).json
    assert behind["items"] == []
    assert behind["index_complete"] is False
    assert behind["index_behind_events"] >= 2  # the record's event and its link's
    assert behind["index_behind_seconds"] == 7.0
    trail = api.client.simulate_get("/api/v1/audit/recent", params={"limit": 5}).json
    searches = [e for e in trail["items"] if e["action"] == "patient:record:search"]
    assert searches[0]["new_value"]["index_behind_events"] == behind["index_behind_events"]
    caught_up = api.search(q="latecomer").json
    assert [i["patient"]["id"] for i in caught_up["items"]] == [late["id"]]
    assert caught_up["index_complete"] is True


def test_readiness_reflects_whether_search_is_complete(settings, clock):
    """Each instance has its own index. With SEARCH_READY_MAX_LAG set, an instance whose
    index is being built, or lags the change log by more than that, is not ready (the other
    instances answer); within the lag it is. Unset, readiness only reports it."""
    strict = Settings.defaults(**{**vars(settings), "search_ready_max_lag": 10.0})
    database = database_for(strict.database, max_connections=4)
    services = build(strict, db=database, clock=clock, new_id=Ids())
    client = falcon.testing.TestClient(create_app(services))
    indexer = Indexer(database, strict.search_index_path)
    lenient = falcon.testing.TestClient(create_app(build(settings, db=database, clock=clock,
                                                         new_id=Ids())))

    def ready(on: falcon.testing.TestClient = client) -> tuple[int, str]:
        resp = on.simulate_get("/api/v1/health/ready")
        return resp.status_code, resp.json["checks"]["search"]

    try:
        status, search = ready()
        assert status == 503 and search.startswith("unavailable: the search index is being")
        assert ready(lenient)[0] == 200
        client.simulate_post(URL, json=patient())
        from mpi.storage.db import connection

        with connection(database):
            indexer.catch_up()
        assert ready() == (200, "ok")
        clock.advance(seconds=1)
        client.simulate_post(URL, json=patient(source_id="A-9"))
        clock.advance(seconds=4)
        status, search = ready()
        assert status == 200 and search.startswith("behind: ") and "4.0 s old" in search
        clock.advance(seconds=7)
        status, search = ready()
        assert status == 503 and "11.0 s old" in search
        assert ready(lenient)[0] == 200
        with connection(database):
            indexer.catch_up()
        assert ready() == (200, "ok")
    finally:
        indexer.stop()
        close_database(database)


def test_without_an_index_exact_searches_are_answered_by_the_database(api):
    """While the index is being built (a fresh instance, a damaged one rebuilt) a clerk's
    exact look-ups still answer, from the database: by identifier value, by family name
    and birth date. They say so (served_by, index_complete false, audited as such); a
    search that needs the index (free text, fuzzy names) is still a 503."""
    p = _people(api)  # nothing indexed: the indexer has not run
    headers = {"X-User-ID": "clerk-7"}
    by_id = api.client.simulate_get(SEARCH, params={"identifier": "MRN-00042"},
                                    headers=headers)
    assert by_id.status_code == 200, by_id.text
    assert [i["patient"]["id"] for i in by_id.json["items"]] == [p["maria"]["id"]]
    assert by_id.json["served_by"] == "database" and by_id.json["index_complete"] is False
    assert by_id.json["items"][0]["person_id"] == p["maria"]["person_id"]
    by_name = api.client.simulate_get(SEARCH, params={"family": "HERNANDEZ",
                                                      "birth_date": "1975-03-03"})
    assert [i["patient"]["id"] for i in by_name.json["items"]] == [p["maria"]["id"]]
    nobody = api.client.simulate_get(SEARCH, params={"family": "smith",
                                                     "birth_date": "1975-03-03"})
    assert nobody.status_code == 200 and nobody.json["items"] == []
    for needs_the_index in ({"q": "smith"}, {"name": "john smith"},
                            {"family": "smith", "birth_year": "1980"}):
        assert api.client.simulate_get(SEARCH, params=needs_the_index).status_code == 503
    trail = api.client.simulate_get("/api/v1/audit/recent", params={"limit": 10}).json
    searches = [e for e in trail["items"] if e["action"] == "patient:record:search"]
    assert searches[-1]["new_value"]["served_by"] == "database"
    assert searches[-1]["new_value"]["returned"] == [p["maria"]["id"]]
    indexed = api.search(identifier="MRN-00042").json  # once the index is built
    assert indexed["served_by"] == "index" and indexed["index_complete"] is True


def test_a_search_is_audited_as_a_read_whose_row_may_wait(settings, clock):
    """A search is a read: its audit row waits with other reads' rows (AUDIT_READ_WINDOW)
    instead of committing before the answer, and is written when they are."""
    from mpi.storage.db import connection
    from mpi.storage.models import AuditEventRow

    database = database_for(settings.database, max_connections=4)
    services = build(Settings.defaults(**{**vars(settings), "audit_read_window": 5.0}),
                     db=database, clock=clock, new_id=Ids())
    indexer = Indexer(database, settings.search_index_path)
    try:
        api = Api(falcon.testing.TestClient(create_app(services)), indexer)
        _people(api)

        def searches() -> int:
            with connection(database):
                return AuditEventRow.select().where(
                    AuditEventRow.action == "patient:record:search").count()

        assert api.found(q="smith")
        assert searches() == 0  # waiting in this process, within the window
        services.work.flush_reads()
        assert searches() == 1
    finally:
        indexer.stop()
        services.close()
        close_database(database)
