"""``mpi serve`` as a real process: the whole lifecycle over HTTP, then a graceful SIGTERM."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import patient

pytestmark = pytest.mark.integration

SECRET_FAMILY = "Quagmirewicz"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, env: dict[str, str], cwd: Path):
        self.port = _free_port()
        self.stderr_path = cwd / "server.log"
        full = {**os.environ, "WORKERS": "2", "LOG_LEVEL": "DEBUG", "GRACEFUL_TIMEOUT": "10",
                **env, "SERVER_PORT": str(self.port)}
        self._log = self.stderr_path.open("wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "mpi", "serve"], env=full, cwd=cwd,
                                     stdout=self._log, stderr=subprocess.STDOUT)
        self._wait_healthy()

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited: {self.log()}")
            try:
                if self.request("GET", "/api/v1/health/ready")[0] == 200:
                    return
            except OSError:
                time.sleep(0.1)
        raise AssertionError(f"server not ready: {self.log()}")

    def request(self, method: str, path: str, body: object = None,
                headers: dict[str, str] | None = None) -> tuple[int, dict, Any]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        data = json.dumps(body).encode() if body is not None else None
        hdrs = {"Content-Type": "application/json", **(headers or {})} if data else headers or {}
        conn.request(method, path, body=data, headers=hdrs)
        resp = conn.getresponse()
        raw = resp.read()
        conn.close()
        parsed = json.loads(raw) if raw else None
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, parsed

    def log(self) -> str:
        self._log.flush()
        return self.stderr_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


def database_url_for(request: pytest.FixtureRequest) -> str:
    """The server's database for a ``postgresql``/``sqlite`` parametrised fixture: the
    session's PostgreSQL, emptied, or the default SQLite file under the working directory."""
    if request.param != "postgresql":
        return "sqlite:///data/mpi.db"  # the default, relative to the working directory
    url = str(request.getfixturevalue("postgres_url"))
    from mpi.config import parse_database_url
    from mpi.storage.db import close_database, connection, database_for
    from tests.conftest import _clean

    db = database_for(parse_database_url(url))
    with connection(db):
        _clean(db)
    close_database(db)
    return url


@pytest.fixture(params=["postgresql", "sqlite"])
def server(request, tmp_path) -> Iterator[Server]:
    srv = Server({"DATABASE_URL": database_url_for(request)}, tmp_path)
    yield srv
    srv.stop()


def test_lifecycle_over_http(server):
    status, headers, created = server.request(
        "POST", "/api/v1/patients",
        patient(names=[{"family": SECRET_FAMILY, "given": ["Ada"]}]),
        {"X-User-ID": "clerk-1", "X-Request-ID": "it-1"})
    assert status == 201, created
    assert headers["x-request-id"] == "it-1"
    pid = created["id"]
    location = headers["location"]

    status, headers, read = server.request("GET", location)
    assert status == 200 and read == created and headers["etag"] == '"1"'

    changed = patient(names=[{"family": SECRET_FAMILY, "given": ["Ada", "May"]}])
    status, headers, updated = server.request("PUT", location, changed, {"If-Match": '"1"'})
    assert status == 200 and updated["version"] == 2 and headers["etag"] == '"2"'

    status, _, problem = server.request("PUT", location, changed, {"If-Match": '"1"'})
    assert status == 412 and problem["current_version"] == 2

    status, _, _ = server.request("DELETE", location, headers={"If-Match": '"2"'})
    assert status == 204
    assert server.request("GET", location)[0] == 410

    # The read's audit row may wait in the worker that answered it (AUDIT_READ_WINDOW,
    # 0.2 s by default) while another worker lists the trail.
    expected = ["patient:record:delete", "patient:record:update", "patient:record:read",
                "patient:record:create", "identity:link:new"]
    deadline = time.monotonic() + 5
    while True:
        status, _, audit = server.request("GET", f"/api/v1/patients/{pid}/audit")
        # (each look at the trail is in it too: audit:trail:read)
        actions = [e["action"] for e in audit["items"] if not e["action"].startswith("audit:")]
        if actions == expected or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert actions == expected

    status, _, feed = server.request("GET", "/api/v1/events?after=0")
    assert [(e["type"], e["entity_version"]) for e in feed["events"]] == [
        ("PatientCreated", 1), ("PatientLinked", None), ("PatientUpdated", 2),
        ("PatientDeleted", 3)]

    log = server.log()
    assert "POST /api/v1/patients 201" in log
    assert SECRET_FAMILY not in log and "123-45-6789" not in log
    assert pid not in log


def test_sigterm_lets_in_flight_requests_finish(server):
    body = json.dumps(patient(source_id="slow-1")).encode()
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=15)
    sock.sendall(b"POST /api/v1/patients HTTP/1.1\r\nHost: x\r\n"
                 b"Content-Type: application/json\r\nConnection: close\r\n"
                 + f"Content-Length: {len(body)}\r\n\r\n".encode() + body[:20])
    time.sleep(0.5)  # the request is now in a worker, waiting for the rest of its body
    started = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    sock.sendall(body[20:])
    response = b""
    while chunk := sock.recv(65536):
        response += chunk
    sock.close()
    assert response.startswith(b"HTTP/1.1 201"), response[:200]
    assert server.proc.wait(timeout=15) == 0
    assert time.monotonic() - started < 10


@pytest.fixture(params=["postgresql", "sqlite"])
def patient_server(request, tmp_path) -> Iterator[tuple[Server, str]]:
    """A server whose reads' audit rows wait 5 s (AUDIT_READ_WINDOW), and its database."""
    url = database_url_for(request)
    srv = Server({"DATABASE_URL": url, "AUDIT_READ_WINDOW": "5"}, tmp_path)
    yield srv, url
    srv.stop()


def _read_audit_rows(url: str, cwd: Path, patient_id: str) -> int:
    from mpi.config import parse_database_url
    from mpi.storage.db import close_database, connection, database_for

    target = parse_database_url(url)
    if target.kind == "sqlite":
        target = parse_database_url(f"sqlite:///{cwd / target.path}")
    db = database_for(target)
    try:
        with connection(db):
            return db.execute_sql(
                f"SELECT count(*) FROM audit_event WHERE action = 'patient:record:read' "
                f"AND entity_id = {db.param}", (patient_id,)).fetchone()[0]
    finally:
        close_database(db)


def test_sigterm_writes_the_audit_row_of_every_read_answered(patient_server, tmp_path):
    """Reads' audit rows wait in the workers that answered them; a graceful stop writes
    them all before the workers exit: no answered read goes unaudited."""
    server, url = patient_server
    status, _, created = server.request("POST", "/api/v1/patients", patient(source_id="r-1"),
                                        {"X-User-ID": "clerk-1"})
    assert status == 201, created
    pid = created["id"]
    answered = 0
    for _ in range(40):  # over several connections: both workers answer some
        status, _, _ = server.request("GET", f"/api/v1/patients/{pid}")
        answered += status == 200
    assert answered == 40
    assert _read_audit_rows(url, tmp_path, pid) < answered  # most still wait (5 s window)
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(timeout=20) == 0
    assert _read_audit_rows(url, tmp_path, pid) == answered


def _children(pid: int) -> set[int]:
    """The live processes whose parent is ``pid`` (read from /proc)."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.add(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_kill_9_of_the_master_frees_the_port_within_about_a_second(tmp_path):
    """The drill: after ``kill -9`` of the master its workers kept serving and holding the
    port for ~15 s, so an immediate restart failed. Workers and the indexer process now
    watch their parent; the port is free, and a new server starts on it, within ~1 s."""
    first = Server({"DATABASE_URL": "sqlite:///data/mpi.db"}, tmp_path)
    # Ready as soon as one worker answers; gunicorn forks the next up to 0.1 s apart.
    deadline = time.monotonic() + 10
    while len(children := _children(first.proc.pid)) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(children) >= 3, children  # two workers and the indexer process
    killed = time.monotonic()
    first.proc.kill()
    first.proc.wait()
    while any(_alive(c) for c in children) and time.monotonic() - killed < 10:
        time.sleep(0.05)
    gone = time.monotonic() - killed
    print(f"\nkill -9 of the master: its {len(children)} children gone in {gone:.2f} s")
    assert not any(_alive(c) for c in children), first.log()
    assert gone < 2.0, gone
    with socket.socket() as probe:  # as gunicorn binds (SO_REUSEADDR): the port is free
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(("127.0.0.1", first.port))
    first._log.close()
