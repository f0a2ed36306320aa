"""The identity and matching commands exactly as DEPLOY.md shows them, on a small registry."""

from __future__ import annotations

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


def mpi(cwd: Path, line: str, *, expect: int = 0) -> subprocess.CompletedProcess[str]:
    """Run one documented command line (``mpi ...``) in ``cwd`` on its own SQLite file."""
    argv = line.split()
    assert argv[0] == "mpi"
    env = {**os.environ, "DATABASE_URL": f"sqlite:///{cwd}/mpi.db", "LOG_FORMAT": "text",
           "LOG_LEVEL": "WARNING"}
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
    again = mpi(files, "mpi import patients.csv --source lab-system")
    assert "imported 0 record(s), skipped 4 already present" in again.stdout
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
