"""Search under ``mpi serve`` (an indexer process writing, several workers reading): writes
become searchable, and deleting the index directory under the running service loses nothing.
How fast a write becomes searchable is a figure of ``nox -s bench -- search``, not of a test."""

from __future__ import annotations

import contextlib
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

    _delete_under_a_writer(tmp_path / "index")
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


def _delete_under_a_writer(path: Path) -> None:
    """`rm -rf` of a directory the service may be writing into at that moment: a file
    created between the walk and the rmdir leaves it "not empty", so walk again, as an
    operator would run the command again."""
    for _ in range(50):
        try:
            shutil.rmtree(path)
            return
        except OSError:  # "not empty", or an entry gone between the walk and the unlink
            if not path.exists():
                return
            time.sleep(0.05)
    raise AssertionError(f"{path} could not be deleted")


def _writer_pid(index: Path) -> int:
    return int((index / "writer.lock").read_text().split()[0])


def test_a_dead_indexer_process_is_replaced_and_gets_the_index_back(tmp_path: Path):
    """kill -9 of the indexer process: a worker's standby thread keeps the index current
    meanwhile; the master forks a new indexer process within about a second, and the
    worker hands the lock back to it (before, the worker kept it for good, indexing in the
    GIL of a request-serving process)."""
    import os
    import signal

    index = tmp_path / "index"
    srv = Server({"DATABASE_URL": "sqlite:///data/mpi.db", "SEARCH_INDEX_PATH": str(index),
                  "SEARCH_POLL_INTERVAL": "0.1"}, tmp_path)
    try:
        master = srv.proc.pid
        first = _writer_pid(index)
        assert _parent(first) == master
        os.kill(first, signal.SIGKILL)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, ValueError, IndexError):  # being rewritten
                writer = _writer_pid(index)
                if writer != first and _is_indexer(writer, master, index):
                    break
            time.sleep(0.1)
        else:
            raise AssertionError(f"no new indexer process wrote the index: {srv.log()}")
        assert "search indexer process" in srv.log() and "died" in srv.log()
        status, _, created = srv.request("POST", "/api/v1/patients", patient(
            source_id="after-kill", identifiers=[],
            names=[{"family": "Afterkill", "given": ["Ada"]}]))
        assert status == 201
        _wait_found(srv, created["id"], 10, q="family:afterkill~0")
        assert _writer_pid(index) == writer  # still the indexer process, not a worker
    finally:
        srv.stop()


def _parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def _is_indexer(pid: int, master: int, index: Path) -> bool:
    """A child of the master named in writer.preferred (workers are never named there)."""
    try:
        named = int((index / "writer.preferred").read_text().split()[0])
        return _parent(pid) == master and named == pid
    except (OSError, ValueError, IndexError):
        return False
