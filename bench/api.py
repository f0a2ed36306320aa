"""API benchmark behind ``nox -s bench``: the patient API on PostgreSQL next to a bare route.

    python -m bench.api [--duration S] [--warmup S] [--connections N] [--registry N]
                        [--startups N] [--pex PATH] [--json PATH]

Measures throughput and p50/p99 latency of ``POST /api/v1/patients`` (varied records:
writers that post look-alikes measure the linking locks, not the service),
``GET /api/v1/patients/{id}`` and ``POST /api/v1/patients/match`` (half misspelt variants
of created records, half new people) and ``GET /api/v1/patients/search`` (a surname
prefix, a fuzzy surname, name + birth year, an identifier: a row each, drawn from the
created records once the index holds them) served by ``mpi serve`` on a throwaway PostgreSQL
with the default gunicorn settings, and of a bare Falcon ``hello`` route served
by gunicorn with the same options. The load generator and the servers share the
machine's CPUs, so the figure to compare across machines and commits is the ratio
of each scenario's req/s to ``hello`` measured in the same run. ``--registry N`` first
loads N synthetic people with ``mpi import`` (its rate is reported) so that reads and
matches run against a registry of that size, their family names drawn as a real
registry's are (a few common ones, a long tail of rare ones: about 127,000 distinct in
a million, where the FEBRL list alone has 3,233; ``bench.identity.family_drawer``), so
that a fuzzy search walks as many names as it would in use. The scenarios start once
the instance's search index is built (its build time is reported too). On a kept database
(``MPI_TEST_POSTGRES=external``, ``MPI_TEST_DATABASE_URL``) that already holds N records
from an earlier run, the registry is used as it is, not loaded again (a million records
take an hour to load here), and ``--only`` picks the scenarios to measure at that size.
After the scenarios the service's memory is read (PSS and RSS of every process of
``mpi serve``, from /proc), and ``mpi serve`` is started ``--startups`` times more on the
same database and index: the time from the command to its readiness answering 200
(median, min, max); with ``--pex PATH`` (``nox -s build`` writes ``dist/mpi.pex``) the
PEX that ships is timed the same way, after one uncounted start that unpacks it.

- The PostgreSQL server is durable (fsync and synchronous_commit on) unless
  ``--fast-postgres``; the one actually used is described in the report.
- One server runs at a time: hello first, then the service, then hello again (the
  ratios divide by the mean of the two hello runs; the summary warns when they differ
  by more than 10 %: the machine's speed drifted).
- The load generator runs in separate processes (spawned, one HTTP/1.1 connection
  each, keep-alive when the server allows it), with a warm-up, then a fixed window.
  Only successful (2xx) responses count in req/s and latencies; anything else is an error.
- Every loop is bounded by time; only 127.0.0.1 is contacted; servers, load
  processes and PostgreSQL are stopped in ``finally`` blocks, also on Ctrl-C/SIGTERM.

Output: a table on stdout and a JSON report (keys sorted, default ``.bench/api.json``);
the servers' logs are kept next to the JSON report. Each scenario also records where
the CPU time went (load generator, server, PostgreSQL, the whole machine); CPU that
none of ours used ("other") means something else ran, and the summary warns.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import math
import multiprocessing
import os
import platform
import random
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from functools import partial
from pathlib import Path
from queue import Empty
from types import FrameType
from typing import Any
from urllib.parse import quote, urlencode

from toolkit import commands
from toolkit.procs import free_port, log_tail

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
PATIENTS = "/api/v1/patients"
READY = "/api/v1/health/ready"
HELLO = "/hello"
HELLO_APP = "bench.api:hello_app()"
BASELINE = "GET /hello (bare Falcon)"
#: The bare route again, once the service's scenarios are done: the machine's speed drifts
#: between runs and within one (the bare route alone varied 3,445-5,168 req/s in one
#: session), so ratios divide by the mean of the two and the summary says how far apart
#: they were.
BASELINE_AFTER = "GET /hello (bare Falcon, after)"
#: The drift between the two bare-route runs (as a fraction of their mean) above which
#: the summary warns that the ratios are that uncertain.
BASELINE_DRIFT_WARNING = 0.10
POST_PATIENT = "POST /api/v1/patients"
POST_ANALYZED = "POST /api/v1/patients (analyzed tables)"
GET_PATIENT = "GET /api/v1/patients/{id}"
MATCH = "/api/v1/patients/match"
MATCH_PATIENT = "POST /api/v1/patients/match"
FHIR = "/fhir/Patient"
SEARCH = "/api/v1/patients/search"
#: The REST search scenarios: each a kind of registration-desk search, drawn from the
#: records the run created (the row's name in the report, the scenario's kind).
SEARCHES = (("GET /api/v1/patients/search (surname prefix)", "search-prefix"),
            ("GET /api/v1/patients/search (fuzzy surname)", "search-fuzzy"),
            ("GET /api/v1/patients/search (name + birth year)", "search-name-year"),
            ("GET /api/v1/patients/search (identifier)", "search-identifier"))
FHIR_READ = "GET /fhir/Patient/{id}"
FHIR_SEARCH = "GET /fhir/Patient?family=&birthdate= (PDQm)"
FHIR_MATCH = "POST /fhir/Patient/$match (PDQm)"
FHIR_JSON = "application/fhir+json"
ADT_FEED = "ADT^A01 over MLLP (ITI-8 feed)"
ADT_OID = "1.2.36.146.595.217.0.9"
ADT_APPLICATION, ADT_FACILITY = "BENCHADT", "BENCH"
DEFAULT_JSON = Path(".bench/api.json")
USER_ID = "bench-clerk"
MRN_SYSTEM = "urn:oid:1.2.36.146.595.217.0.1"
SSN_SYSTEM = "urn:oid:2.16.840.1.113883.4.1"
FAMILIES = ("Smith", "García", "Nguyen", "Müller", "O'Brien", "Kowalski", "Okafor", "Tanaka")
GIVEN = ("John", "Maria", "Wei", "Fatima", "Lars", "Aisha", "Pedro", "Yuki", "Anna")
START_TIMEOUT = 60.0
#: Share of the CPU time available that, used by none of ours, makes a measurement suspect.
OTHER_CPU_WARNING = 0.2
STOP_TIMEOUT = 15.0


def hello_app() -> Any:
    """The baseline: a bare Falcon app with one route answering ``{"hello": "world"}``."""
    import falcon

    class Hello:
        def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
            resp.media = {"hello": "world"}

    app = falcon.App()
    app.add_route(HELLO, Hello())
    return app


# --------------------------------------------------------------------------- statistics


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0-100) with linear interpolation; None when empty."""
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} is not within 0-100")
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass
class WorkerResult:
    """What one load process saw in the measured window (times from ``time.monotonic``)."""

    latencies: list[float]  # seconds, successful requests only
    errors: dict[str, int]  # "HTTP 503", "ConnectionResetError", ... -> count
    started: float
    finished: float
    connects: int = 0  # TCP connections opened in the window
    cpu_s: float = 0.0  # this load process's CPU time in the window
    created: list[str] = field(default_factory=list)  # patient ids, warm-up included


@dataclass(frozen=True)
class ScenarioResult:
    """One scenario's figures, all load processes together."""

    name: str
    requests: int
    errors: int
    error_kinds: dict[str, int]
    seconds: float
    rps: float
    p50_ms: float | None
    p99_ms: float | None
    mean_ms: float | None
    max_ms: float | None
    connects: int
    connections: int
    cpu_s: dict[str, float]  # CPU s in the window: loadgen, server, postgres, machine, other...

    def to_dict(self, baseline_rps: float | None = None) -> dict[str, Any]:
        share = ratio(self.rps, baseline_rps)
        return {**asdict(self), "ratio_vs_hello": None if share is None else round(share, 4)}


def baseline_rps(results: Sequence[ScenarioResult], baseline: str = BASELINE
                 ) -> float | None:
    """The req/s ratios divide by: ``baseline``'s, or the mean of it and its run after
    the service's scenarios (:data:`BASELINE_AFTER`) when there is one."""
    runs = _baseline_runs(results, baseline)
    return sum(runs) / len(runs) if runs else None


def baseline_drift(results: Sequence[ScenarioResult], baseline: str = BASELINE
                   ) -> float | None:
    """How far apart the bare route's two runs were, as a fraction of their mean (None
    with fewer than two)."""
    runs = _baseline_runs(results, baseline)
    return (max(runs) - min(runs)) / (sum(runs) / len(runs)) if len(runs) > 1 else None


def _baseline_runs(results: Sequence[ScenarioResult], baseline: str) -> list[float]:
    names = (baseline, BASELINE_AFTER) if baseline == BASELINE else (baseline,)
    return [r.rps for r in results if r.name in names and r.rps > 0]


def ratio(rps: float, baseline_rps: float | None) -> float | None:
    """``rps`` as a fraction of the baseline's; None when there is no usable baseline."""
    return rps / baseline_rps if baseline_rps else None


def aggregate(
    name: str, parts: Sequence[WorkerResult], cpu_s: Mapping[str, float] | None = None
) -> ScenarioResult:
    """Merge the load processes' results into one scenario's figures.

    req/s counts 2xx responses over the span from the first window start to the last
    response. ``cpu_s`` adds other processes' CPU seconds in the window to the load generator's;
    given the whole machine's (``machine``), what none of them used is ``other``.
    """
    latencies = [x for part in parts for x in part.latencies]
    errors: Counter[str] = Counter()
    for part in parts:
        errors.update(part.errors)
    requests = len(latencies) + sum(errors.values())
    seconds = max(p.finished for p in parts) - min(p.started for p in parts) if parts else 0.0

    def ms(value: float | None) -> float | None:
        return None if value is None else round(value * 1000, 3)

    cpu = {"loadgen": round(sum(p.cpu_s for p in parts), 3), **(cpu_s or {})}
    if "machine" in cpu:
        ours = sum(v for k, v in cpu.items() if k in ("loadgen", "server", "postgres"))
        cpu["other"] = round(cpu["machine"] - ours, 3)

    return ScenarioResult(
        name=name,
        requests=requests,
        errors=sum(errors.values()),
        error_kinds=dict(sorted(errors.items())),
        seconds=round(seconds, 3),
        rps=round(len(latencies) / seconds, 1) if seconds > 0 else 0.0,
        p50_ms=ms(percentile(latencies, 50)),
        p99_ms=ms(percentile(latencies, 99)),
        mean_ms=ms(sum(latencies) / len(latencies)) if latencies else None,
        max_ms=ms(max(latencies)) if latencies else None,
        connects=sum(p.connects for p in parts),
        connections=len(parts),
        cpu_s=cpu,
    )


def format_table(results: Sequence[ScenarioResult], baseline: str = BASELINE) -> str:
    """The results as a fixed-width text table; ratio is req/s over ``baseline``'s req/s
    (:func:`baseline_rps`)."""
    base = baseline_rps(results, baseline)
    header = ("scenario", "requests", "errors", "req/s", "p50 ms", "p99 ms", "ratio")
    rows = [header]
    for r in results:
        share = ratio(r.rps, base)
        rows.append((
            r.name,
            str(r.requests),
            str(r.errors),
            f"{r.rps:.1f}",
            _num(r.p50_ms),
            _num(r.p99_ms),
            "-" if share is None else f"{share:.3f}",
        ))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [
        "  ".join(
            cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i])
            for i, cell in enumerate(row)
        ).rstrip()
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def format_markdown(results: Sequence[ScenarioResult], context: Mapping[str, Any],
                    baseline: str = BASELINE) -> str:
    """The results as a Markdown table (for a closing note or a pull request), with the
    set-up it was measured on; ratio is req/s over ``baseline``'s req/s in the same run."""
    base = baseline_rps(results, baseline)
    pg, server, load = context["postgres"], context["server"], context["load"]
    lines = [
        f"`{' '.join(context.get('command', ['python', '-m', 'bench.api']))}` at "
        f"{context.get('git_commit') or 'an uncommitted tree'}: PostgreSQL fsync="
        f"{pg['fsync']}, synchronous_commit={pg['synchronous_commit']}; "
        f"{server['workers']} workers x {server['threads']} threads; "
        f"{load['connections']} connections, {load['duration_s']:g} s each; "
        f"{context['machine']['cpu_count']} CPUs",
        *_registry_lines(context),
        "",
        "| scenario | req/s | p50 ms | p99 ms | ratio to the bare route | errors |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        share = ratio(r.rps, base)
        lines.append(f"| `{r.name}` | {r.rps:.1f} | {_num(r.p50_ms)} | {_num(r.p99_ms)} | "
                     f"{'-' if share is None else f'{share:.3f}'} | {r.errors} |")
    return "\n".join(lines) + "\n"


def _registry_lines(context: Mapping[str, Any]) -> list[str]:
    lines = []
    for key in ("startup", "startup_pex"):
        startup = context.get(key)
        if startup and startup["starts"]:
            command = startup.get("command", "mpi serve")
            lines.append(f"startup: `{command}` ready ({startup['path']}) in "
                         f"{startup['median_s']} s median (min {startup['min_s']}, max "
                         f"{startup['max_s']}) over {startup['starts']} starts, at "
                         f"{startup['records']} records")
    memory = context.get("memory")
    if memory:
        lines.append(f"memory after the scenarios: {memory['process_count']} processes of "
                     f"`mpi serve`, PSS {memory['pss_mib']} MiB in all (RSS "
                     f"{memory['rss_mib']} MiB)")
    registry = context.get("registry")
    if not registry:
        return lines
    line = (f"registry: {registry['records']} people loaded by mpi import in "
            f"{registry['import_s']} s ({registry['import_records_per_s']} records/s)"
            if "import_s" in registry else
            f"registry: {registry['records']} people already in the database (kept from "
            "an earlier load)")
    if "index_build_s" in registry:
        line += (f"; the fresh instance's search index built in {registry['index_build_s']} "
                 f"s ({registry['index_documents_per_s']} documents/s), before measuring")
    return [line, *lines]


def format_summary(results: Sequence[ScenarioResult], context: Mapping[str, Any]) -> str:
    """What a person reads: the set-up, the table, errors, CPU split and server log notes."""
    pg, server, load = context["postgres"], context["server"], context["load"]
    cpus = context["machine"]["cpu_count"]
    lines = [
        f"PostgreSQL: {pg['description']} (fsync={pg['fsync']}, "
        f"synchronous_commit={pg['synchronous_commit']})",
        f"gunicorn: {server['workers']} workers x {server['threads']} threads "
        f"({server['worker_class']}); load: {load['connections']} connections, "
        f"{load['warmup_s']:g} s warm-up + {load['duration_s']:g} s each; {cpus} CPUs",
        *_registry_lines(context),
        "",
        format_table(results),
        "",
    ]
    for r in results:
        if r.errors:
            kinds = ", ".join(f"{k} x{v}" for k, v in r.error_kinds.items())
            lines.append(f"errors in {r.name}: {kinds}")
    busy = []
    for r in results:
        split = ", ".join(f"{k} {v:.1f}" for k, v in r.cpu_s.items())
        lines.append(f"CPU s of {cpus * r.seconds:.1f} available, {r.name}: {split}")
        if r.cpu_s.get("other", 0.0) > OTHER_CPU_WARNING * cpus * r.seconds:
            busy.append(r.name)
    if busy:
        lines.append("warning: something else kept the CPUs busy (CPU 'other') during: "
                     + "; ".join(busy) + "; rerun on a quiet machine")
    drift = baseline_drift(results)
    if drift is not None and drift > BASELINE_DRIFT_WARNING:
        lines.append(f"warning: the bare route's two runs differ by {drift:.0%} of their "
                     "mean: the machine's speed drifted, and the ratios are that uncertain")
    closing = [r.name for r in results if r.requests and r.connects >= r.requests * 0.9]
    if closing:
        lines.append("no keep-alive (a new connection per request) in: " + "; ".join(closing))
    lines += [f"server log {log['path']}: {log['lines']} line(s)"
              for log in context.get("server_logs", []) if log["lines"]]
    return "\n".join(lines)


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def report_json(
    results: Sequence[ScenarioResult], context: Mapping[str, Any], baseline: str = BASELINE
) -> str:
    """The JSON report: ``context`` (machine, servers, options) plus every scenario."""
    base = baseline_rps(results, baseline)
    drift = baseline_drift(results, baseline)
    document = {**context, "baseline": baseline, "baseline_rps": base,
                "baseline_drift": None if drift is None else round(drift, 4),
                "scenarios": [r.to_dict(base) for r in results]}
    return json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


# --------------------------------------------------------------------------- requests


#: Name parts the writers combine: 24 x 24 family names and 40 given names, so that the
#: records are as varied as a registry's (a bench whose records shared 8 family and 9 given
#: names measured its writers queueing on the same linking locks, not the service).
FAMILY_ROOTS = ("Ander", "Bakker", "Castel", "Dubois", "Eriks", "Ferrer", "Gallo", "Hansen",
                "Ivanov", "Jansen", "Kowal", "Larsen", "Moreau", "Novak", "Olsen", "Petrov",
                "Quint", "Rossi", "Silva", "Takah", "Ueda", "Varga", "Weber", "Young")
FAMILY_ENDS = ("", "son", "ski", "ez", "ová", "berg", "ton", "ley", "ini", "ard", "sen", "ic",
               "o", "ers", "man", "well", "ford", "ing", "ez-Ruiz", "ham", "by", "stad", "ov",
               "ová-Král")
GIVEN_NAMES = (*GIVEN, "Oliver", "Amelia", "Noah", "Isla", "Liam", "Chloe", "Mateo", "Sofia",
                       "Arjun", "Priya", "Kofi", "Ama", "Jonas", "Elin", "Tomasz", "Zofia",
                       "Hiro", "Mei", "Omar", "Layla", "Ivan", "Olga", "Diego", "Lucia",
                       "Samir", "Nadia", "Emeka", "Ngozi", "Pierre", "Camille", "Tariq")


def patient_body(tag: str, worker: int, n: int) -> dict[str, Any]:
    """A realistic new patient record, unique in source_id and MRN per (tag, worker, n), its
    name, birth date, SSN and phone number drawn from wide spaces (a different person each
    time)."""
    key = f"{tag}-{worker}-{n}"
    rng = random.Random(key)
    born = date(1940, 1, 1) + timedelta(days=rng.randrange(27000))
    family = rng.choice(FAMILY_ROOTS) + rng.choice(FAMILY_ENDS)
    # SSNs and phone numbers as varied as real ones. An SSN made from the run's tag and a
    # counter ("SSN-<tag>-0-53") shared its digits with every record of the run, and the
    # SSN-segment blocking keys then put them all in one block: 85 candidates per decision
    # instead of 3.5 at 270,000 records, and the bench measured that, not the service.
    ssn = f"{rng.randrange(1, 900):03d}-{rng.randrange(1, 100):02d}-{rng.randrange(1, 10000):04d}"
    return {
        "source": "bench-ehr",
        "source_id": f"B-{key}",
        "names": [{"use": "official", "family": family,
                   "given": [rng.choice(GIVEN_NAMES), rng.choice(GIVEN_NAMES)]}],
        "gender": ("male", "female", "other", "unknown")[n % 4],
        "birth_date": born.isoformat(),
        "identifiers": [
            {"system": MRN_SYSTEM, "value": f"MRN-{key}", "type": "MR", "use": "usual"},
            {"system": SSN_SYSTEM, "value": ssn, "type": "SS"},
        ],
        "addresses": [{"use": "home", "line": [f"{rng.randrange(1, 900)} High St", "Apt 2"],
                       "city": rng.choice(("Springfield", "Riverton", "Fairview", "Salem")),
                       "state": "IL", "postal_code": f"6{rng.randrange(1000, 9999)}",
                       "country": "US"}],
        "telecom": [
            {"system": "phone",
             "value": f"+1-{rng.randrange(201, 990)}-{rng.randrange(200, 1000)}-"
                      f"{rng.randrange(10000):04d}",
             "use": "home"},
            {"system": "email", "value": f"patient.{worker}.{n}@example.org"},
        ],
    }


def match_body(tag: str, rng: random.Random, known: int) -> dict[str, Any]:
    """A record to match: every other one a clerk's variant of a record the writers created
    (one of the first ``known`` of a writer: family name misspelt, no identifiers), the
    others someone new."""
    if rng.random() < 0.5 and known > 0:
        body = patient_body(tag, rng.randrange(2), rng.randrange(known))
        name = body["names"][0]
        name["family"] = name["family"][:-1] + "x"
    else:
        body = patient_body(f"{tag}-new", rng.randrange(1000), rng.randrange(10**6))
    body["identifiers"] = []
    body["source"], body["source_id"] = "bench-desk", "probe"
    return body


def fhir_patient(body: dict[str, Any]) -> dict[str, Any]:
    """The FHIR Patient for one of this benchmark's records (names, gender, birth date,
    address, telecom; the clerk's probes carry no identifier)."""
    return {
        "resourceType": "Patient",
        "name": [{k: v for k, v in n.items() if k in ("use", "family", "given")}
                 for n in body["names"]],
        "telecom": [{k: v for k, v in t.items() if k in ("system", "value", "use")}
                    for t in body["telecom"]],
        "gender": body["gender"], "birthDate": body["birth_date"],
        # (a registry run's probes, bench.identity's bodies, carry no country or use)
        "address": [{k: v for k, v in {
            "use": a.get("use"), "line": a.get("line"), "city": a.get("city"),
            "state": a.get("state"), "postalCode": a.get("postal_code"),
            "country": a.get("country")}.items() if v} for a in body.get("addresses", [])],
    }


def fhir_search_query(tag: str, rng: random.Random, known: int) -> str:
    """A registration clerk's PDQm search: the first three letters of a created record's
    family name and its birth year (the family-and-birthdate combination PDQm requires)."""
    body = patient_body(tag, rng.randrange(2), rng.randrange(max(known, 1)))
    family = body["names"][0]["family"][:3]
    return f"family={quote(family)}&birthdate={body['birth_date'][:4]}&_count=10"


def search_query(kind: str, tag: str, rng: random.Random, known: int) -> str:
    """A registration clerk's search of the REST route for a record the run created: the
    first three letters of its family name (``family:abc*``), its family name with one
    letter dropped (a typo the fuzzy search forgives), its given and family names with
    its birth year, or its SSN."""
    body = patient_body(tag, rng.randrange(2), rng.randrange(max(known, 1)))
    name = body["names"][0]
    family = name["family"]
    if kind == "search-prefix":
        params = {"q": f"family:{family[:3]}*"}
    elif kind == "search-fuzzy":
        i = rng.randrange(1, len(family) - 1) if len(family) >= 5 else len(family)
        params = {"q": f"family:{family[:i] + family[i + 1:]}"}
    elif kind == "search-name-year":
        params = {"name": f"{name['given'][0]} {family}", "birth_year": body["birth_date"][:4]}
    elif kind == "search-identifier":
        params = {"identifier": body["identifiers"][1]["value"]}
    else:
        raise ValueError(f"unknown search kind {kind!r}")
    return urlencode({**params, "limit": 20})


@dataclass(frozen=True)
class LoadSpec:
    """What every load process does; picklable (it crosses into spawned processes)."""

    kind: str  # "hello", "create", "read", "match", "fhir-read", "fhir-search", "fhir-match",
    # "adt" (HL7 v2 ADT^A01 messages to the MLLP listener on ``port``)
    port: int
    duration: float
    warmup: float
    tag: str = "bench"  # makes created source ids and identifiers unique per run
    ids: tuple[str, ...] = ()  # "read": the patient ids to pick from
    known: int = 0  # "match": how many records each of writers 0 and 1 created at least
    bodies: tuple[str, ...] = ()  # "match": JSON bodies to pick from (else match_body)
    seed: int = 0
    timeout: float = 30.0


def build_request(
    spec: LoadSpec, worker: int, n: int, rng: random.Random
) -> tuple[str, str, bytes | None, dict[str, str]]:
    """Method, path, body and headers of load process ``worker``'s ``n``-th request."""
    if spec.kind == "hello":
        return "GET", HELLO, None, {}
    headers = {"X-User-ID": USER_ID}
    if spec.kind == "create":
        body = json.dumps(patient_body(spec.tag, worker, n)).encode()
        return "POST", PATIENTS, body, {**headers, "Content-Type": "application/json"}
    if spec.kind == "read":
        if not spec.ids:
            raise ValueError("the read scenario needs patient ids")
        return "GET", f"{PATIENTS}/{rng.choice(spec.ids)}", None, headers
    if spec.kind == "match":
        body = (rng.choice(spec.bodies).encode() if spec.bodies
                else json.dumps(match_body(spec.tag, rng, spec.known)).encode())
        return "POST", MATCH, body, {**headers, "Content-Type": "application/json"}
    if spec.kind.startswith("search-"):
        return "GET", f"{SEARCH}?{search_query(spec.kind, spec.tag, rng, spec.known)}", None, \
            headers
    fhir_headers = {**headers, "Accept": FHIR_JSON}
    if spec.kind == "fhir-read":
        if not spec.ids:
            raise ValueError("the read scenario needs patient ids")
        return "GET", f"{FHIR}/{rng.choice(spec.ids)}", None, fhir_headers
    if spec.kind == "fhir-search":
        return "GET", f"{FHIR}?{fhir_search_query(spec.tag, rng, spec.known)}", None, \
            fhir_headers
    if spec.kind == "fhir-match":
        record = (json.loads(rng.choice(spec.bodies)) if spec.bodies
                  else match_body(spec.tag, rng, spec.known))
        body = json.dumps({"resourceType": "Parameters", "parameter": [
            {"name": "resource", "resource": fhir_patient(record)}]}).encode()
        return "POST", f"{FHIR}/$match", body, {**fhir_headers, "Content-Type": FHIR_JSON}
    raise ValueError(f"unknown scenario kind {spec.kind!r}")


class _CountingConnection(http.client.HTTPConnection):
    """An HTTPConnection that counts how often it (re)connects."""

    connects = 0

    def connect(self) -> None:
        self.connects += 1
        super().connect()


def adt_message(tag: str, worker: int, n: int) -> bytes:
    """An ADT^A01 for the same new patient ``patient_body`` makes, as an MLLP frame."""
    body = patient_body(tag, worker, n)
    name, address = body["names"][0], body["addresses"][0]
    sex = {"male": "M", "female": "F", "other": "O", "unknown": "U"}[body["gender"]]
    key = f"{tag}-{worker}-{n}"
    lines = [
        f"MSH|^~\\&|{ADT_APPLICATION}|{ADT_FACILITY}|MPI|HOSP|20261204101500||ADT^A01^ADT_A01|"
        f"A{key}|P|2.5|||AL|NE||UNICODE UTF-8",
        "EVN|A01|20261204101500",
        f"PID|1||H-{key}^^^BENCH&{ADT_OID}&ISO^MR||{name['family']}^{name['given'][0]}^"
        f"{name['given'][1]}^^^^L||{body['birth_date'].replace('-', '')}|{sex}|||"
        f"{address['line'][0]}^{address['line'][1]}^{address['city']}^{address['state']}^"
        f"{address['postal_code']}^USA^H||{body['telecom'][0]['value']}^PRN^PH|||||"
        f"{body['identifiers'][1]['value']}",
        "PV1|1|O"]
    return b"\x0b" + "\r".join(lines).encode() + b"\x1c\r"


def run_mllp_worker(spec: LoadSpec, worker: int) -> WorkerResult:
    """One MLLP connection's closed loop: send an ADT^A01, wait for its ACK, again; a
    message counts when its ACK says AA."""
    import socket

    latencies: list[float] = []
    errors: Counter[str] = Counter()
    window_start = time.monotonic() + spec.warmup
    window_end = window_start + spec.duration
    cpu_before: float | None = None
    conn = socket.create_connection((HOST, spec.port), timeout=spec.timeout)
    connects = 1
    n = 0
    try:
        while (now := time.monotonic()) < window_end:
            measured = now >= window_start
            if measured and cpu_before is None:
                cpu_before, connects = time.process_time(), 0
            frame = adt_message(spec.tag, worker, n)
            n += 1
            started = time.perf_counter()
            try:
                conn.sendall(frame)
                answer = b""
                while not answer.endswith(b"\x1c\r"):
                    chunk = conn.recv(65536)
                    if not chunk:
                        raise ConnectionError("closed")
                    answer += chunk
            except OSError as exc:
                conn.close()
                if measured:
                    errors[type(exc).__name__] += 1
                time.sleep(0.01)
                conn = socket.create_connection((HOST, spec.port), timeout=spec.timeout)
                connects += 1
                continue
            elapsed = time.perf_counter() - started
            if b"MSA|AA|" in answer:
                if measured:
                    latencies.append(elapsed)
            elif measured:
                errors["MSA " + answer.split(b"MSA|", 1)[-1][:2].decode(errors="replace")] += 1
    finally:
        conn.close()
    return WorkerResult(
        latencies=latencies, errors=dict(errors), started=window_start,
        finished=time.monotonic(), connects=connects,
        cpu_s=time.process_time() - (cpu_before or time.process_time()), created=[])


def run_worker(spec: LoadSpec, worker: int) -> WorkerResult:
    """One connection's closed loop: warm-up, then requests started within the window count."""
    if spec.kind == "adt":
        return run_mllp_worker(spec, worker)
    rng = random.Random(spec.seed * 1_000_003 + worker)
    conn = _CountingConnection(HOST, spec.port, timeout=spec.timeout)
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    created: list[str] = []
    window_start = time.monotonic() + spec.warmup
    window_end = window_start + spec.duration
    n = 0
    connects_before: int | None = None
    cpu_before = 0.0
    try:
        while (now := time.monotonic()) < window_end:
            measured = now >= window_start
            if measured and connects_before is None:
                connects_before, cpu_before = conn.connects, time.process_time()
            method, path, body, headers = build_request(spec, worker, n, rng)
            n += 1
            started = time.perf_counter()
            try:
                conn.request(method, path, body=body, headers=headers)
                response = conn.getresponse()
                response.read()
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                if measured:
                    errors[type(exc).__name__] += 1
                time.sleep(0.01)  # do not spin on a refusing server
                continue
            elapsed = time.perf_counter() - started
            if 200 <= response.status < 300:
                if measured:
                    latencies.append(elapsed)
                location = response.getheader("Location")
                if spec.kind == "create" and location:
                    created.append(location.rstrip("/").rsplit("/", 1)[-1])
            elif measured:
                errors[f"HTTP {response.status}"] += 1
    finally:
        conn.close()
    finished = time.monotonic()
    if connects_before is None:  # the window never opened
        connects_before, cpu_before = conn.connects, time.process_time()
    return WorkerResult(
        latencies=latencies, errors=dict(errors), started=window_start, finished=finished,
        connects=conn.connects - connects_before, cpu_s=time.process_time() - cpu_before,
        created=created)


def _worker_main(spec: LoadSpec, worker: int, barrier: Any, results: Any) -> None:
    """Entry point of a spawned load process: wait for the others, run, send the result."""
    try:
        barrier.wait(timeout=START_TIMEOUT)
        results.put((worker, run_worker(spec, worker)))
    except KeyboardInterrupt:
        pass
    except BaseException as exc:
        results.put((worker, f"{type(exc).__name__}: {exc}"))


def generate_load(
    spec: LoadSpec, connections: int, probes: Mapping[str, Callable[[], float]] | None = None
) -> tuple[list[WorkerResult], dict[str, float]]:
    """Run ``connections`` load processes (one connection each) together.

    Returns their results and, for each of ``probes`` (CPU-seconds counters of other
    processes), how much it grew during the measured window.
    """
    probes = probes or {}
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(connections + 1)
    queue = ctx.Queue()
    procs = [ctx.Process(target=_worker_main, args=(spec, i, barrier, queue), daemon=True,
                         name=f"bench-load-{i}") for i in range(connections)]
    results: dict[int, WorkerResult] = {}
    try:
        for proc in procs:
            proc.start()
        barrier.wait(timeout=START_TIMEOUT)
        deadline = time.monotonic() + spec.warmup + spec.duration + spec.timeout + 30
        time.sleep(spec.warmup)
        before = {key: probe() for key, probe in probes.items()}
        while len(results) < connections:
            try:
                worker, result = queue.get(timeout=max(0.1, deadline - time.monotonic()))
            except Empty:
                raise RuntimeError("load processes did not report in time") from None
            if isinstance(result, str):
                raise RuntimeError(f"load process {worker} failed: {result}")
            results[worker] = result
        cpu = {key: round(probe() - before[key], 3) for key, probe in probes.items()}
        return [results[i] for i in range(connections)], cpu
    finally:
        done = len(results) == connections
        for proc in (p for p in procs if p.pid is not None):  # started ones
            if done:
                proc.join(timeout=5)
            if proc.is_alive():
                proc.terminate()
            proc.join(timeout=5)
        queue.close()


# --------------------------------------------------------------------------- commands


def mpi_command(*args: str) -> list[str]:
    """``python -m mpi ARGS`` with this interpreter."""
    return [sys.executable, "-m", "mpi", *args]


def gunicorn_command(options: Mapping[str, Any], app: str = HELLO_APP) -> list[str]:
    """``python -m gunicorn`` with ``options`` (``mpi.server.gunicorn_options`` keys) as flags.

    Like ``MPIServer.load_config``, unknown keys and None values are skipped; so are
    settings that have no command-line flag (``logconfig_dict``).
    """
    from gunicorn.config import make_settings

    known = make_settings()
    cmd = [sys.executable, "-m", "gunicorn"]
    for key, value in options.items():
        setting = known.get(key)
        if value is None or setting is None or not setting.cli:
            continue
        flag = next((f for f in setting.cli if f.startswith("--")), setting.cli[0])
        if setting.action in ("store_true", "store_false"):
            if bool(value) == (setting.action == "store_true"):
                cmd.append(flag)
        elif isinstance(value, list | tuple):
            for item in value:
                cmd += [flag, str(item)]
        else:
            cmd += [flag, str(value)]
    return [*cmd, app]


def server_env(base: Mapping[str, str], database_url: str, port: int) -> dict[str, str]:
    """``base`` without any service setting (so defaults apply), plus the benchmark's own."""
    from mpi.config import ENV_NAMES

    dropped = {*ENV_NAMES, *(f"{name}_FILE" for name in ENV_NAMES)}
    env = {k: v for k, v in base.items() if k not in dropped}
    env.update(DATABASE_URL=database_url, SERVER_HOST=HOST, SERVER_PORT=str(port),
               LOG_LEVEL="WARNING")
    return env


# --------------------------------------------------------------------------- processes


@contextlib.contextmanager
def running_server(
    cmd: Sequence[str], *, env: Mapping[str, str], cwd: Path, log: Path, port: int,
    ready_path: str, interval: float = 0.1,
) -> Iterator[subprocess.Popen[bytes]]:
    """Run a server in its own session until ``ready_path`` answers 200 (asked every
    ``interval`` seconds); stop it after."""
    with log.open("wb") as out:
        proc = subprocess.Popen(list(cmd), env=dict(env), cwd=cwd, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            _wait_ready(proc, port, ready_path, log, interval)
            yield proc
        finally:
            _stop(proc)


def _wait_ready(proc: subprocess.Popen[bytes], port: int, path: str, log: Path,
                interval: float = 0.1) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{_tail(log)}")
        conn = http.client.HTTPConnection(HOST, port, timeout=2)
        try:
            conn.request("GET", path)
            if conn.getresponse().status == 200:
                return
        except (OSError, http.client.HTTPException):
            pass
        finally:
            conn.close()
        time.sleep(interval)
    raise RuntimeError(f"server not ready on {path} after {START_TIMEOUT:g} s:\n{_tail(log)}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the server's process group (graceful), SIGKILL the group if it lingers."""
    for sig, wait in ((signal.SIGTERM, STOP_TIMEOUT), (signal.SIGKILL, 5.0)):
        if proc.poll() is not None:
            break
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=wait)


def _proc_stats() -> Iterator[tuple[int, int, int, float]]:
    """(pid, parent pid, process group, CPU seconds incl. reaped children) from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            # utime + stime, and cutime + cstime of children that already exited
            cpu = sum(int(x) for x in fields[11:15]) / tick
            yield int(stat.parent.name), int(fields[1]), int(fields[2]), cpu


def _child_count(pid: int) -> int:
    """How many processes have ``pid`` as parent (gunicorn's workers)."""
    return sum(1 for _, ppid, _, _ in _proc_stats() if ppid == pid)


def _group_cpu(pgid: int) -> float:
    """CPU seconds used so far by the live processes of process group ``pgid``."""
    return sum(cpu for _, _, group, cpu in _proc_stats() if group == pgid)


def _tree_cpu(pid: int) -> float:
    """CPU seconds used so far by ``pid`` and its live children (a postmaster and backends)."""
    return sum(cpu for p, ppid, _, cpu in _proc_stats() if pid in (p, ppid))


def process_memory(pgid: int) -> dict[str, Any]:
    """Memory of the live processes of process group ``pgid`` (a server: its master,
    workers and helper processes), from /proc: RSS counts a page shared by several
    processes in each; PSS splits it among them, so the PSS total is what the group costs
    the machine. MiB; ``processes`` lists each by its title, largest PSS first."""
    rows: list[dict[str, Any]] = []
    for pid, _ppid, group, _cpu in _proc_stats():
        if group != pgid:
            continue
        with contextlib.suppress(OSError):
            fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/smaps_rollup")
                          .read_text().splitlines()[1:] if ":" in line)
            title = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
            rows.append({"pid": pid, "title": title.decode(errors="replace").strip()[:80],
                         "rss_mib": round(int(fields["Rss"].split()[0]) / 1024, 1),
                         "pss_mib": round(int(fields["Pss"].split()[0]) / 1024, 1)})
    rows.sort(key=lambda r: -r["pss_mib"])
    return {"process_count": len(rows),
            "pss_mib": round(sum(r["pss_mib"] for r in rows), 1),
            "rss_mib": round(sum(r["rss_mib"] for r in rows), 1),
            "processes": rows}


def measure_startups(cmd: Sequence[str], env: Mapping[str, str], *, cwd: Path, log: Path,
                     times: int, ready_path: str, ports: Callable[[], dict[str, str]],
                     first_unmeasured: bool = False) -> dict[str, Any]:
    """Start ``cmd`` ``times`` times, one at a time: seconds from the command to
    ``ready_path`` answering 200 (polled every 10 ms), then stopped. ``ports`` gives each
    start its own port settings; ``log`` keeps the last start's output. With
    ``first_unmeasured``, one more start comes first and is not counted (a PEX's first
    run on a host unpacks it: once per PEX and host, not what a restart costs)."""
    seconds = []
    for n in range(times + int(first_unmeasured)):
        settings = ports()
        started = time.perf_counter()
        with running_server(cmd, env={**env, **settings}, cwd=cwd, log=log,
                            port=int(settings["SERVER_PORT"]), ready_path=ready_path,
                            interval=0.01):
            if n or not first_unmeasured:
                seconds.append(time.perf_counter() - started)
    ordered = sorted(seconds)
    return {"starts": len(seconds), "path": ready_path,
            "median_s": round(percentile(ordered, 50) or 0.0, 3),
            "min_s": round(ordered[0], 3) if ordered else None,
            "max_s": round(ordered[-1], 3) if ordered else None,
            "seconds": [round(x, 3) for x in seconds]}


def machine_cpu(kind: str = "busy") -> float:
    """CPU seconds so far, from /proc/stat: all busy time, or ``steal`` (the hypervisor's)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    ticks = steal if kind == "steal" else user + nice + system + irq + softirq
    return ticks / os.sysconf("SC_CLK_TCK")


def _postmaster_pid(pg: Any) -> int | None:
    """The server's postmaster pid when it runs on this machine, so that its CPU is counted
    as PostgreSQL's and not as "other": a local server's from its data directory, an
    external one's from the backend serving a connection of ours (None for a container
    and for a server elsewhere)."""
    if pg.tempdir is not None:
        with contextlib.suppress(OSError, ValueError, IndexError):
            return int((pg.tempdir / "data" / "postmaster.pid").read_text().split()[0])
        return None
    return _external_postmaster(pg.url) if pg.kind == "external" else None


def _external_postmaster(url: str) -> int | None:
    """The parent of the backend process serving one connection to ``url``, if that
    backend is a process of this machine: its command line names the connection's own
    client port (a server in a container or elsewhere has no such process here)."""
    import socket

    import psycopg

    with contextlib.suppress(psycopg.Error, OSError, ValueError, IndexError), \
            psycopg.connect(url, connect_timeout=5) as conn:
        backend = conn.info.backend_pid
        with socket.socket(fileno=os.dup(conn.pgconn.socket)) as sock:
            name = sock.getsockname()
        port = name[1] if isinstance(name, tuple) else None
        proc = Path(f"/proc/{backend}")
        command = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        if port is None or f"({port})" not in command:  # a Unix socket: no port to check
            return None
        return int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
    return None


def _tail(log: Path) -> str:
    return log_tail(log, 30, empty="")


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """Turn SIGTERM into KeyboardInterrupt while the benchmark runs, so cleanup runs."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# --------------------------------------------------------------------------- the run


def machine_info() -> dict[str, Any]:
    """CPU, OS and interpreter of this machine, and the versions that matter."""
    from importlib.metadata import PackageNotFoundError, version

    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    versions: dict[str, str] = {}
    for dist in ("mpi", "falcon", "gunicorn", "peewee", "psycopg"):
        with contextlib.suppress(PackageNotFoundError):
            versions[dist] = version(dist)
    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": model,
        "cpus_usable": len(os.sched_getaffinity(0)),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "platform": platform.platform(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "versions": versions,
    }


def _git_commit() -> str | None:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True,
                               text=True, timeout=5, check=True).stdout.strip()
        return head + ("+dirty" if dirty else "")
    return None


def _postgres_info(url: str) -> dict[str, str]:
    """The server's version and the settings that decide write latency."""
    import psycopg

    info: dict[str, str] = {}
    with psycopg.connect(url) as conn:
        for key, sql in (("version", "SELECT version()"), ("fsync", "SHOW fsync"),
                         ("synchronous_commit", "SHOW synchronous_commit"),
                         ("full_page_writes", "SHOW full_page_writes"),
                         ("max_connections", "SHOW max_connections"),
                         ("shared_buffers", "SHOW shared_buffers")):
            row = conn.execute(sql).fetchone()
            info[key] = str(row[0]) if row else ""
    return info


def _measure(
    name: str, spec: LoadSpec, connections: int, probes: Mapping[str, Callable[[], float]]
) -> tuple[ScenarioResult, list[str], int]:
    """One scenario's figures, the patient ids its load created, and the fewest records any
    one load process created (they are that process's first ones: ``n`` counts up)."""
    print(f"  {name}: {spec.warmup:g} s warm-up + {spec.duration:g} s x {connections} "
          "connections", file=sys.stderr, flush=True)
    parts, cpu = generate_load(spec, connections, probes)
    return (aggregate(name, parts, cpu), [i for part in parts for i in part.created],
            min((len(part.created) for part in parts), default=0))


def run(args: argparse.Namespace) -> tuple[list[ScenarioResult], dict[str, Any]]:
    """Start everything, measure every scenario, stop everything; results and context."""
    from mpi.config import load
    from mpi.server import gunicorn_options
    from toolkit.postgres import start_postgres

    log_dir = args.json.parent
    _make_output_dir(log_dir)
    context: dict[str, Any] = {
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "git_commit": _git_commit(),
        "machine": machine_info(),
        "load": {"connections": args.connections, "duration_s": args.duration,
                 "warmup_s": args.warmup, "seed": args.seed,
                 "generator": "http.client, one spawned process per connection, closed loop"},
    }
    results: list[ScenarioResult] = []
    template = LoadSpec(kind="hello", port=0, duration=args.duration, warmup=args.warmup,
                        tag=uuid.uuid4().hex[:8], seed=args.seed)
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="mpi-bench-")))
        print("starting PostgreSQL ...", file=sys.stderr, flush=True)
        pg = start_postgres(durable=not args.fast_postgres)
        stack.callback(_stop_postgres, pg)
        context["postgres"] = {"kind": pg.kind, "description": pg.description,
                               **_postgres_info(pg.url)}
        postmaster = _postmaster_pid(pg)
        pg_probe: dict[str, Callable[[], float]] = (
            {} if postmaster is None else {"postgres": partial(_tree_cpu, postmaster)})
        machine: dict[str, Callable[[], float]] = {
            "machine": machine_cpu, "steal": partial(machine_cpu, "steal")}

        settings = load(server_env(os.environ, pg.url, free_port()))
        server: dict[str, Any] = {
            "workers": settings.workers, "threads": settings.threads,
            "worker_class": gunicorn_options(settings)["worker_class"].rsplit(".", 1)[-1],
            "database_max_connections": settings.database_max_connections,
            "mpi_command": mpi_command("serve")[1:],
        }
        context["server"] = server

        def measure_bare(name: str, log: str) -> list[str]:
            """The bare route on gunicorn with the service's options, on a port of its own;
            the command it ran."""
            port = free_port()
            env = server_env(os.environ, pg.url, port)
            cmd = gunicorn_command({**gunicorn_options(load(env)), "proc_name": "bench-hello"})
            print(f"hello: {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
            with running_server(cmd, env=env, cwd=ROOT, log=log_dir / log, port=port,
                                ready_path=HELLO) as proc:
                probes: dict[str, Callable[[], float]] = {
                    "server": partial(_group_cpu, proc.pid), **machine}
                spec = replace(template, port=port)
                results.append(_measure(name, spec, args.connections, probes)[0])
                server["hello_workers_seen"] = _child_count(proc.pid)
            return cmd

        server["hello_command"] = measure_bare(BASELINE, "hello-server.log")[1:]

        port, mllp_port = free_port(), free_port()
        env = {**server_env(os.environ, pg.url, port), "HL7_MLLP_PORT": str(mllp_port)}
        commands.run(mpi_command("migrate"), env=env, cwd=workdir, timeout=120)
        # The ADT feed's sender and the domain its PID-3 numbers are in (a kept database
        # has them from its earlier run).
        if not _one(pg.url, "SELECT count(*) FROM identity_domain WHERE system = %s",
                    (f"urn:oid:{ADT_OID}",)):
            commands.run(mpi_command("domain", "add", f"urn:oid:{ADT_OID}", "--name",
                                     "Bench ADT", "--sources", "bench-adt", "--namespace",
                                     "BENCH"), env=env, cwd=workdir, timeout=120)
        if not _one(pg.url, "SELECT count(*) FROM hl7_sender WHERE name = %s", ("bench-adt",)):
            commands.run(mpi_command("hl7", "sender", "add", "bench-adt", "--application",
                                     ADT_APPLICATION, "--facility", ADT_FACILITY, "--sources",
                                     "bench-adt"), env=env, cwd=workdir, timeout=120)
        registry_ids: list[str] = []
        bodies: tuple[str, ...] = ()
        if args.registry:
            present = _one(pg.url, "SELECT count(*) FROM patient WHERE deleted_at IS NULL")
            context["registry"], registry_ids, bodies = (
                kept_registry(args.registry, present, pg.url) if present >= args.registry
                else load_registry(args.registry, env, workdir, pg.url))
        print("mpi serve", file=sys.stderr, flush=True)
        with running_server(mpi_command("serve"), env=env, cwd=workdir,
                            log=log_dir / "mpi-server.log", port=port, ready_path=READY) as proc:
            probes: dict[str, Callable[[], float]] = {
                "server": partial(_group_cpu, proc.pid), **pg_probe, **machine}
            if args.registry:  # the fresh instance indexes the registry first: not measured
                context["registry"].update(wait_for_search(port, args.registry))
            wanted = set(args.only or SCENARIOS)
            ids: list[str] = []
            known = 0
            if wanted & {"create", *NEED_RECORDS}:  # (NEED_RECORDS: adt too, so that it
                # runs on a registry of the same size and statistics as in a full run)
                spec = replace(template, kind="create", port=port)
                post, ids, known = _measure(POST_PATIENT, spec, args.connections, probes)
                results.append(post)
                # The writers grew the tables from nothing; autovacuum analyzes them within
                # a minute or so. Analyze now, so that every later scenario (REST and FHIR
                # alike) is planned on the same, current statistics, not some on stale ones.
                _analyze(pg.url)
            if "create" in wanted:
                # The REST create again, on analyzed tables: the peer of the ADT feed.
                spec = replace(template, kind="create", port=port, tag=template.tag + "b")
                post2, more_ids, _ = _measure(POST_ANALYZED, spec, args.connections, probes)
                results.append(post2)
                ids += more_ids
                _analyze(pg.url)
            if "adt" in wanted:
                # The feed over HL7 v2 (ADT^A01 over MLLP, ITI-8: the same new people,
                # linked by the same engine) next to the REST create on analyzed tables.
                spec = replace(template, kind="adt", port=mllp_port)
                results.append(_measure(ADT_FEED, spec, args.connections, probes)[0])
            # (name, scenario --only names, load kind, the kind's extra spec fields)
            later: list[tuple[str, str, str, dict[str, Any]]] = [
                (GET_PATIENT, "read", "read", {"ids": tuple(ids + registry_ids)}),
                (MATCH_PATIENT, "match", "match", {"known": known, "bodies": bodies}),
                *((name, "search", kind, {"known": known}) for name, kind in SEARCHES),
                # The same work through FHIR, next to the REST figures of the same run.
                (FHIR_READ, "fhir-read", "fhir-read", {"ids": tuple(ids + registry_ids)}),
                (FHIR_SEARCH, "fhir-search", "fhir-search", {"known": known}),
                (FHIR_MATCH, "fhir-match", "fhir-match", {"known": known, "bodies": bodies})]
            if "search" in wanted:
                # Every record created so far searchable first (the indexer catches up
                # on the writers' records within seconds): not measured.
                wait_for_search(port, len(ids), timeout=600)
            for name, scenario, kind, extra in later:
                if scenario in wanted:
                    spec = replace(template, kind=kind, port=port, **extra)
                    results.append(_measure(name, spec, args.connections, probes)[0])
            server["mpi_workers_seen"] = _child_count(proc.pid)
            context["memory"] = process_memory(proc.pid)
        context["patients_created"] = len(ids)
        # The bare route again, on the same machine a few minutes later: ratios divide by
        # the mean of its two runs, and the summary says how far apart they were.
        measure_bare(BASELINE_AFTER, "hello-server-after.log")
        if args.startups:
            print(f"mpi serve: {args.startups} start(s) to ready", file=sys.stderr, flush=True)

            def fresh_ports() -> dict[str, str]:
                return {"SERVER_PORT": str(free_port()), "HL7_MLLP_PORT": str(free_port())}

            # The records the database holds (a kept registry may hold more than asked).
            records = context.get("registry", {}).get("records", 0) + len(ids)

            context["startup"] = {
                **measure_startups(mpi_command("serve"), env, cwd=workdir,
                                   log=log_dir / "mpi-startups.log", times=args.startups,
                                   ready_path=READY, ports=fresh_ports),
                "command": "python -m mpi serve", "records": records}
            if args.pex is not None:
                # What ships: the single-file PEX, whose own start (its boot script finding
                # the virtual environment it unpacked at its first run) comes on top.
                print(f"{args.pex} serve: {args.startups} start(s) to ready",
                      file=sys.stderr, flush=True)
                context["startup_pex"] = {
                    **measure_startups([str(args.pex), "serve"], env, cwd=workdir,
                                       log=log_dir / "pex-startups.log", times=args.startups,
                                       ready_path=READY, ports=fresh_ports, first_unmeasured=True),
                    "command": f"{args.pex} serve", "records": records}
    context["server_logs"] = [_log_summary(log_dir / name)
                              for name in ("hello-server.log", "mpi-server.log",
                                           "hello-server-after.log")]
    return results, context


def _analyze(url: str) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("ANALYZE")


def wait_for_search(port: int, records: int, timeout: float = 6 * 3600) -> dict[str, Any]:
    """Wait until readiness says search is complete (a fresh instance builds its index
    from the registry); how long that took, as the index build's figures."""
    started = time.perf_counter()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        conn = http.client.HTTPConnection(HOST, port, timeout=10)
        try:
            conn.request("GET", READY)
            checks = json.loads(conn.getresponse().read()).get("checks") or {}
        except (OSError, ValueError, http.client.HTTPException):
            checks = {}
        finally:
            conn.close()
        if checks.get("search") == "ok":
            seconds = time.perf_counter() - started
            return {"index_build_s": round(seconds, 1),
                    "index_documents_per_s": round(records / seconds) if seconds else None}
        time.sleep(0.5)
    raise RuntimeError("the search index was not built in time")


def load_registry(records: int, env: Mapping[str, str], workdir: Path, url: str
                  ) -> tuple[dict[str, Any], list[str], tuple[str, ...]]:
    """Load a synthetic registry of ``records`` people with ``mpi import`` (timed), so
    that reads and matches are measured at that size: the import's figures, up to 5,000
    of its patient ids for the reads, and 2,000 match probes (half misspelt variants of
    registered people, half new people)."""
    import psycopg

    from bench.identity import probes, synthetic_registry, write_csv

    first, _ = synthetic_registry(records, realistic_names=True)
    path = workdir / "registry.csv"
    write_csv(path, first)
    print(f"mpi import: {records} records ...", file=sys.stderr, flush=True)
    started = time.perf_counter()
    done = commands.run(mpi_command("import", str(path), "--no-progress", "--batch", "1000"),
                        env=env, cwd=workdir, timeout=6 * 3600)
    seconds = time.perf_counter() - started
    with psycopg.connect(url) as conn:
        ids = [str(i) for (i,) in conn.execute(
            "SELECT id FROM patient ORDER BY random() LIMIT 5000").fetchall()]
    report = {"records": records, "import_s": round(seconds, 1),
              "import_records_per_s": round(records / seconds) if seconds else None,
              "tool_says": done.stdout.strip().splitlines()[-1] if done.stdout else ""}
    return report, ids, tuple(json.dumps(b) for b in probes(first, 2000))


def kept_registry(records: int, present: int, url: str
                  ) -> tuple[dict[str, Any], list[str], tuple[str, ...]]:
    """A registry an earlier run loaded (``present`` live records, the first ``records``
    of them synthetic people of ``synthetic_registry``): as :func:`load_registry` gives,
    without loading anything."""
    import psycopg

    from bench.identity import probes, synthetic_registry

    first, _ = synthetic_registry(records, realistic_names=True)
    with psycopg.connect(url) as conn:
        ids = [str(i) for (i,) in conn.execute(
            "SELECT id FROM patient TABLESAMPLE SYSTEM (1) WHERE deleted_at IS NULL "
            "LIMIT 5000").fetchall()]
    return {"records": present}, ids, tuple(json.dumps(b) for b in probes(first, 2000))


def _one(url: str, sql: str, params: Sequence[Any] = ()) -> int:
    import psycopg

    with psycopg.connect(url) as conn:
        row = conn.execute(sql, params).fetchone()
    return int(row[0]) if row else 0


def _stop_postgres(pg: Any) -> None:
    try:
        pg.stop()
    except Exception as exc:  # report, but let the original error (if any) through
        print(f"warning: stopping PostgreSQL failed: {exc}", file=sys.stderr)


def _make_output_dir(path: Path) -> None:
    """Create the report directory; a new one gets a ``.gitignore`` of ``*`` (like pytest)."""
    if not path.exists():
        path.mkdir(parents=True)
        (path / ".gitignore").write_text("# created by bench.api\n*\n")


def _log_summary(log: Path) -> dict[str, Any]:
    lines = log.read_text(errors="replace").splitlines() if log.exists() else []
    return {"path": str(log), "lines": len(lines), "tail": lines[-10:]}


#: The scenarios ``--only`` can name; those in NEED_RECORDS read what a create wrote (or,
#: for the ADT feed, write next to it), so the first create runs before them.
SCENARIOS = ("create", "adt", "read", "match", "search", "fhir-read", "fhir-search",
             "fhir-match")
NEED_RECORDS = frozenset({"adt", "read", "match", "search", "fhir-read", "fhir-search",
                          "fhir-match"})


def _scenarios(text: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown scenario(s) {', '.join(unknown) or '(none)'}; choose from "
            f"{', '.join(SCENARIOS)}")
    return names


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.api",
                                     description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--duration", type=_positive, default=10.0,
                        help="measured seconds per scenario (default 10)")
    parser.add_argument("--warmup", type=_non_negative, default=2.0,
                        help="warm-up seconds before each measurement (default 2)")
    parser.add_argument("--connections", type=_connections, default=8, metavar="N",
                        help="concurrent connections, one process each, 1-64 (default 8)")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON,
                        help=f"where to write the JSON report (default {DEFAULT_JSON})")
    parser.add_argument("--seed", type=int, default=0, help="seed for the read scenario's picks")
    parser.add_argument("--only", type=_scenarios, default=None, metavar="NAMES",
                        help="measure only these scenarios, next to the bare route "
                             f"(comma-separated: {', '.join(SCENARIOS)}; default all)")
    parser.add_argument("--registry", type=_non_negative_int, default=0, metavar="N",
                        help="first load N synthetic people with mpi import (timed); reads "
                             "and matches then run against that registry (default 0)")
    parser.add_argument("--startups", type=_non_negative_int, default=5, metavar="N",
                        help="after the scenarios, start mpi serve N times and time each "
                             "start to ready (default 5; 0 skips)")
    parser.add_argument("--pex", type=_pex, default=None, metavar="PATH",
                        help="also time --startups starts of this PEX (`nox -s build` writes "
                             "dist/mpi.pex), after one start that is not counted")
    parser.add_argument("--fast-postgres", action="store_true",
                        help="a local PostgreSQL with fsync and synchronous_commit off")
    return parser.parse_args(argv)


def _pex(raw: str) -> Path:
    path = Path(raw).resolve()
    if not (path.is_file() and os.access(path, os.X_OK)):
        raise argparse.ArgumentTypeError(f"{raw} is not an executable file (nox -s build "
                                         "writes dist/mpi.pex)")
    return path


def _positive(raw: str) -> float:
    value = float(raw)
    if not value > 0:
        raise argparse.ArgumentTypeError("must be > 0")
    return value


def _non_negative_int(raw: str) -> int:
    value = int(raw)
    if value < 0:
        raise argparse.ArgumentTypeError("must be >= 0")
    return value


def _connections(raw: str) -> int:
    value = int(raw)
    if not 1 <= value <= 64:
        raise argparse.ArgumentTypeError("must be between 1 and 64")
    return value


def _non_negative(raw: str) -> float:
    value = float(raw)
    if not value >= 0:
        raise argparse.ArgumentTypeError("must be >= 0")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        with _sigterm_as_interrupt():
            results, context = run(args)
    except KeyboardInterrupt:
        print("interrupted; servers and PostgreSQL stopped", file=sys.stderr)
        return 130
    context["command"] = ["python", "-m", "bench.api",
                          *(sys.argv[1:] if argv is None else argv)]
    args.json.write_text(report_json(results, context))
    markdown = args.json.with_suffix(".md")
    markdown.write_text(format_markdown(results, context))
    print(format_summary(results, context))
    print(f"report: {args.json} (table: {markdown})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
