"""Racing writers: optimistic locking and uniqueness hold under concurrency (both backends)."""

from __future__ import annotations

import threading
from collections import Counter

from tests.helpers import MRN, patient

URL = "/api/v1/patients"


def _race(n: int, action) -> Counter:
    barrier = threading.Barrier(n)
    statuses: list[int] = []
    lock = threading.Lock()

    def run(i: int) -> None:
        barrier.wait()
        status = action(i)
        with lock:
            statuses.append(status)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return Counter(statuses)


def test_concurrent_updates_of_one_version_let_exactly_one_win(client):
    created = client.simulate_post(URL, json=patient()).json
    item = f"{URL}/{created['id']}"
    outcome = _race(4, lambda i: client.simulate_put(
        item, json=patient(gender=["male", "female", "other", "unknown"][i]),
        headers={"If-Match": '"1"'}).status_code)
    assert outcome == Counter({200: 1, 412: 3})
    final = client.simulate_get(item).json
    assert final["version"] == 2
    events = client.simulate_get("/api/v1/events").json["events"]
    assert [e["type"] for e in events if e["entity_type"] == "patient"
            and e["type"].startswith("Patient") and e["type"] != "PatientLinked"] == [
        "PatientCreated", "PatientUpdated"]


def test_concurrent_registrations_of_one_source_record_make_one_record(client):
    outcome = _race(4, lambda i: client.simulate_post(
        URL, json=patient(identifiers=[{"system": MRN, "value": f"M-{i}"}])).status_code)
    assert outcome == Counter({201: 1, 409: 3})
    assert len(client.simulate_get(URL).json["items"]) == 1


def test_concurrent_registrations_of_one_person_make_one_person(client):
    """Four sources register the same person at once: four records, ONE person (matching
    of records that share a blocking key is serialised, so none misses the others)."""
    outcome = _race(4, lambda i: client.simulate_post(
        URL, json=patient(source=f"src-{i}", source_id=f"S-{i}")).status_code)
    assert outcome == Counter({201: 4})
    items = client.simulate_get(URL).json["items"]
    assert len(items) == 4
    assert len({p["person_id"] for p in items}) == 1


def test_a_write_that_kept_giving_way_is_409_with_retry_after_not_an_outage(
        settings, clock, monkeypatch):
    """What a client sees when a deadlock outlasted the retries: "send it again", never
    the 503 that operators page on."""
    import falcon.testing

    from mpi.api.app import create_app
    from mpi.domain.errors import ConcurrentChange
    from mpi.storage.db import close_database, database_for
    from mpi.wiring import build

    database = database_for(settings.database, max_connections=2)
    services = build(settings, db=database, clock=clock)
    client = falcon.testing.TestClient(create_app(services))
    created = client.simulate_post(URL, json=patient()).json

    def gives_way(*args, **kwargs):
        raise ConcurrentChange("another change to the same records was being made")

    monkeypatch.setattr(services.patients, "delete", gives_way)
    resp = client.simulate_delete(f"{URL}/{created['id']}")
    close_database(database)
    assert resp.status_code == 409, resp.text
    assert resp.headers["Retry-After"] == "1"
    assert resp.json["title"] == "Concurrent change"
