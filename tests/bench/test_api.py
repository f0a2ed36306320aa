"""Tests for bench.api: statistics, report, requests and commands; one short real load run."""

from __future__ import annotations

import http.server
import json
import os
import random
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import date
from pathlib import Path

import falcon.testing
import pytest
from gunicorn.config import Config

import bench.api as bench
from bench.api import (
    BASELINE,
    BASELINE_AFTER,
    LoadSpec,
    ScenarioResult,
    WorkerResult,
    aggregate,
    baseline_drift,
    baseline_rps,
    build_request,
    format_markdown,
    format_summary,
    format_table,
    gunicorn_command,
    match_body,
    mpi_command,
    parse_args,
    patient_body,
    percentile,
    report_json,
    server_env,
)
from mpi.config import Settings, load
from mpi.domain.patient import parse_patient
from mpi.server import gunicorn_options

# --------------------------------------------------------------------------- statistics


def test_percentile_interpolates_between_ranks() -> None:
    values = [float(x) for x in range(100, 0, -1)]  # 100..1, unsorted on purpose
    assert percentile(values, 50) == pytest.approx(50.5)
    assert percentile(values, 99) == pytest.approx(99.01)
    assert percentile(values, 0) == 1.0
    assert percentile(values, 100) == 100.0


def test_percentile_of_one_and_of_none() -> None:
    assert percentile([7.0], 99) == 7.0
    assert percentile([], 50) is None
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def _part(latencies: list[float], errors: dict[str, int] | None = None, *, started: float = 10.0,
          finished: float = 12.0, connects: int = 1, cpu: float = 0.5) -> WorkerResult:
    return WorkerResult(latencies=latencies, errors=errors or {}, started=started,
                        finished=finished, connects=connects, cpu_s=cpu)


def test_aggregate_merges_processes_over_their_common_span() -> None:
    parts = [
        _part([0.001, 0.003], {"HTTP 503": 1}, started=10.0, finished=11.5),
        _part([0.002, 0.004], {"HTTP 503": 2, "ConnectionResetError": 1}, started=10.1,
              finished=12.0, connects=4),
    ]
    result = aggregate("x", parts, {"server": 1.25})
    assert result.requests == 8 and result.errors == 4
    assert result.error_kinds == {"ConnectionResetError": 1, "HTTP 503": 3}
    assert result.seconds == 2.0 and result.rps == 2.0  # 2xx only
    assert result.p50_ms == pytest.approx(2.5)
    assert result.max_ms == 4.0 and result.mean_ms == pytest.approx(2.5)
    assert result.connects == 5 and result.connections == 2
    assert result.cpu_s == {"loadgen": 1.0, "server": 1.25}


def test_aggregate_names_the_cpu_nobody_of_ours_used() -> None:
    cpu = {"server": 1.0, "postgres": 0.5, "machine": 4.0, "steal": 0.25}
    result = aggregate("x", [_part([0.001], cpu=1.0)], cpu)
    assert result.cpu_s == {"loadgen": 1.0, "server": 1.0, "postgres": 0.5, "machine": 4.0,
                            "steal": 0.25, "other": 1.5}


def test_aggregate_of_nothing_is_zero_not_a_crash() -> None:
    result = aggregate("x", [])
    assert (result.requests, result.rps, result.p50_ms, result.p99_ms) == (0, 0.0, None, None)
    only_errors = aggregate("x", [_part([], {"HTTP 500": 3})])
    assert only_errors.errors == 3 and only_errors.p99_ms is None


# --------------------------------------------------------------------------- reports


def _result(name: str, rps: float, errors: int = 0, connects: int = 10,
            other: float = 1.0) -> ScenarioResult:
    return ScenarioResult(
        name=name, requests=int(rps * 10), errors=errors,
        error_kinds={"HTTP 500": errors} if errors else {}, seconds=10.0, rps=rps,
        p50_ms=1.234, p99_ms=None if rps == 0 else 9.876, mean_ms=2.0, max_ms=20.0,
        connects=connects, connections=8, cpu_s={"loadgen": 3.0, "server": 4.0, "other": other})


RESULTS = [_result(BASELINE, 1000.0), _result("POST /api/v1/patients", 250.0, errors=2,
                                              connects=2500, other=5.0)]


def test_table_has_a_row_per_scenario_with_its_ratio_to_hello() -> None:
    table = format_table(RESULTS)
    header, rule, hello, post = table.splitlines()
    assert header.split() == ["scenario", "requests", "errors", "req/s", "p50", "ms", "p99",
                              "ms", "ratio"]
    assert set(rule) == {"-", " "}
    assert hello.startswith(BASELINE) and hello.endswith("1.000")
    assert post.split()[-6:] == ["2500", "2", "250.0", "1.23", "9.88", "0.250"]
    assert len(header) == len(rule)  # right-aligned numbers end in the same column


def test_table_without_baseline_or_latencies_shows_dashes() -> None:
    row = format_table([_result("GET /x", 0.0)]).splitlines()[2]
    assert row.split()[-3:] == ["1.23", "-", "-"]


def test_json_report_is_sorted_and_carries_ratios() -> None:
    text = report_json(RESULTS, {"machine": {"cpu_count": 2}, "postgres": {"fsync": "on"}})
    data = json.loads(text)
    assert text == json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    assert data["baseline"] == BASELINE
    assert [s["ratio_vs_hello"] for s in data["scenarios"]] == [1.0, 0.25]
    assert data["scenarios"][1]["error_kinds"] == {"HTTP 500": 2}


def test_summary_names_setup_errors_cpu_and_missing_keep_alive() -> None:
    context = {
        "postgres": {"description": "local PostgreSQL 15", "fsync": "on",
                     "synchronous_commit": "on"},
        "server": {"workers": 5, "threads": 1, "worker_class": "sync"},
        "load": {"connections": 8, "warmup_s": 2.0, "duration_s": 10.0},
        "machine": {"cpu_count": 2},
        "server_logs": [{"path": "mpi-server.log", "lines": 3}, {"path": "h.log", "lines": 0}],
    }
    text = format_summary(RESULTS, context)
    assert "fsync=on" in text and "5 workers x 1 threads (sync)" in text
    assert "errors in POST /api/v1/patients: HTTP 500 x2" in text
    assert ("CPU s of 20.0 available, POST /api/v1/patients: loadgen 3.0, server 4.0, "
            "other 5.0") in text
    assert "warning: something else kept the CPUs busy (CPU 'other') during: POST" in text
    assert "no keep-alive (a new connection per request) in: POST /api/v1/patients" in text
    assert "mpi-server.log: 3 line(s)" in text and "h.log" not in text


def test_ratios_divide_by_the_mean_of_the_bare_routes_two_runs_and_drift_is_reported(
) -> None:
    """The bare route measured before and after the service: the ratio is to their mean
    (the machine drifted between them), and a drift above 10 % is a warning."""
    results = [_result(BASELINE, 1100.0), _result("GET /api/v1/patients/{id}", 450.0),
               _result(BASELINE_AFTER, 900.0)]
    assert baseline_rps(results) == 1000.0 and baseline_drift(results) == 0.2
    rows = format_table(results).splitlines()[2:]
    assert [r.split()[-1] for r in rows] == ["1.100", "0.450", "0.900"]
    data = json.loads(report_json(results, {"machine": {"cpu_count": 2}}))
    assert (data["baseline_rps"], data["baseline_drift"]) == (1000.0, 0.2)
    assert [s["ratio_vs_hello"] for s in data["scenarios"]] == [1.1, 0.45, 0.9]
    context = {"postgres": {"description": "pg", "fsync": "on", "synchronous_commit": "on"},
               "server": {"workers": 5, "threads": 1, "worker_class": "sync"},
               "load": {"connections": 4, "warmup_s": 2.0, "duration_s": 10.0},
               "machine": {"cpu_count": 2}}
    assert "the bare route's two runs differ by 20% of their mean" in format_summary(
        results, context)
    steady = [results[0], results[1], _result(BASELINE_AFTER, 1050.0)]
    assert "two runs differ" not in format_summary(steady, context)
    assert baseline_drift(results[:2]) is None and baseline_rps(results[1:2]) is None


# --------------------------------------------------------------------------- requests


def test_patient_bodies_are_valid_and_unique() -> None:
    bodies = [patient_body("t1", worker, n) for worker in range(3) for n in range(50)]
    for body in bodies[:10]:
        parse_patient(json.dumps(body).encode(), today=date.today())  # raises if invalid
    keys = {b["source_id"] for b in bodies}
    identifiers = {(i["system"], i["value"]) for b in bodies for i in b["identifiers"]}
    assert len(keys) == len(bodies) and len(identifiers) == 2 * len(bodies)
    assert patient_body("t1", 0, 0) == patient_body("t1", 0, 0)
    assert patient_body("t2", 0, 0)["source_id"] != patient_body("t1", 0, 0)["source_id"]


def test_writers_post_varied_people_and_match_probes_mix_known_and_new() -> None:
    """The writers' records are different people (names and birth dates spread wide), not
    the same few names queueing on one linking lock; half the match probes are misspelt
    variants of records the writers made, half new people."""
    bodies = [patient_body("t1", worker, n) for worker in range(4) for n in range(200)]
    people = {(b["names"][0]["family"], b["names"][0]["given"][0], b["birth_date"])
              for b in bodies}
    assert len(people) == len(bodies)
    assert len({b["names"][0]["family"] for b in bodies}) > 300
    rng = random.Random(1)
    probes = [match_body("t1", rng, known=20) for _ in range(200)]
    for probe in probes[:10]:
        parse_patient(json.dumps(probe).encode(), today=date.today())
    made = {b["birth_date"]: b for b in (patient_body("t1", w, n) for w in range(2)
                                         for n in range(20))}
    variants = [p for p in probes if p["birth_date"] in made]
    assert 70 < len(variants) < 130
    for probe in variants:
        original = made[probe["birth_date"]]["names"][0]["family"]
        assert probe["names"][0]["family"] != original
        assert probe["names"][0]["family"][:-1] == original[:-1]
    assert all(p["identifiers"] == [] for p in probes)


def test_build_request_per_kind() -> None:
    rng = random.Random(0)
    assert build_request(LoadSpec("hello", 1, 1.0, 0.0), 0, 0, rng) == ("GET", "/hello", None, {})

    method, path, body, headers = build_request(LoadSpec("create", 1, 1.0, 0.0, tag="t"), 2, 5,
                                                rng)
    assert (method, path) == ("POST", "/api/v1/patients")
    assert headers["Content-Type"] == "application/json" and headers["X-User-ID"]
    assert body is not None and json.loads(body) == patient_body("t", 2, 5)

    ids = ("a", "b", "c")
    picks = {build_request(LoadSpec("read", 1, 1.0, 0.0, ids=ids), 0, n, rng)[1]
             for n in range(50)}
    assert picks == {f"/api/v1/patients/{i}" for i in ids}

    with pytest.raises(ValueError, match="needs patient ids"):
        build_request(LoadSpec("read", 1, 1.0, 0.0), 0, 0, rng)
    with pytest.raises(ValueError, match="unknown"):
        build_request(LoadSpec("delete", 1, 1.0, 0.0), 0, 0, rng)


def test_hello_app_answers() -> None:
    result = falcon.testing.TestClient(bench.hello_app()).simulate_get("/hello")
    assert result.status_code == 200 and result.json == {"hello": "world"}


# --------------------------------------------------------------------------- commands


def test_mpi_command_uses_this_interpreter() -> None:
    assert mpi_command("serve") == [sys.executable, "-m", "mpi", "serve"]


def test_gunicorn_command_carries_the_service_options() -> None:
    options = gunicorn_options(Settings.defaults(server_port=8123, workers=3, threads=2,
                                                 log_level="WARNING"))
    cmd = gunicorn_command(options)
    assert cmd[:3] == [sys.executable, "-m", "gunicorn"] and cmd[-1] == "bench.api:hello_app()"
    assert "--access-logfile" not in cmd and "--log-config-dict" not in cmd

    cfg = Config()  # gunicorn's own parser reads back what the service would set
    parsed = cfg.parser().parse_args(cmd[3:])
    for key, value in vars(parsed).items():
        if value is not None and key in cfg.settings:
            cfg.set(key, value)
    assert cfg.bind == ["127.0.0.1:8123"]
    assert (cfg.workers, cfg.threads, cfg.timeout, cfg.keepalive) == (3, 2, 30, 5)
    assert cfg.loglevel == "warning" and cfg.errorlog == "-" and cfg.accesslog is None
    assert cfg.forwarded_allow_ips == ["127.0.0.1", "::1"]
    if "control_socket_disable" in cfg.settings:
        assert cfg.control_socket_disable is True


def test_server_env_leaves_only_defaults_and_the_benchmark_settings() -> None:
    base = {"PATH": "/bin", "WORKERS": "1", "THREADS_FILE": "/run/threads", "LOG_LEVEL": "DEBUG"}
    env = server_env(base, "postgresql://u:p@127.0.0.1:5/db", 4321)
    assert env == {"PATH": "/bin", "DATABASE_URL": "postgresql://u:p@127.0.0.1:5/db",
                   "SERVER_HOST": "127.0.0.1", "SERVER_PORT": "4321", "LOG_LEVEL": "WARNING"}
    settings = load(env)
    assert settings.workers == Settings.defaults().workers and settings.threads == 1


def test_arguments_are_checked() -> None:
    args = bench.parse_args([])
    assert (args.duration, args.connections, args.json) == (10.0, 8, Path(".bench/api.json"))
    assert not args.fast_postgres and args.startups == 5 and args.only is None
    assert args.pex is None
    assert bench.parse_args(["--pex", sys.executable]).pex == Path(sys.executable).resolve()
    assert bench.parse_args(["--only", "adt, read"]).only == ("adt", "read")
    for bad in (["--duration", "0"], ["--connections", "0"], ["--warmup", "-1"],
                ["--only", "adt,nonsense"], ["--only", ","],
                ["--pex", "no/such/mpi.pex"], ["--pex", str(bench.ROOT / "README.md")]):
        with pytest.raises(SystemExit):
            bench.parse_args(bad)


# --------------------------------------------------------------------------- real load


class _Unavailable(http.server.BaseHTTPRequestHandler):
    """Answers every GET with 503, keeping the connection open (HTTP/1.1)."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self.send_response(503)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def unavailable_port() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Unavailable)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def test_worker_counts_non_2xx_as_errors_and_keeps_the_connection(unavailable_port: int) -> None:
    spec = LoadSpec("hello", unavailable_port, duration=0.3, warmup=0.1, timeout=5)
    result = bench.run_worker(spec, 0)
    assert result.latencies == [] and result.errors["HTTP 503"] > 10
    assert result.connects == 0  # connected during the warm-up, reused in the window
    # The measured window is never shorter than asked (the worker runs to its deadline);
    # how much longer it runs depends on the machine, so no upper bound is asserted.
    assert result.finished - result.started >= spec.duration


def test_worker_counts_refused_connections() -> None:
    spec = LoadSpec("hello", bench.free_port(), duration=0.2, warmup=0.0, timeout=1)
    result = bench.run_worker(spec, 0)
    assert result.errors.get("ConnectionRefusedError", 0) > 0 and result.latencies == []


def test_load_against_the_hello_app(tmp_path: Path) -> None:
    """Smoke: gunicorn serves the hello app; two spawned load processes for about a second."""
    port = bench.free_port()
    options = gunicorn_options(Settings.defaults(server_port=port, workers=2,
                                                 log_level="WARNING"))
    log = tmp_path / "hello.log"
    env = server_env(os.environ, "sqlite:///unused.db", port)
    with bench.running_server(gunicorn_command(options), env=env, cwd=bench.ROOT, log=log,
                              port=port, ready_path=bench.HELLO) as proc:
        parts, cpu = bench.generate_load(LoadSpec("hello", port, duration=1.0, warmup=0.2), 2,
                                         {"server": lambda: bench._group_cpu(proc.pid)})
        assert bench._child_count(proc.pid) == 2
    assert proc.poll() is not None  # stopped on leaving the block
    result = aggregate(BASELINE, parts, cpu)
    assert result.errors == 0 and result.requests > 20, log.read_text()
    assert result.p50_ms is not None and result.p99_ms is not None
    # The window spans every worker's, from the first start to the last finish.
    assert result.seconds == round(max(p.finished for p in parts)
                                   - min(p.started for p in parts), 3)
    assert result.seconds >= 1.0 and result.cpu_s["server"] > 0


def test_startups_are_timed_to_ready_and_memory_is_read_from_proc(tmp_path: Path) -> None:
    """Start-up: ``mpi serve`` (here on its embedded SQLite) started three times, each on
    its own ports, timed from the command to readiness, stopped after; memory: every
    process of a server's group, PSS and RSS from /proc."""
    env = {**server_env(os.environ, f"sqlite:///{tmp_path / 'mpi.db'}", 0),
           "SEARCH_INDEX_PATH": str(tmp_path / "index"), "WORKERS": "2"}
    ports: list[str] = []

    def fresh() -> dict[str, str]:
        ports.append(str(bench.free_port()))
        return {"SERVER_PORT": ports[-1]}

    log = tmp_path / "starts.log"
    startup = bench.measure_startups(bench.mpi_command("serve"), env, cwd=tmp_path, log=log,
                                     times=3, ready_path=bench.READY, ports=fresh)
    assert startup["starts"] == 3 and len(set(ports)) == 3, log.read_text()
    assert 0 < startup["min_s"] <= startup["median_s"] <= startup["max_s"] < 30
    # A PEX's first start (it unpacks itself) is made but not counted.
    again = bench.measure_startups(bench.mpi_command("serve"), env, cwd=tmp_path, log=log,
                                   times=1, ready_path=bench.READY, ports=fresh,
                                   first_unmeasured=True)
    assert again["starts"] == 1 and len(set(ports)) == 5, log.read_text()
    port = bench.free_port()
    options = gunicorn_options(Settings.defaults(server_port=port, workers=2,
                                                 log_level="WARNING"))
    with bench.running_server(gunicorn_command(options), env=env, cwd=bench.ROOT,
                              log=tmp_path / "hello.log", port=port,
                              ready_path=bench.HELLO) as proc:
        # ready means one worker answers; the master may not have forked the other yet
        deadline = time.monotonic() + 20
        memory = bench.process_memory(proc.pid)
        while memory["process_count"] < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
            memory = bench.process_memory(proc.pid)
    assert memory["process_count"] == 3  # the master and two workers
    assert 0 < memory["pss_mib"] <= memory["rss_mib"]
    assert all("gunicorn" in p["title"] for p in memory["processes"])
    lines = bench._registry_lines({
        "startup": {**startup, "command": "python -m mpi serve", "records": 7},
        "startup_pex": {**again, "command": "dist/mpi.pex serve", "records": 7},
        "memory": memory})
    assert lines[0].startswith("startup: `python -m mpi serve` ready (/api/v1/health/ready) in ")
    assert "over 3 starts, at 7 records" in lines[0]
    assert lines[1].startswith("startup: `dist/mpi.pex serve` ready (/api/v1/health/ready) in ")
    assert "over 1 starts, at 7 records" in lines[1]
    assert lines[2].startswith("memory after the scenarios: 3 processes")


def test_durable_local_postgres_keeps_fsync_on(tmp_path: Path) -> None:
    """The benchmark's PostgreSQL: start_postgres(durable=True), chosen as the tests' is."""
    from toolkit.postgres import start_postgres

    with start_postgres(workdir=tmp_path, durable=True) as server:
        info = bench._postgres_info(server.url)
        local = server.kind == "local"
        assert (bench._postmaster_pid(server) is not None) == local
    assert info["version"].startswith("PostgreSQL ")
    if local:  # container and external servers are used as they are configured
        assert (info["fsync"], info["synchronous_commit"], info["full_page_writes"]) == (
            "on", "on", "on")


def test_markdown_table_has_every_scenario_with_its_ratio_and_the_setup() -> None:
    context = {
        "postgres": {"fsync": "on", "synchronous_commit": "on"},
        "server": {"workers": 5, "threads": 1}, "git_commit": "abc123",
        "load": {"connections": 4, "duration_s": 10.0}, "machine": {"cpu_count": 2},
        "command": ["python", "-m", "bench.api", "--connections", "4"],
    }
    text = format_markdown(RESULTS, context)
    lines = text.splitlines()
    assert lines[0].startswith("`python -m bench.api --connections 4` at abc123: ")
    assert "fsync=on" in lines[0] and "4 connections" in lines[0]
    rows = [line for line in lines if line.startswith("| `")]
    assert len(rows) == len(RESULTS)
    assert rows[0].split("|")[5].strip() == "1.000" and rows[1].split("|")[5].strip() == "0.250"


def test_a_registry_sized_run_reads_and_matches_what_it_loaded() -> None:
    args = parse_args(["--registry", "5000"])
    assert args.registry == 5000 and parse_args([]).registry == 0
    with pytest.raises(SystemExit):
        parse_args(["--registry", "-1"])
    bodies = ('{"names": [{"family": "A"}]}', '{"names": [{"family": "B"}]}')
    spec = LoadSpec("match", 1, 1.0, 0.0, bodies=bodies)
    rng = random.Random(0)
    sent = {build_request(spec, 0, n, rng)[2] for n in range(20)}
    assert sent == {b.encode() for b in bodies}
    # The FHIR $match scenario sends the same probes (bench.identity's bodies: no country)
    from bench.identity import patient_body as registry_body

    probe = registry_body({"family_name": "Okafor", "given_name": "Ada", "birth_date":
                           "1980-01-02", "sex": "f", "address_line": "1 Elm St", "city": "X",
                           "state": "NSW", "postal_code": "2000", "phone": "0400 000 000",
                           "ssn": ""}, "p1")
    _, _, body, _ = build_request(replace(spec, kind="fhir-match",
                                          bodies=(json.dumps(probe),)), 0, 0, rng)
    assert body is not None
    (parameter,) = json.loads(body)["parameter"]
    assert parameter["resource"]["address"] == [{"line": ["1 Elm St"], "city": "X",
                                                 "state": "NSW", "postalCode": "2000"}]
    context = {"postgres": {"description": "pg", "fsync": "on", "synchronous_commit": "on"},
               "server": {"workers": 5, "threads": 1, "worker_class": "x"},
               "load": {"connections": 4, "warmup_s": 1.0, "duration_s": 1.0},
               "machine": {"cpu_count": 2},
               "registry": {"records": 5000, "import_s": 6.2, "import_records_per_s": 806}}
    line = "registry: 5000 people loaded by mpi import in 6.2 s (806 records/s)"
    assert line in format_summary(RESULTS, context)
    assert line in format_markdown(RESULTS, context)
    # A kept database's registry (an earlier run loaded it): said so, nothing timed.
    kept = {**context, "registry": {"records": 1000042}}
    assert ("registry: 1000042 people already in the database (kept from an earlier load)"
            in format_summary(RESULTS, kept))


def test_the_scenarios_wait_for_the_fresh_instances_index() -> None:
    """With a registry, the fresh instance builds its search index first: the bench waits
    until readiness says search is complete (it is not what the scenarios measure)."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from bench.api import wait_for_search

    answers = iter(["unavailable: the search index is being built", "behind: 3 change(s)",
                    "ok"])

    class Ready(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = json.dumps({"checks": {"search": next(answers, "ok")}}).encode()
            self.send_response(200 if self.path.endswith("/ready") else 404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Ready)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        figures = wait_for_search(server.server_address[1], 1000, timeout=30)
    finally:
        server.shutdown()
    assert figures["index_build_s"] >= 1.0  # two polls half a second apart
    assert figures["index_documents_per_s"] <= 1000


def test_fhir_scenarios_send_requests_the_fhir_routes_answer(client) -> None:
    """The FHIR read, PDQm search and $match requests the benchmark sends, sent to the
    app itself: each answered 200 with what it asked for (a FHIR Patient, a searchset
    Bundle that finds the record searched for, a match Bundle)."""
    from fhir.resources.R4B import get_fhir_model_class

    created = [client.simulate_post(bench.PATIENTS, json=patient_body("t", w, n)).json
               for w in range(2) for n in range(3)]
    rng = random.Random(3)
    ids = tuple(p["id"] for p in created)
    for kind, resource_type in (("fhir-read", "Patient"), ("fhir-search", "Bundle"),
                                ("fhir-match", "Bundle")):
        spec = LoadSpec(kind, 1, 1.0, 0.0, tag="t", ids=ids, known=3)
        for n in range(5):
            method, path, body, headers = build_request(spec, 0, n, rng)
            answer = client.simulate_request(method, path, body=body, headers=headers)
            assert answer.status_code == 200, (kind, path, answer.text)
            get_fhir_model_class(resource_type).model_validate(answer.json)
            if kind == "fhir-search":
                assert answer.json["total"] >= 1, path  # the record it was drawn from


def test_search_scenarios_find_the_record_they_were_drawn_from(settings, clock) -> None:
    """Each REST search the benchmark sends (surname prefix, fuzzy surname, name + birth
    year, identifier), sent to the app itself once the index holds the created records:
    answered 200, complete, with the record it was drawn from among the hits."""
    import falcon.testing

    from bench.api import SEARCHES, search_query
    from mpi.api.app import create_app
    from mpi.search.indexer import Indexer
    from mpi.storage.db import close_database, connection, database_for
    from mpi.wiring import build
    from tests.conftest import Ids

    database = database_for(settings.database, max_connections=4)
    client = falcon.testing.TestClient(create_app(build(settings, db=database, clock=clock,
                                                        new_id=Ids())))
    indexer = Indexer(database, settings.search_index_path)
    try:
        created = {(w, n): client.simulate_post(bench.PATIENTS,
                                                json=patient_body("t", w, n)).json
                   for w in range(2) for n in range(3)}
        with connection(database):
            indexer.catch_up()
        for _, kind in SEARCHES:
            for seed in range(6):
                spec = LoadSpec(kind, 1, 1.0, 0.0, tag="t", known=3)
                method, path, body, headers = build_request(spec, 0, 0, random.Random(seed))
                draw = random.Random(seed)  # the same draw: the record the query came from
                drawn = created[(draw.randrange(2), draw.randrange(3))]
                assert path == f"{bench.SEARCH}?" + search_query(kind, "t", random.Random(seed),
                                                                 3)
                answer = client.simulate_request(method, path, body=body, headers=headers)
                assert answer.status_code == 200, (kind, path, answer.text)
                assert answer.json["index_complete"] is True
                assert drawn["id"] in [i["patient"]["id"] for i in answer.json["items"]], path
    finally:
        indexer.stop()
        close_database(database)
    with pytest.raises(ValueError, match="unknown search kind"):
        search_query("search-everything", "t", random.Random(0), 3)


def test_adt_scenario_messages_are_accepted_and_create_the_benchmark_people(services) -> None:
    """The ADT^A01 frames the MLLP scenario sends, to the service's own handler with the
    sender and domain the benchmark registers: each acknowledged AA and stored as the same
    person ``patient_body`` describes."""
    from mpi.domain.audit import Actor
    from mpi.domain.domains import IdentityDomainInput
    from mpi.hl7.handler import Hl7Handler

    admin = Actor(user_id="bench-setup")
    services.domains.add(IdentityDomainInput(system=f"urn:oid:{bench.ADT_OID}", name="Bench ADT",
                                             sources=["bench-adt"], namespace="BENCH"), admin)
    services.senders.add("bench-adt", application=bench.ADT_APPLICATION,
                         facility=bench.ADT_FACILITY, sources="bench-adt", actor=admin)
    handler = Hl7Handler(services, application="MPI", facility="MPI",
                         certificates_required=False)
    for n in range(3):
        frame = bench.adt_message("t", 0, n)
        assert frame.startswith(b"\x0b") and frame.endswith(b"\x1c\r")
        answer = handler.handle(frame[1:-2])
        assert b"MSA|AA|At-0-" in answer, answer
        stored = services.patients.get(services.patients.id_of("bench-adt", f"H-t-0-{n}"), admin)
        body = patient_body("t", 0, n)
        assert stored.names[0].family == body["names"][0]["family"]
        assert stored.birth_date.isoformat() == body["birth_date"]


def test_an_external_server_on_this_machine_has_its_cpu_counted(postgres_server,
                                                                tmp_path: Path) -> None:
    """A kept server named by MPI_TEST_DATABASE_URL is found by the backend serving one of
    the benchmark's connections: its CPU is PostgreSQL's, not "something else" in the
    summary. A server in a container or on another machine is not looked for here."""
    from toolkit.postgres import PostgresServer, start_postgres

    local = start_postgres(workdir=tmp_path, env={"MPI_TEST_POSTGRES": "local"})
    try:
        own = bench._postmaster_pid(local)
        assert own is not None and Path(f"/proc/{own}/comm").read_text().strip() == "postgres"
        kept = PostgresServer(url=local.url, kind="external", description="kept")
        assert bench._postmaster_pid(kept) == own
    finally:
        local.stop()
    elsewhere = PostgresServer(url="postgresql://mpi@192.0.2.1:5/mpi?connect_timeout=1",
                               kind="external", description="elsewhere")
    assert bench._postmaster_pid(elsewhere) is None
    if postgres_server.kind == "testcontainers":  # the backend's pid is the container's
        assert bench._postmaster_pid(replace(postgres_server, kind="external")) is None
