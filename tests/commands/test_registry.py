"""The identity and matching commands exactly as DEPLOY.md shows them, on a small registry."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HEADER = ["record_id", "source", "given_name", "family_name", "birth_date", "sex",
          "address_line", "city", "postal_code", "ssn", "person"]
ROWS = [
    ["r1", "", "William", "Okafor", "1971-03-09", "m", "4 Elm Rd", "Peoria", "61602",
     "123456789", "A"],
    ["r2", "", "Bill", "Okafor", "1971-03-09", "m", "4 Elm Rd", "Peoria", "61602",
     "123456789", "A"],
    ["r3", "", "Maria", "Lindqvist", "1988-11-30", "f", "9 Oak Ave", "Chicago", "60601",
     "987654321", "B"],
    ["r4", "", "Chen", "Wu", "1950-01-15", "m", "1 Pine St", "Dallas", "75201", "", "C"],
]


def _write(path: Path, header: list[str], rows: list[list[str]]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


def mpi(cwd: Path, line: str, *, expect: int = 0,
        **settings: str) -> subprocess.CompletedProcess[str]:
    """Run one documented command line (``mpi ...``) in ``cwd`` on its own SQLite file
    (``settings``: more environment)."""
    argv = line.split()
    assert argv[0] == "mpi"
    env = {**os.environ, "DATABASE_URL": f"sqlite:///{cwd}/mpi.db", "LOG_FORMAT": "text",
           "LOG_LEVEL": "WARNING", **settings}
    env.pop("MATCHING_MODEL_PATH", None)
    done = subprocess.run([sys.executable, "-m", "mpi", *argv[1:]], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == expect, done.stdout + done.stderr
    return done


@pytest.fixture
def files(tmp_path: Path) -> Path:
    _write(tmp_path / "patients.csv", HEADER, ROWS)
    _write(tmp_path / "lab.csv", HEADER, [[f"L{r[0]}", "lab", *r[2:]] for r in ROWS[:3]])
    _write(tmp_path / "legacy.csv", ["record_id", "first", "surname", "birth_date"],
           [["x1", "Maria", "Lindqvist", "1988-11-30"], ["x2", "", "", "not-a-date"],
            ["x3", "Jonas", "Berg", "8929-01-01"], ["x4", "Ida", "Berg", "1955-11-92"]])
    mpi(tmp_path, "mpi migrate")
    return tmp_path


def _clusters(path: Path) -> dict[str, str]:
    with path.open() as handle:
        return {row["record_id"]: row["person_id"] for row in csv.DictReader(handle)}


def test_import_and_export(files: Path):
    done = mpi(files, "mpi import patients.csv --source lab-system")
    assert "imported 4 record(s)" in done.stdout
    import sqlite3

    with contextlib.closing(sqlite3.connect(files / "mpi.db")) as sqlite:  # analyzed
        analyzed = {t for (t,) in sqlite.execute("SELECT DISTINCT tbl FROM sqlite_stat1")}
    assert {"patient", "patient_link", "blocking_key"} <= analyzed
    again = mpi(files, "mpi import patients.csv --source lab-system")
    assert "imported 0 record(s), skipped 4 already present" in again.stdout
    missing = mpi(files, "mpi import nowhere.csv --source lab-system", expect=2)
    assert "error: nowhere.csv: no such file" in missing.stderr
    assert "Traceback" not in missing.stderr  # as mpi dedupe says it, not a crash
    # A bad value costs the record that value: x3 and x4 are imported without their
    # impossible birth dates; x2, nothing left once its date is dropped, is rejected (exit
    # 1). The summary names fields, reasons and lines, never the values.
    legacy = mpi(files, "mpi import legacy.csv --source legacy "
                        "--map given_name=first,family_name=surname", expect=1)
    assert "imported 3 record(s), skipped 0 already present, rejected 1" in legacy.stdout
    assert "legacy.csv: line 3: body: a record needs at least one name" in legacy.stderr
    assert ("legacy.csv: field birth_date: 3 value(s) dropped (not YYYY-MM-DD 1, "
            "in the future 1, impossible date 1); first at line(s) 3, 4, 5") in legacy.stderr
    assert "8929" not in legacy.stderr and "1955-11-92" not in legacy.stderr
    rekeyed = mpi(files, "mpi rekey")
    assert "checked 7 record(s), new keys for 0" in rekeyed.stdout
    mpi(files, "mpi export --clusters clusters.csv")
    clusters = _clusters(files / "clusters.csv")
    assert clusters["r1"] == clusters["r2"]  # William / Bill, same birth date and SSN
    assert len({clusters["r1"], clusters["r3"], clusters["r4"]}) == 3


def test_relink_merges_fragments_stored_before_auto_merge(files: Path):
    """The desk's record (no SSN) and the lab's (a nickname, no birth date, no address)
    found two persons; billing's full record reaches both, but the registry was loaded by
    a release that did not merge (MATCHING_AUTO_MERGE=false). mpi relink decides the
    stored records again with the current rules."""
    _write(files / "fragments.csv", HEADER, [
        ["d1", "desk", "William", "Okafor", "1971-03-09", "m", "4 Elm Rd", "Peoria", "61602",
         "", "A"],
        ["l1", "lab", "Bill", "Okafor", "", "m", "", "", "", "123456789", "A"],
        ["b1", "billing", "William", "Okafor", "1971-03-09", "m", "4 Elm Rd", "Peoria",
         "61602", "123456789", "A"]])
    mpi(files, "mpi import fragments.csv", MATCHING_AUTO_MERGE="false")
    mpi(files, "mpi export --clusters clusters.csv")
    before = _clusters(files / "clusters.csv")
    assert len(set(before.values())) == 2
    rehearsal = mpi(files, "mpi relink --dry-run --sample 20")
    assert "checked 3 record(s)" in rehearsal.stdout and "dry run" in rehearsal.stdout
    assert "would move 1 to another person" in rehearsal.stdout
    assert "l1" not in rehearsal.stdout and "Okafor" not in rehearsal.stdout  # ids only
    mpi(files, "mpi export --clusters clusters.csv")
    assert _clusters(files / "clusters.csv") == before  # nothing written
    done = mpi(files, "mpi relink")
    assert "moved 1 to another person" in done.stdout
    mpi(files, "mpi export --clusters clusters.csv")
    assert len(set(_clusters(files / "clusters.csv").values())) == 1
    again = mpi(files, "mpi relink")
    assert "moved 0 to another person, 0 to a person of their own; merged 0" in again.stdout


def test_train_from_the_database_and_from_a_file(files: Path):
    mpi(files, "mpi import patients.csv --source lab-system")
    done = mpi(files, "mpi train --output model.json")
    model = json.loads((files / "model.json").read_text())
    assert model["version"].startswith("trained-") and model["version"] in done.stderr
    # Name frequencies come with the model by default, so the service weighs them too.
    assert model["term_frequencies"]["family_name"]
    assert any(c["name"] == "middle_name" for c in model["comparisons"])
    mpi(files, "mpi train --from-csv patients.csv --output model.json --no-term-frequencies")
    plain = json.loads((files / "model.json").read_text())
    assert plain["version"].startswith("trained-") and not plain["term_frequencies"]


def test_offline_dedupe_link_and_blocking_report(files: Path):
    mpi(files, "mpi dedupe patients.csv --output clusters.csv")
    with (files / "clusters.csv").open() as handle:
        clusters = {row["record_id"]: row["cluster_id"] for row in csv.DictReader(handle)}
    assert clusters["r1"] == clusters["r2"] != clusters["r3"]
    mpi(files, "mpi link patients.csv lab.csv --output pairs.csv")
    with (files / "pairs.csv").open() as handle:
        pairs = {(row["left_id"], row["right_id"]) for row in csv.DictReader(handle)}
    assert ("r3", "Lr3") in pairs
    report = mpi(files, "mpi blocking report patients.csv --labels person")
    assert "pair_completeness" in report.stdout


def test_rows_that_are_not_records_are_skipped_and_reported(files: Path):
    _write(files / "mixed.csv", ["record_id", "given_name", "family_name", "birth_date"],
           [["m1", "Ada", "Lovelace", "1915-12-10"], ["m2", "", "", ""],
            ["m3", "Alan", "Turing", "1912-06-23"]])
    done = mpi(files, "mpi import mixed.csv --source desk --batch 2", expect=1)
    assert "imported 2 record(s)" in done.stdout and "rejected 1" in done.stdout
    assert "mixed.csv: line 3: body: a record needs at least one name" in done.stderr
    assert "Ada" not in done.stderr  # reported by line and field, never by value


def _import(cwd: Path, env: dict[str, str], name: str) -> None:
    done = subprocess.run([sys.executable, "-m", "mpi", "import", str(cwd / name),
                           "--no-progress", "--batch", "500", "--source", "ehr"],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_an_import_leaves_the_planner_with_statistics(database_url: str, tmp_path: Path):
    """Right after ``mpi import`` (autovacuum off: nobody else analyzes), every table it
    loaded has fresh statistics and the candidate look-up of a match walks the blocking
    key and link indexes. Without statistics the planner hashed the whole link table for
    every look-up (30 ms instead of 2 at 20,000 records, growing with the registry).
    The look-up's two tables are vacuumed too, so it reads keys and persons from the
    indexes alone, visiting no table row (migration 0020 put the person in the index)."""
    import random
    import re

    from mpi.config import parse_database_url
    from mpi.storage.db import close_database, database_for
    from mpi.storage.identity import KEY_ROWS_SQL
    from mpi.storage.models import REGISTRY_TABLES

    rng = random.Random(3)
    rows = [[f"s{i}", "", rng.choice(["Ann", "Bo", "Cy", "Di", "Ed", "Flo", "Gus", "Hal"]),
             f"Fam{rng.randrange(400)}", f"19{rng.randrange(30, 99)}-0{rng.randrange(1, 9)}-1"
             f"{rng.randrange(10)}", rng.choice("mf"), f"{i} Main St", "Peoria",
             f"6{rng.randrange(1000, 9999)}", "", ""] for i in range(1500)]
    _write(tmp_path / "many.csv", HEADER, rows)
    db = database_for(parse_database_url(database_url), max_connections=1)
    with db.connection_context():
        for table in REGISTRY_TABLES:
            db.execute_sql(f'ALTER TABLE "{table}" SET (autovacuum_enabled = false)')
        before = dict(db.execute_sql("SELECT relname, analyze_count FROM pg_stat_user_tables"
                                     ).fetchall())
        vacuums = dict(db.execute_sql("SELECT relname, vacuum_count FROM pg_stat_user_tables"
                                      ).fetchall())
        # A registry already loaded in bulk (30,000 records, as the legacy load leaves
        # it): the size at which the planner's guesses go wrong without statistics.
        for sql in (
            "INSERT INTO patient (id, source, source_id, active, deceased, version, "
            "created_at, updated_at) SELECT gen_random_uuid(), 'legacy', 'x' || g, true, "
            "false, 1, now(), now() FROM generate_series(1, 30000) g",
            "INSERT INTO person (id, created_at, updated_at) "
            "SELECT gen_random_uuid(), now(), now() FROM generate_series(1, 30000)",
            "INSERT INTO patient_link (patient_pk, person_pk, match_data, manual, how, "
            "linked_at) SELECT pk, pk, '{}', false, 'new', now() FROM patient",
            "INSERT INTO blocking_key (key, patient_pk) "
            "SELECT 'x:' || mod(pk, 9000), pk FROM patient"):
            db.execute_sql(sql)
    try:
        # Commits wait for the disk, as on a real server (the tests' server does not): a
        # VACUUM marks a page all-visible only once its rows' commits are flushed.
        env = {**os.environ, "DATABASE_URL": database_url, "LOG_LEVEL": "WARNING",
               "SEARCH_INDEX_PATH": str(tmp_path / "index"),
               "PGOPTIONS": "-c synchronous_commit=on"}
        _import(tmp_path, env, "many.csv")
        with db.connection_context():
            # pg_stat counters reach the view within a moment (the stats collector)
            after = dict(db.execute_sql("SELECT relname, analyze_count "
                                        "FROM pg_stat_user_tables").fetchall())
            stale = [t for t in REGISTRY_TABLES if after[t] <= before.get(t, 0)]
            assert not stale
            vacuumed = dict(db.execute_sql("SELECT relname, vacuum_count "
                                           "FROM pg_stat_user_tables").fetchall())
            assert all(vacuumed[t] > vacuums.get(t, 0) for t in ("blocking_key",
                                                                  "patient_link")), vacuumed
            keys = [k for (k,) in db.execute_sql(
                "SELECT key FROM blocking_key ORDER BY patient_pk, key LIMIT 12").fetchall()]
            plan = "\n".join(line for (line,) in db.execute_sql(
                "EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF) " + KEY_ROWS_SQL,
                (keys, 2000)).fetchall())
            assert "Seq Scan on patient_link" not in plan, plan
            assert "Index Only Scan using blocking_key_pkey" in plan, plan
            assert "Index Only Scan using patient_link_patient_pk_person_pk" in plan, plan
            assert re.findall(r"Heap Fetches: (\d+)", plan) == ["0", "0"], plan
        # A further import into the registry, now with statistics, analyzes once, at its
        # end: 1,500 records do not double 31,500 (counted from the run's own records,
        # it analyzed after 1,000 of them as well).
        _write(tmp_path / "more.csv", HEADER, [[f"t{r[0]}", *r[1:]] for r in rows])
        _import(tmp_path, env, "more.csv")
        with db.connection_context():
            again = dict(db.execute_sql("SELECT relname, analyze_count "
                                        "FROM pg_stat_user_tables").fetchall())
            assert again["patient_link"] == after["patient_link"] + 1
    finally:
        with db.connection_context():
            for table in REGISTRY_TABLES:
                db.execute_sql(f'ALTER TABLE "{table}" RESET (autovacuum_enabled)')
        close_database(db)


def _people_with_duplicates(count: int, seed: int) -> list[list[str]]:
    """Rows of ``count`` people, a third of them registered again with a typo or a
    nickname, shuffled: records that link, to earlier batches and within their own."""
    import random

    rng = random.Random(seed)
    given = ["William", "Bill", "Maria", "Mary", "John", "Jon", "Ann", "Anna", "Chen"]
    rows = []
    for n in range(count):
        born = f"19{rng.randrange(30, 99)}-{rng.randrange(1, 13):02d}-{rng.randrange(1, 29):02d}"
        person = [rng.choice(given), f"Fam{rng.randrange(count // 3)}", born,
                  rng.choice("mf"), f"{n} Main St", "Peoria", f"6{rng.randrange(1000, 1100)}",
                  f"{rng.randrange(10**8, 10**9)}" if rng.random() < 0.5 else ""]
        rows.append(person)
        if rng.random() < 0.33:
            again = list(person)
            again[0 if rng.random() < 0.5 else 4] += "e"
            rows.append(again)
    rng.shuffle(rows)
    return [[f"d{i}", "", *r[:7], r[7], ""] for i, r in enumerate(rows)]


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_import_workers_decide_as_one_process(database_url: str, tmp_path: Path):
    """``--workers 2`` (the default on PostgreSQL) inserts a batch while the one before
    is linked, and links each batch only once the one before is committed: the persons
    come out exactly as one process makes them, batch after batch, and so do the links'
    probabilities and the audit trail."""
    from mpi.config import parse_database_url
    from mpi.storage.db import close_database, database_for
    from tests.conftest import _clean

    _write(tmp_path / "people.csv", HEADER, _people_with_duplicates(900, seed=4))
    env = {**os.environ, "DATABASE_URL": database_url, "LOG_LEVEL": "WARNING",
           "SEARCH_INDEX_PATH": str(tmp_path / "index")}
    env.pop("MATCHING_MODEL_PATH", None)
    db = database_for(parse_database_url(database_url), max_connections=1)
    outcomes = []
    try:
        for workers in ("1", "2", "3"):
            with db.connection_context():
                _clean(db)
            done = subprocess.run(
                [sys.executable, "-m", "mpi", "import", "people.csv", "--no-progress",
                 "--batch", "50", "--source", "ehr", "--workers", workers],
                cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
            assert done.returncode == 0, done.stdout + done.stderr
            assert "imported 1" in done.stdout
            with db.connection_context():
                persons: dict[str, set[str]] = {}
                for record, person, probability in db.execute_sql(
                        "SELECT p.source_id, ps.id, l.probability FROM patient p "
                        "JOIN patient_link l ON l.patient_pk = p.pk "
                        "JOIN person ps ON ps.pk = l.person_pk").fetchall():
                    persons.setdefault(str(person), set()).add(f"{record}:{probability}")
                audit = db.execute_sql("SELECT action, count(*) FROM audit_event "
                                       "GROUP BY action ORDER BY action").fetchall()
                reviews = db.execute_sql("SELECT kind, count(*) FROM review_item "
                                         "GROUP BY kind ORDER BY kind").fetchall()
            outcomes.append(({frozenset(v) for v in persons.values()}, audit, reviews))
    finally:
        close_database(db)
    one = outcomes[0]
    assert len(one[0]) < sum(len(p) for p in one[0])  # records did link
    assert outcomes[1] == one
    assert outcomes[2] == one


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_import_workers_end_on_a_malformed_line_with_the_batches_before_it(
        database_url: str, tmp_path: Path):
    """A repeated record_id further on stops the import (exit 2, the line named); the
    batches the workers had already been sent are committed, as one process commits
    them before it reads on, and the import ends. (A turn nobody reads, carrying a
    recount's value counts, kept a worker from exiting after an import of 3,500
    records into an empty registry; the counts of this small file fit the pipe.)"""
    from mpi.config import parse_database_url
    from mpi.storage.db import close_database, database_for

    rows = _people_with_duplicates(900, seed=4)
    _write(tmp_path / "people.csv", HEADER, [*rows, rows[0]])
    env = {**os.environ, "DATABASE_URL": database_url, "LOG_LEVEL": "WARNING",
           "SEARCH_INDEX_PATH": str(tmp_path / "index")}
    done = subprocess.run(
        [sys.executable, "-m", "mpi", "import", "people.csv", "--no-progress",
         "--batch", "100", "--source", "ehr", "--workers", "2"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"line {len(rows) + 2}" in done.stderr
    db = database_for(parse_database_url(database_url), max_connections=1)
    try:
        with db.connection_context():
            (count,) = db.execute_sql("SELECT count(*) FROM patient").fetchone()
    finally:
        close_database(db)
    assert count == len(rows) // 100 * 100


def test_import_workers_need_postgresql(files: Path):
    """SQLite has one writer: more than one worker is refused, naming the option."""
    done = mpi(files, "mpi import patients.csv --workers 2", expect=2)
    assert "--workers" in done.stderr


def test_an_import_serves_its_metrics_while_it_runs(files: Path, monkeypatch):
    """``--metrics-port``: a scraper sees records/s as the rate of mpi_import_records_total
    (run in this process, so that its metrics server can be scraped afterwards)."""
    import socket
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    from mpi.cli import main

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.chdir(files)
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{files}/mpi.db")
    monkeypatch.setenv("LOG_LEVEL", "WARNING")
    monkeypatch.delenv("MATCHING_MODEL_PATH", raising=False)

    def imported() -> dict[str, float]:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
        return {s.labels["outcome"]: s.value
                for f in text_string_to_metric_families(text) for s in f.samples
                if s.name == "mpi_import_records_total"}

    assert main(["import", "patients.csv", "--source", "lab-system", "--no-progress",
                 "--metrics-port", str(port)]) == 0
    first = imported()
    assert main(["import", "legacy.csv", "--source", "legacy", "--no-progress",
                 "--map", "given_name=first,family_name=surname"]) == 1
    second = imported()
    assert second["created"] - first.get("created", 0) == 3
    assert second["rejected"] - first.get("rejected", 0) == 1
