"""Search benchmark behind ``nox -s bench -- search``: the whoosh index next to SQL on PostgreSQL.

    python -m bench.search [--patients N] [--queries N] [--json PATH] [--fast-postgres]

1. Loads N synthetic patients (default 100,000) into a throwaway PostgreSQL with bulk
   inserts (names drawn from a seeded generator: frequent real surnames plus generated
   rare ones, given names, birth dates 1930-2020, an SSN-like identifier, an address, a
   phone number).
2. Times a full index build (``mpi.search.indexer.build_generation``, what ``mpi reindex``
   and the start-up rebuild run) with SEARCH_REBUILD_PROCESSES (one per core), and in one
   process for the ratio.
3. Times typical searches (surname prefix, fuzzy surname, name + birth year, identifier,
   free text) through the index, and through the whole search service (index, then the
   records and the audit row from PostgreSQL), next to equivalent SQL in the same run:
   ``ILIKE`` and ``pg_trgm`` similarity with GIN trigram indexes created for the
   benchmark only. Each figure is p50/p99 over ``--queries`` different searches.
4. Measures the lag between a committed write and its visibility in search under
   concurrent write load: ``mpi serve`` (default settings: workers, the indexer process)
   on the same database and index, 1, 2, 4 and 8 writer processes posting varied
   synthetic patients as fast as the service takes them (8 saturates a 2-core machine:
   the rate stops growing), and a probe that posts a patient with a unique name and
   polls the search endpoint until it is found. Each line gives the write rate as a share
   of the highest rate measured, so "under load" is a number.
5. Measures the same lag while the index merges segments (``--merge-probes``): the index
   is built again in :data:`MERGE_SHARES` processes (as many segments, what a rebuild on a
   large machine leaves), so the service's indexer starts by merging them while the
   probes, one every :data:`MERGE_PROBE_EVERY_S`, are written and searched for. The
   merges the server logged are reported beside the lag.
6. Times catching up (``--catch-up N``): N records registered through the service's import
   path after the index was built, then a copy of the index caught up by one indexer in
   a fresh process, as ``mpi serve``'s indexer process does it; the rate is given as a
   ratio to the builds of step 2, with where the indexer's steps spent the time.

Output: a table on stdout and ``.bench/search.json`` (keys sorted).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import http.client
import json
import logging
import multiprocessing
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from bench.api import (
    _git_commit,
    _make_output_dir,
    _postgres_info,
    _sigterm_as_interrupt,
    machine_info,
    mpi_command,
    percentile,
    running_server,
    server_env,
)
from bench.identity import SYLLABLES
from toolkit.procs import free_port

DEFAULT_JSON = Path(".bench/search.json")
HOST = "127.0.0.1"
SSN = "urn:oid:2.16.840.1.113883.4.1"
COMMON_FAMILIES = (
    "Smith", "Johnson", "Williams", "Brown", "Jones", "Garcia", "Miller", "Davis", "Rodriguez",
    "Martinez", "Hernandez", "Lopez", "Gonzalez", "Wilson", "Anderson", "Thomas", "Taylor",
    "Moore", "Jackson", "Martin", "Lee", "Perez", "Thompson", "White", "Harris", "Sanchez",
    "Clark", "Ramirez", "Lewis", "Robinson", "Walker", "Young", "Allen", "King", "Wright",
    "Scott", "Torres", "Nguyen", "Hill", "Flores", "Green", "Adams", "Nelson", "Baker",
    "Müller", "Schmidt", "Schneider", "Fischer", "Weber", "O'Brien", "Kowalski", "Nowak",
    "Okafor", "Tanaka", "Suzuki", "Rossi", "Russo", "Dubois", "Lefebvre", "Jansen",
)
GIVEN = (
    "James", "Mary", "John", "Patricia", "Robert", "Jennifer", "Michael", "Linda", "William",
    "Elizabeth", "David", "Barbara", "Richard", "Susan", "Joseph", "Jessica", "Thomas", "Sarah",
    "Charles", "Karen", "Maria", "José", "Wei", "Fatima", "Lars", "Aisha", "Pedro", "Yuki",
    "Anna", "Sofia", "Mohammed", "Olga", "Chidi", "Hiroshi", "Ingrid", "Zoë", "Seán", "Ana",
)
CITIES = ("Springfield", "Shelbyville", "Riverton", "Lakeside", "Fairview", "Georgetown")


# --------------------------------------------------------------------------- data


def synthetic_patients(n: int, seed: int = 0) -> Iterator[dict[str, Any]]:
    """``n`` patient records; 60 % with a frequent surname, the rest rare generated ones."""
    rng = random.Random(seed)
    start = date(1930, 1, 1)
    for i in range(n):
        if rng.random() < 0.6:
            family = rng.choice(COMMON_FAMILIES)
        else:
            family = "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 4))).title()
        given = [rng.choice(GIVEN)] + ([rng.choice(GIVEN)] if rng.random() < 0.3 else [])
        born = start + timedelta(days=rng.randrange(90 * 365))
        yield {
            "source": "bench-ehr", "source_id": f"S-{i:07d}",
            "family": family, "given": given, "birth_date": born,
            "gender": rng.choice(("male", "female")),
            # Unique by construction: area and serial come from i, the group is random.
            "ssn": f"{100 + i // 10000:03d}-{rng.randrange(10, 99):02d}-{i % 10000:04d}",
            "line": f"{rng.randrange(1, 999)} {rng.choice(('High', 'Elm', 'Oak'))} St",
            "city": rng.choice(CITIES), "postal_code": f"{rng.randrange(10000, 99999)}",
            "phone": f"+1-217-{rng.randrange(200, 999)}-{rng.randrange(0, 9999):04d}",
        }


def settle(url: str) -> None:
    """``VACUUM (ANALYZE)`` the database after a bulk write, before a timed step reads it.

    Autovacuum visits every table such a write grew by a fifth, some seconds after it: the
    catch-up timed right after its 25,000-record import shared the two cores with it (its
    vacuums and analyzes of nine tables began 14 s after the import) and took 14.8 s,
    10.1-11.1 s on the same records once autovacuum had been. The build and the catch-up
    are compared as rates, so both are timed on a database autovacuum has visited.
    (PostgreSQL only: SQLite has no autovacuum.)"""
    import psycopg

    from mpi.config import parse_database_url

    if parse_database_url(url).kind != "postgresql":
        return
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM (ANALYZE)")


def load_patients(db: Any, n: int, *, seed: int = 0, batch: int = 2000,
                  progress: Callable[[int], None] | None = None) -> list[dict[str, Any]]:
    """Bulk-insert ``n`` synthetic patients; returns the generated rows (for query terms)."""
    from mpi.storage.models import (
        PatientAddressRow,
        PatientIdentifierRow,
        PatientNameRow,
        PatientRow,
        PatientTelecomRow,
    )
    from mpi.storage.patients import normalize_name

    now = datetime.now(UTC).replace(tzinfo=None)
    generated: list[dict[str, Any]] = []
    rows = list(synthetic_patients(n, seed))
    for offset in range(0, n, batch):
        chunk = rows[offset:offset + batch]
        with db.atomic():
            pks = [r[0] for r in PatientRow.insert_many([
                {"id": uuid.uuid4(), "source": p["source"], "source_id": p["source_id"],
                 "gender": p["gender"], "birth_date": p["birth_date"], "version": 1,
                 "created_at": now, "updated_at": now} for p in chunk
            ]).returning(PatientRow.pk).tuples().execute()]
            PatientNameRow.insert_many([
                {"patient": pk, "position": 0, "family": p["family"],
                 "family_norm": normalize_name(p["family"]), "given": p["given"], "prefix": [],
                 "suffix": []} for pk, p in zip(pks, chunk, strict=True)]).execute()
            PatientIdentifierRow.insert_many([
                {"patient": pk, "position": 0, "system": SSN, "value": p["ssn"], "type": "SS"}
                for pk, p in zip(pks, chunk, strict=True)]).execute()
            PatientAddressRow.insert_many([
                {"patient": pk, "position": 0, "line": [p["line"]], "city": p["city"],
                 "postal_code": p["postal_code"], "country": "US"}
                for pk, p in zip(pks, chunk, strict=True)]).execute()
            PatientTelecomRow.insert_many([
                {"patient": pk, "position": 0, "system": "phone", "value": p["phone"]}
                for pk, p in zip(pks, chunk, strict=True)]).execute()
        generated.extend(chunk)
        if progress is not None:
            progress(len(generated))
    return generated


# --------------------------------------------------------------------------- searches


def typical_searches(rows: Sequence[dict[str, Any]], count: int,
                     seed: int = 1) -> dict[str, list[dict[str, Any]]]:
    """For each kind of search, ``count`` instances drawn from the loaded data."""
    rng = random.Random(seed)
    picks = [rng.choice(rows) for _ in range(count)]

    def typo(word: str) -> str:
        if len(word) < 5:
            return word
        i = rng.randrange(1, len(word) - 1)
        return word[:i] + word[i + 1:]  # one deletion: edit distance 1

    return {
        "surname prefix": [{"q": f"family:{p['family'][:3]}*",
                            "sql_like": p["family"][:3] + "%"} for p in picks],
        "fuzzy surname": [{"q": f"family:{typo(p['family'])}",
                           "sql_sim": typo(p["family"])} for p in picks],
        "name + birth year": [{"name": f"{p['given'][0]} {p['family']}",
                               "birth_year": str(p["birth_date"].year),
                               "sql_family": p["family"], "sql_given": p["given"][0],
                               "sql_year": p["birth_date"].year} for p in picks],
        "identifier": [{"q": p["ssn"], "sql_value": p["ssn"]} for p in picks],
        "free text (name + year)": [{"q": f"{p['given'][0]} {p['family']} "
                                          f"{p['birth_date'].year}"} for p in picks],
    }


SQL = {
    "surname prefix": ("ILIKE", """
        SELECT p.id FROM patient p JOIN patient_name n ON n.patient_pk = p.pk
        WHERE p.deleted_at IS NULL AND n.family ILIKE %s LIMIT 20""",
                       lambda s: (s["sql_like"],)),
    "fuzzy surname": ("pg_trgm similarity", """
        SELECT p.id, similarity(n.family, %s) AS sim FROM patient p
        JOIN patient_name n ON n.patient_pk = p.pk
        WHERE p.deleted_at IS NULL AND n.family %% %s ORDER BY sim DESC LIMIT 20""",
                      lambda s: (s["sql_sim"], s["sql_sim"])),
    "name + birth year": ("ILIKE", """
        SELECT p.id FROM patient p JOIN patient_name n ON n.patient_pk = p.pk
        WHERE p.deleted_at IS NULL AND n.family ILIKE %s AND n.given::text ILIKE %s
          AND p.birth_date >= %s AND p.birth_date < %s LIMIT 20""",
                          lambda s: (s["sql_family"], f"%{s['sql_given']}%",
                                     date(s["sql_year"], 1, 1), date(s["sql_year"] + 1, 1, 1))),
    "identifier": ("equality (btree)", """
        SELECT p.id FROM patient p JOIN patient_identifier i ON i.patient_pk = p.pk
        WHERE p.deleted_at IS NULL AND i.deleted_at IS NULL AND i.value = %s LIMIT 20""",
                   lambda s: (s["sql_value"],)),
}
TRIGRAM_DDL = (
    "CREATE EXTENSION IF NOT EXISTS pg_trgm",
    "CREATE INDEX bench_name_family_trgm ON patient_name USING gin (family gin_trgm_ops)",
    "CREATE INDEX bench_name_given_trgm ON patient_name USING gin ((given::text) gin_trgm_ops)",
    "ANALYZE",
)


def _ms_stats(samples: Sequence[float]) -> dict[str, Any]:
    ms = [s * 1000 for s in samples]
    return {"n": len(ms), "p50_ms": round(percentile(ms, 50) or 0, 3),
            "p99_ms": round(percentile(ms, 99) or 0, 3), "mean_ms": round(statistics.mean(ms), 3)
            if ms else None}


def time_index_searches(root: Path, searches: dict[str, list[dict[str, Any]]],
                        fuzzy: int) -> dict[str, Any]:
    from mpi.search.index import WhooshSearchIndex
    from mpi.search.query import Options, Shortcuts, build

    reader = WhooshSearchIndex(root)
    out: dict[str, Any] = {}
    try:
        for kind, items in searches.items():
            samples, hits = [], 0
            for s in items:
                started = time.perf_counter()
                query = build(s.get("q"), Shortcuts(name=s.get("name"),
                                                    birth_year=int(s["birth_year"])
                                                    if s.get("birth_year") else None),
                              Options(fuzzy=fuzzy))
                results = reader.search(query, offset=0, limit=20)
                samples.append(time.perf_counter() - started)
                hits += bool(results.hits)
            out[kind] = {**_ms_stats(samples), "found_share": round(hits / len(items), 3)}
    finally:
        reader.close()
    return out


def time_service_searches(settings: Any, db: Any, root: Path,
                          searches: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """The whole search: index, records from PostgreSQL, audit row (as the API does it,
    with the service the composition root builds from ``settings``)."""
    from mpi import wiring
    from mpi.domain.audit import Actor
    from mpi.search.index import WhooshSearchIndex
    from mpi.search.query import Shortcuts
    from mpi.search.service import SearchRequest

    reader = WhooshSearchIndex(root)
    service = wiring.build(settings, db=db, search_index=reader).search
    actor = Actor("bench-clerk")
    out: dict[str, Any] = {}
    try:
        for kind, items in searches.items():
            samples = []
            for s in items:
                request = SearchRequest(q=s.get("q"), shortcuts=Shortcuts(
                    name=s.get("name"),
                    birth_year=int(s["birth_year"]) if s.get("birth_year") else None))
                started = time.perf_counter()
                service.search(request, actor)
                samples.append(time.perf_counter() - started)
            out[kind] = _ms_stats(samples)
    finally:
        reader.close()
    return out


def time_sql(url: str, searches: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    import psycopg

    out: dict[str, Any] = {}
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SELECT set_limit(0.3)")
        for kind, (method, sql, params) in SQL.items():
            samples, hits = [], 0
            for s in searches[kind]:
                started = time.perf_counter()
                rows = conn.execute(sql, params(s)).fetchall()
                samples.append(time.perf_counter() - started)
                hits += bool(rows)
            out[kind] = {"method": method, **_ms_stats(samples),
                         "found_share": round(hits / len(searches[kind]), 3)}
    return out


# --------------------------------------------------------------------------- lag under load


def _post(port: int, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    conn = http.client.HTTPConnection(HOST, port, timeout=30)
    try:
        conn.request("POST", "/api/v1/patients", body=json.dumps(body).encode(),
                     headers={"Content-Type": "application/json", "X-User-ID": "bench"})
        resp = conn.getresponse()
        raw = resp.read()
        return resp.status, json.loads(raw) if raw else {}
    finally:
        conn.close()


def api_record(p: dict[str, Any], source: str, source_id: str) -> dict[str, Any]:
    """A :func:`synthetic_patients` row as the body of ``POST /api/v1/patients``."""
    return {"source": source, "source_id": source_id,
            "names": [{"family": p["family"], "given": p["given"]}],
            "gender": p["gender"], "birth_date": p["birth_date"].isoformat(),
            "identifiers": [{"system": SSN, "value": p["ssn"], "type": "SS"}],
            "addresses": [{"line": [p["line"]], "city": p["city"],
                           "postal_code": p["postal_code"], "country": "US"}],
            "telecom": [{"system": "phone", "value": p["phone"]}]}


def _writer(port: int, stop_at: float, tag: str, seed: int, counter: Any) -> None:
    """Posts realistic records (varied names, so matching does its usual work) until stopped.

    Each writer draws its own records; an SSN that clashes with a loaded record only
    makes the matcher's work realistic (a duplicate registration), never a 409.
    """
    for n, p in enumerate(synthetic_patients(10_000_000, seed=seed)):
        if time.time() >= stop_at:
            return
        status, _ = _post(port, api_record(p, "bench-load", f"{tag}-{n}"))
        if status == 201:
            with counter.get_lock():
                counter.value += 1


def measure_lag(port: int, *, probes: int, writers: int, timeout: float = 10.0,
                pause: float = 0.2) -> dict[str, Any]:
    ctx = multiprocessing.get_context("spawn")
    counter = ctx.Value("i", 0)
    stop_at = time.time() + 3600
    procs = [ctx.Process(target=_writer, args=(port, stop_at, f"w{i}-{uuid.uuid4().hex[:6]}",
                                                random.randrange(1 << 30), counter), daemon=True)
             for i in range(writers)]
    for p in procs:
        p.start()
    lags: list[float] = []
    missed = 0
    started = time.monotonic()
    try:
        time.sleep(1.0)
        for i in range(probes):
            family = "Probe" + "".join(random.choice("bcdfghjklmnpqrstvwz") for _ in range(8))
            status, created = _post(port, {"source": "bench-probe", "source_id": f"p-{i}-{family}",
                                           "names": [{"family": family, "given": ["Lag"]}]})
            if status != 201:
                missed += 1
                continue
            committed = time.monotonic()  # the write is acknowledged after its commit
            query = urlencode({"q": f"family:{family.lower()}~0"})
            while True:
                conn = http.client.HTTPConnection(HOST, port, timeout=30)
                try:
                    conn.request("GET", f"/api/v1/patients/search?{query}",
                                 headers={"X-User-ID": "bench-probe"})
                    resp = conn.getresponse()
                    body = json.loads(resp.read() or b"{}")
                finally:
                    conn.close()
                if resp.status == 200 and any(it["patient"]["id"] == created["id"]
                                              for it in body.get("items", [])):
                    lags.append(time.monotonic() - committed)
                    break
                if time.monotonic() - committed > timeout:
                    missed += 1
                    break
                time.sleep(0.01)
            time.sleep(pause)
    finally:
        elapsed = time.monotonic() - started
        for p in procs:
            p.terminate()
        for p in procs:
            p.join(5)
    return {**_ms_stats(lags), "max_ms": round(max(lags) * 1000, 1) if lags else None,
            "missed": missed, "writers": writers,
            "concurrent_writes_per_s": round(counter.value / elapsed, 1)}


# --------------------------------------------------------------------------- main


#: Processes (and so segments) of the index the merge scenario starts from: above the
#: indexer's COMPACT_AT_SEGMENTS, so it starts by merging them.
MERGE_SHARES = 12
MERGE_PROBE_EVERY_S = 1.0


def measure_lag_while_merging(db: Any, workdir: Path, url: str, log: Path, *, probes: int
                              ) -> dict[str, Any]:
    """Write -> searchable while the indexer merges: a fresh index of MERGE_SHARES segments,
    ``mpi serve`` on it, ``probes`` probes (no other writers); and the merges the server
    logged (documents and seconds)."""
    from mpi.search.indexer import build_generation
    from mpi.search.store import IndexDirectory

    root = workdir / "search-index-segmented"
    build_generation(db, IndexDirectory(root), processes=MERGE_SHARES)
    port = free_port()
    env = server_env(os.environ, url, port)
    env.update(SEARCH_INDEX_PATH=str(root), LOG_LEVEL="INFO")
    with running_server(mpi_command("serve"), env=env, cwd=workdir, log=log, port=port,
                        ready_path="/api/v1/health/ready"):
        lag = measure_lag(port, probes=probes, writers=0, timeout=600,
                          pause=MERGE_PROBE_EVERY_S)
    merges = []
    for line in log.read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            entry = json.loads(line)
            message = entry.get("message", "") if isinstance(entry, dict) else ""
            # "merged beside the indexer" (a merge in a child), "compacted" (in the indexer)
            if "merged beside" in message or "compacted" in message:
                merges.append({"segments": entry["segments"], "seconds": entry["seconds"],
                               "documents": entry.get("documents")})
    return {**lag, "segments_at_start": MERGE_SHARES + 1, "merges": merges}


def run(args: argparse.Namespace) -> dict[str, Any]:
    from mpi import wiring
    from mpi.config import load, parse_database_url
    from mpi.search.indexer import build_generation
    from mpi.search.store import IndexDirectory
    from mpi.storage import migrate
    from mpi.storage.db import close_database, connection, database_for
    from toolkit.postgres import start_postgres

    _make_output_dir(args.json.parent)
    report: dict[str, Any] = {
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "git_commit": _git_commit(), "machine": machine_info(),
        "patients": args.patients, "queries_per_kind": args.queries,
    }
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="mpi-sbench-")))
        print("starting PostgreSQL ...", file=sys.stderr, flush=True)
        pg = start_postgres(durable=not args.fast_postgres)
        stack.callback(pg.stop)
        report["postgres"] = {"kind": pg.kind, "description": pg.description,
                              **_postgres_info(pg.url)}
        settings = load(server_env(os.environ, pg.url, 8080))
        db = database_for(parse_database_url(pg.url), max_connections=4)
        wiring.build(settings, db=db)  # binds the models to db, as every process does
        stack.callback(close_database, db)
        with connection(db):
            migrate.apply(db)
            print(f"loading {args.patients} patients ...", file=sys.stderr, flush=True)
            started = time.monotonic()
            rows = load_patients(db, args.patients, seed=args.seed)
            report["load_s"] = round(time.monotonic() - started, 1)
        settle(pg.url)
        # The queries are drawn now and the generated records let go: the builds below
        # fork their children from this process, which need not hold a million records.
        searches = typical_searches(rows, args.queries, seed=args.seed + 1)
        del rows
        gc.collect()

        # The configured build (SEARCH_REBUILD_PROCESSES: one per core), and one process
        # for the ratio; the searches below use the configured build's index.
        processes = settings.search_rebuild_processes
        builds = {}
        for procs in dict.fromkeys([processes, 1]):
            root = workdir / f"search-index-{procs}"
            print(f"indexing ({procs} processes) ...", file=sys.stderr, flush=True)
            started = time.monotonic()
            _, count, _ = build_generation(db, IndexDirectory(root), processes=procs)
            seconds = time.monotonic() - started
            size = sum(f.stat().st_size for f in root.rglob("*") if f.is_file())
            builds[procs] = {"patients": count, "seconds": round(seconds, 1),
                             "patients_per_s": round(count / seconds, 1), "bytes": size,
                             "processes": procs}
        report["index_build"] = builds[processes]
        report["index_build_one_process"] = builds[1]
        root = workdir / f"search-index-{processes}"

        fuzzy = settings.search_fuzzy_distance
        print("searching (index) ...", file=sys.stderr, flush=True)
        time_index_searches(root, {k: v[:20] for k, v in searches.items()}, fuzzy)  # warm
        report["search_index"] = time_index_searches(root, searches, fuzzy)
        print("searching (service: index + PostgreSQL + audit) ...", file=sys.stderr,
              flush=True)
        with connection(db):
            report["search_service"] = time_service_searches(settings, db, root, searches)
        print("creating trigram indexes; searching (SQL) ...", file=sys.stderr, flush=True)
        import psycopg

        with psycopg.connect(pg.url, autocommit=True) as conn:
            started = time.monotonic()
            for ddl in TRIGRAM_DDL:
                conn.execute(ddl)
            report["sql_trigram_index_build_s"] = round(time.monotonic() - started, 1)
        time_sql(pg.url, {k: v[:20] for k, v in searches.items()})  # warm
        report["search_sql"] = time_sql(pg.url, searches)

        if args.lag_probes:
            port = free_port()
            env = server_env(os.environ, pg.url, port)
            env["SEARCH_INDEX_PATH"] = str(root)
            print(f"mpi serve; {args.writers} writers; {args.lag_probes} probes ...",
                  file=sys.stderr, flush=True)
            with running_server(mpi_command("serve"), env=env, cwd=workdir,
                                log=args.json.parent / "search-server.log", port=port,
                                ready_path="/api/v1/health/ready"):
                report["server_workers"] = load(env).workers
                report["write_to_searchable"] = [
                    measure_lag(port, probes=args.lag_probes, writers=n) for n in args.writers]
        if args.merge_probes:
            print(f"mpi serve on an index of {MERGE_SHARES + 1} segments; "
                  f"{args.merge_probes} probes ...", file=sys.stderr, flush=True)
            report["write_to_searchable_while_merging"] = measure_lag_while_merging(
                db, workdir, pg.url, args.json.parent / "search-merge-server.log",
                probes=args.merge_probes)
        if args.catch_up:
            print(f"{args.catch_up} records created behind the index; catching up ...",
                  file=sys.stderr, flush=True)
            report["index_catch_up"] = measure_catch_up(
                settings, db, root, workdir / "search-index-behind", args.catch_up,
                seed=args.seed + 7)
            rate = report["index_catch_up"]["patients_per_s"]
            report["index_catch_up"]["ratio_to_build"] = round(
                rate / max(builds[processes]["patients_per_s"], 0.1), 2)
            report["index_catch_up"]["ratio_to_build_one_process"] = round(
                rate / max(builds[1]["patients_per_s"], 0.1), 2)
    return report


def measure_catch_up(settings: Any, db: Any, root: Path, behind: Path, records: int, *,
                     seed: int) -> dict[str, Any]:
    """An instance restarted on its old index after ``records`` were registered (through
    the service's import path: created and linked, two events each): a copy of the index
    at ``root`` caught up by one indexer, in the indexer's own steps, timed.

    The indexer runs in a fresh process (:func:`catch_up_here`), as the service's does:
    ``mpi serve``'s indexer process is forked by a master that holds its modules and
    little else, while this process holds what the benchmark did before (a one-process
    build, searchers, a 100,000-record import): the same catch-up at 1,000,000 records
    spent 20.5 s writing documents in this process and 17.4 s in a fresh one (two runs
    of ``--patients 1000000 --catch-up 100000``)."""
    import shutil

    from mpi import wiring
    from mpi.domain.audit import Actor
    from mpi.storage.db import connection

    service = wiring.build(settings, db=db).patients
    actor = Actor(user_id="bench-catch-up")
    rows = list(synthetic_patients(records, seed=seed))
    with connection(db):
        for offset in range(0, records, 1000):
            service.import_batch([service.parse(json.dumps(api_record(
                p, "bench-catch-up", f"C-{offset + n}")).encode())
                for n, p in enumerate(rows[offset:offset + 1000])], actor)
    del rows
    settle(settings.database_url)
    shutil.rmtree(behind, ignore_errors=True)
    shutil.copytree(root, behind)  # (the process checks that it opens)
    env = server_env(os.environ, settings.database_url, 8080)
    # As the service runs it (SEARCH_REBUILD_PROCESSES: a backlog's new records shared out).
    env["SEARCH_REBUILD_PROCESSES"] = str(settings.search_rebuild_processes)
    done = subprocess.run([sys.executable, "-m", "bench.search", "--catch-up-index",
                           str(behind)], env=env, cwd=Path(__file__).resolve().parent.parent,
                          capture_output=True, text=True, timeout=3600, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"the catch-up process exited {done.returncode}: "
                           f"{done.stderr.strip()[-2000:]}")
    result = json.loads(done.stdout)
    seconds = result.pop("seconds")
    return {"patients": records, "seconds": round(seconds, 1),
            "patients_per_s": round(records / max(seconds, 1e-3), 1), **result}


def catch_up_here(behind: Path) -> dict[str, Any]:
    """The body of :func:`measure_catch_up`'s process: the index at ``behind`` caught up
    by an indexer configured from the environment (DATABASE_URL,
    SEARCH_REBUILD_PROCESSES); how long it took, the events it applied, the segments it
    left and its steps' phases."""
    from mpi import wiring
    from mpi.config import load
    from mpi.search.indexer import Indexer
    from mpi.search.store import IndexDirectory
    from mpi.storage.changes import ChangeRepository
    from mpi.storage.db import close_database, connection, database_for

    settings = load(os.environ)
    db = database_for(settings.database, max_connections=2)
    wiring.build(settings, db=db)  # binds the models to db, as every process does
    opened = IndexDirectory(behind).check().opened
    assert opened is not None, "the index to catch up did not open"
    cursor = opened.cursor
    opened.index.close()
    indexer = Indexer(db, behind, rebuild_processes=settings.search_rebuild_processes)
    steps = _StepTimes()
    logger = logging.getLogger("mpi.search")
    logger.addHandler(steps)
    logger.setLevel(logging.DEBUG)
    try:
        started = time.monotonic()
        indexer.catch_up(max_steps=10**6)
        seconds = time.monotonic() - started
        with connection(db):
            events = ChangeRepository().last_id() - cursor
    finally:
        indexer.stop()
        close_database(db)
    return {"events": events, "seconds": seconds,
            "segments_after": len(list(opened.path.glob("*.seg"))),
            "steps": steps.summary()}


class _StepTimes(logging.Handler):
    """Where the indexer's steps spent their time, from its debug log of each step (the
    phases it times: reading the events and records, writing the documents, of which
    waiting for the child process's segment, committing, merging) and the merges it
    logged."""

    PHASES = ("read_ms", "documents_ms", "child_wait_ms", "commit_ms", "merge_ms")

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.steps = 0
        self.totals = dict.fromkeys(self.PHASES, 0.0)
        self.merges: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if "documents_ms" in record.__dict__:
            self.steps += 1
            for phase in self.PHASES:
                self.totals[phase] += float(record.__dict__.get(phase) or 0)
        elif "merged" in record.getMessage():
            self.merges.append(record.getMessage())

    def summary(self) -> dict[str, Any]:
        return {"steps": self.steps, "merges": self.merges,
                **{phase.replace("_ms", "_s"): round(total / 1000, 1)
                   for phase, total in self.totals.items()}}


def format_table(report: dict[str, Any]) -> str:
    build, one = report["index_build"], report["index_build_one_process"]
    lines = [f"{report['patients']} patients; index built in {build['seconds']} s "
             f"({build['patients_per_s']} patients/s, {build['processes']} processes, "
             f"{build['bytes'] / 1e6:.1f} MB); in one process {one['seconds']} s "
             f"({one['patients_per_s']} patients/s): "
             f"{one['seconds'] / max(build['seconds'], 0.1):.2f}x", ""]
    header = f"{'search':<26}{'index p50/p99 ms':>20}{'service p50/p99':>20}  {'SQL':<20}" \
             f"{'SQL p50/p99 ms':>18}"
    lines += [header, "-" * len(header)]
    for kind, ix in report["search_index"].items():
        svc = report["search_service"].get(kind, {})
        sql = report["search_sql"].get(kind)
        sql_text = (f"{sql['p50_ms']:.2f} / {sql['p99_ms']:.2f}" if sql else "-")
        lines.append(f"{kind:<26}{ix['p50_ms']:>9.2f} / {ix['p99_ms']:<8.2f}"
                     f"{svc.get('p50_ms', 0):>9.2f} / {svc.get('p99_ms', 0):<8.2f}  "
                     f"{(sql or {}).get('method', '-'):<20}{sql_text:>18}")
    lags = report.get("write_to_searchable") or []
    if lags:
        lines.append("")
    top = max((lag["concurrent_writes_per_s"] for lag in lags), default=0) or 1
    for lag in lags:
        share = round(100 * lag["concurrent_writes_per_s"] / top)
        lines.append(f"write -> searchable under load ({lag['writers']} writer processes, "
                     f"{lag['concurrent_writes_per_s']} writes/s = {share} % of the highest): "
                     f"p50 {lag['p50_ms']} ms, "
                     f"p99 {lag['p99_ms']} ms, max {lag['max_ms']} ms over {lag['n']} probes"
                     f" ({lag['missed']} missed)")
    merging = report.get("write_to_searchable_while_merging")
    if merging:
        merges = "; ".join(f"{m['segments']} segments in {m['seconds']} s"
                           for m in merging["merges"]) or "none logged"
        lines.append(f"write -> searchable while the index merges (from "
                     f"{merging['segments_at_start']} segments): p50 {merging['p50_ms']} ms, "
                     f"p99 {merging['p99_ms']} ms, max {merging['max_ms']} ms over "
                     f"{merging['n']} probes ({merging['missed']} missed); merges: {merges}")
    catch_up = report.get("index_catch_up")
    if catch_up:
        lines.append(f"catching up {catch_up['patients']} records created behind the index "
                     f"({catch_up['events']} events): {catch_up['seconds']} s, "
                     f"{catch_up['patients_per_s']} patients/s, "
                     f"{catch_up['ratio_to_build']}x the build above, "
                     f"{catch_up['ratio_to_build_one_process']}x a one-process build; "
                     f"{catch_up['segments_after']} segments after")
        steps = catch_up.get("steps")
        if steps:
            lines.append(f"  its {steps['steps']} steps: reading {steps['read_s']} s, "
                         f"documents {steps['documents_s']} s (waiting for the child "
                         f"{steps['child_wait_s']} s), committing {steps['commit_s']} s, "
                         f"merging {steps['merge_s']} s; "
                         f"{len(steps['merges'])} merge(s) beside it")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.search",
                                     description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--patients", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=200, help="searches per kind")
    parser.add_argument("--lag-probes", type=int, default=30,
                        help="write->searchable probes (0 skips the server part)")
    parser.add_argument("--writers", type=_counts, default=[1, 2, 4, 8], metavar="N[,N...]",
                        help="concurrent writer processes; one lag measurement per number "
                             "(default 1,2,4,8)")
    parser.add_argument("--merge-probes", type=int, default=30,
                        help="write->searchable probes while the index merges (0 skips)")
    parser.add_argument("--catch-up", type=int, default=10_000, metavar="N",
                        help="records created behind a copy of the index, then caught up "
                             "by one indexer (0 skips)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--catch-up-index", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON)
    parser.add_argument("--fast-postgres", action="store_true",
                        help="a local PostgreSQL with fsync and synchronous_commit off")
    return parser.parse_args(argv)


def _counts(raw: str) -> list[int]:
    try:
        values = [int(x) for x in raw.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError("must be numbers separated by commas") from None
    if not values or any(v < 1 or v > 32 for v in values):
        raise argparse.ArgumentTypeError("each must be between 1 and 32")
    return values


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.catch_up_index is not None:  # measure_catch_up's process
        print(json.dumps(catch_up_here(args.catch_up_index)))
        return 0
    try:
        with _sigterm_as_interrupt():
            report = run(args)
    except KeyboardInterrupt:
        print("interrupted; server and PostgreSQL stopped", file=sys.stderr)
        return 130
    report["command"] = ["python", "-m", "bench.search",
                         *(sys.argv[1:] if argv is None else argv)]
    args.json.write_text(json.dumps(report, indent=2, sort_keys=True, default=str) + "\n")
    print(format_table(report))
    print(f"report: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
