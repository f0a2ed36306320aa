"""``GET /metrics`` of a real ``mpi serve`` with several workers: one scrape, whichever worker
answers it, counts the traffic every worker served; a killed worker's counts stay; the
per-start directory is removed when the server stops."""

from __future__ import annotations

import glob
import http.client
import os
import signal
import subprocess
import time
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import patient
from tests.integration.test_serve import Server, database_url_for

pytestmark = pytest.mark.integration

READ = "/api/v1/patients/{patient_id:uuid}"


@pytest.fixture(params=["postgresql", "sqlite"])
def server(request, tmp_path) -> Iterator[Server]:
    srv = Server({"DATABASE_URL": database_url_for(request), "WORKERS": "3"}, tmp_path)
    yield srv
    srv.stop()


def scrape(port: int) -> tuple[dict[tuple[str, frozenset], float], str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/metrics")
    resp = conn.getresponse()
    text = resp.read().decode()
    conn.close()
    assert resp.status == 200, text
    found = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            found[(s.name, frozenset(s.labels.items()))] = s.value
    return found, text


def value(found, name, **labels) -> float:
    return found.get((name, frozenset(labels.items())), 0.0)


def wait_for(port: int, name: str, expected: float) -> tuple[dict, str]:
    """Scrape until ``name`` reads ``expected`` (a worker counts itself once its app is
    built, a moment after gunicorn forks it): that scrape."""
    deadline = time.monotonic() + 20
    while True:
        found, text = scrape(port)
        if value(found, name) == expected:
            return found, text
        assert time.monotonic() < deadline, f"{name} = {value(found, name)}, not {expected}"
        time.sleep(0.2)


def children(master: int) -> list[int]:
    """The master's children: its workers and the indexer process."""
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(master)],
                         capture_output=True, text=True, check=True).stdout
    return [int(line) for line in out.split()]


def metrics_directory(master: int) -> str:
    (found,) = glob.glob(f"/dev/shm/mpi-metrics-{master}-*")
    return found


def test_one_scrape_counts_every_workers_traffic(server):
    # Environment variables of the test run must not leak in: the server made its own.
    scrape(server.port)
    status, _, created = server.request("POST", "/api/v1/patients", patient())
    assert status == 201
    directory = metrics_directory(server.proc.pid)
    reads = 0
    while reads < 600:  # a new connection each time: the workers take turns
        for _ in range(20):
            assert server.request("GET", f"/api/v1/patients/{created['id']}")[0] == 200
        reads += 20
        serving = {f.rsplit("_", 1)[1] for f in os.listdir(directory)
                   if f.startswith("histogram_")}  # only workers time requests
        if len(serving) >= 2:
            break
    assert len(serving) >= 2, f"one worker served every request: {serving}"

    found, text = wait_for(server.port, "mpi_db_pool_connections_max", 3 * 10)
    assert value(found, "mpi_http_requests_total", route=READ, method="GET",
                 status="200") == reads
    assert value(found, "mpi_http_request_duration_seconds_count", route=READ,
                 method="GET") == reads
    assert value(found, "mpi_records_written_total", operation="create") == 1
    assert value(found, "mpi_link_decisions_total", outcome="new_person") == 1
    assert value(found, "mpi_review_queue_depth", kind="possible_match") == 0
    assert created["id"] not in text and "Smith" not in text

    # The indexer process counts into the same directory: the record reaches the index.
    # (The workers' readers see the indexer's commit a moment after it is made.)
    deadline = time.monotonic() + 20
    while (value(found, "mpi_search_index_events_applied_total") < 2
           or value(found, "mpi_search_index_lag_events") != 0):
        assert time.monotonic() < deadline, "the indexer process's count never showed"
        time.sleep(0.3)
        found, _ = scrape(server.port)
    assert value(found, "mpi_search_index_available") == 1

    # A worker killed outright: gunicorn replaces it; what it counted is still counted.
    # (Only workers time requests: a histogram file names a worker.)
    before = children(server.proc.pid)
    victim = next(int(f.rsplit("_", 1)[1][:-3]) for f in os.listdir(directory)
                  if f.startswith("histogram_") and int(f.rsplit("_", 1)[1][:-3]) in before)
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 20
    while victim in (now := children(server.proc.pid)) or len(now) < len(before):
        assert time.monotonic() < deadline, "the worker was not replaced"
        time.sleep(0.2)
    # Its live gauges are gone; its replacement's count once it has built its app.
    found, _ = wait_for(server.port, "mpi_db_pool_connections_max", 3 * 10)
    assert value(found, "mpi_http_requests_total", route=READ, method="GET",
                 status="200") == reads
    assert not glob.glob(f"{directory}/gauge_livesum_{victim}.db")

    server.proc.send_signal(signal.SIGTERM)
    server.proc.wait(timeout=30)
    assert not os.path.exists(directory)


def test_the_mllp_listeners_messages_are_in_the_same_scrape(tmp_path):
    """The HL7 listener is a process of its own: its counts reach /metrics too."""
    import socket
    import sys

    from bench.api import ADT_APPLICATION, ADT_FACILITY, ADT_OID, adt_message
    from tests.helpers import free_port

    env = {**os.environ, "DATABASE_URL": "sqlite:///data/mpi.db", "LOG_LEVEL": "WARNING"}
    for argv in (["migrate"],
                 ["domain", "add", f"urn:oid:{ADT_OID}", "--name", "ADT", "--sources", "adt",
                  "--namespace", "BENCH"],
                 ["hl7", "sender", "add", "adt", "--application", ADT_APPLICATION,
                  "--facility", ADT_FACILITY, "--sources", "adt"]):
        subprocess.run([sys.executable, "-m", "mpi", *argv], cwd=tmp_path, env=env,
                       check=True, capture_output=True, timeout=120)
    mllp = free_port()
    server = Server({"DATABASE_URL": "sqlite:///data/mpi.db", "HL7_MLLP_PORT": str(mllp)},
                    tmp_path)
    try:
        for n in range(3):
            with socket.create_connection(("127.0.0.1", mllp), timeout=20) as conn:
                conn.sendall(adt_message("metrics", 0, n))
                answer = b""
                while not answer.endswith(b"\x1c\r"):
                    answer += conn.recv(65536)
            assert b"MSA|AA|" in answer, answer
        found, _ = scrape(server.port)
        assert value(found, "mpi_hl7_messages_total", message_type="ADT^A01", ack="AA") == 3
        assert value(found, "mpi_hl7_message_duration_seconds_count",
                     message_type="ADT^A01") == 3
        assert value(found, "mpi_records_written_total", operation="create") == 3
    finally:
        server.stop()
