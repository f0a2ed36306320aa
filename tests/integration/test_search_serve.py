"""Search under ``mpi serve`` (an indexer process writing, several workers reading): writes
become searchable, and deleting the index directory under the running service loses nothing.
How fast a write becomes searchable is a figure of ``nox -s bench -- search``, not of a test."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlencode

import pytest

from tests.helpers import patient
from tests.integration.test_serve import Server, database_url_for

pytestmark = pytest.mark.integration

@pytest.fixture(params=["postgresql", "sqlite"])
def server(request, tmp_path) -> Iterator[Server]:
    srv = Server({"DATABASE_URL": database_url_for(request),
                  "SEARCH_INDEX_PATH": str(tmp_path / "index"),
                  "SEARCH_POLL_INTERVAL": "0.1"}, tmp_path)
    yield srv
    srv.stop()


def _found(server: Server, **params: str) -> tuple[int, list[str]]:
    status, _, body = server.request("GET", f"/api/v1/patients/search?{urlencode(params)}")
    if status != 200:
        return status, []
    return status, [item["patient"]["id"] for item in body["items"]]


def _wait_found(server: Server, patient_id: str, timeout: float, **params: str) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        _, found = _found(server, **params)
        if patient_id in found:
            return time.monotonic() - started
        time.sleep(0.02)
    raise AssertionError(f"{patient_id} not searchable after {timeout} s")


def test_every_write_becomes_searchable(server):
    # The first index is built at start-up; wait for it.
    deadline = time.monotonic() + 30
    while _found(server, q="nobody")[0] == 503 and time.monotonic() < deadline:
        time.sleep(0.1)
    lags = []
    for n in range(10):
        family = f"Lagtest{chr(97 + n)}"
        status, _, created = server.request(
            "POST", "/api/v1/patients",
            patient(source_id=f"L-{n}", identifiers=[],
                    names=[{"family": family, "given": ["Ada"]}]))
        assert status == 201, created
        lags.append(_wait_found(server, created["id"], 30, q=f"family:{family}~0"))
    print(f"write -> searchable: max {max(lags) * 1000:.0f} ms over {len(lags)} writes")
    assert "Lagtest" not in server.log()


def test_deleting_the_index_under_a_running_service_loses_nothing(server, tmp_path: Path):
    live: list[str] = []
    gone: list[str] = []
    for n in range(12):
        status, _, created = server.request(
            "POST", "/api/v1/patients",
            patient(source_id=f"D-{n}", identifiers=[],
                    names=[{"family": "Rebuildson", "given": [f"Kid{n}"]}]))
        assert status == 201, created
        (gone if n % 4 == 0 else live).append(created["id"])
    for patient_id in gone:
        assert server.request("DELETE", f"/api/v1/patients/{patient_id}")[0] == 204
    _wait_found(server, live[-1], 30, q="rebuildson", limit="100")

    shutil.rmtree(tmp_path / "index")
    # Written while the index is gone: must be searchable too once it is back.
    status, _, late = server.request(
        "POST", "/api/v1/patients",
        patient(source_id="D-late", identifiers=[],
                names=[{"family": "Rebuildson", "given": ["Late"]}]))
    assert status == 201
    live.append(late["id"])

    deadline = time.monotonic() + 30
    found: list[str] = []
    while time.monotonic() < deadline:
        status, found = _found(server, q="family:rebuildson~0", limit="100")
        if status == 200 and sorted(found) == sorted(live):
            break
        assert status in (200, 503), status
        time.sleep(0.1)
    assert sorted(found) == sorted(live)
    assert not set(found) & set(gone)
    # Exactly one process writes the rebuilt directory.
    assert (tmp_path / "index" / "writer.lock").exists()
    assert "Rebuildson" not in server.log()
