"""The steward benchmark's premise and its table: each generated pair is one open review."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path

from bench import steward


def test_every_twin_pair_becomes_one_open_review(tmp_path: Path):
    rows = steward.twin_pairs(200)
    assert len(rows) == 400 and rows[:2] == steward.twin_pairs(1)  # deterministic
    assert {r["source"] for r in rows} == {"ehr", "walk-in", "lab"}
    path = tmp_path / "pairs.csv"
    steward.write_pairs(path, rows)
    env = {**os.environ, "DATABASE_URL": f"sqlite:///{tmp_path}/mpi.db", "LOG_LEVEL": "WARNING"}
    env.pop("MATCHING_MODEL_PATH", None)
    for argv in (["migrate"], ["import", str(path), "--no-progress"]):
        subprocess.run([sys.executable, "-m", "mpi", *argv], cwd=tmp_path, env=env,
                       check=True, capture_output=True, timeout=300)
    with closing(sqlite3.connect(tmp_path / "mpi.db")) as db:
        (open_reviews,) = db.execute(
            "SELECT count(*) FROM review_item WHERE status = 'open' AND kind = "
            "'possible_match'").fetchone()
        (persons,) = db.execute("SELECT count(DISTINCT person_pk) FROM patient_link").fetchone()
    assert open_reviews == 200 and persons == 400  # none linked on score alone


def test_the_table_names_each_figure():
    page = {"p50_ms": 20.0, "p95_ms": 30.0, "bytes": 9000, "p50_vs_json_api": 1.5}
    report = {"open_reviews": 10_000, "import_s": 30.0,
              "pages": {"queue page (/ui/reviews)": page},
              "metrics": {"idle": page, "under_load": page, "load_rps": 400.0,
                          "load_connections": 4, "p50_under_load_vs_idle": 1.0}}
    table = steward.format_table(report)
    assert "10000 open reviews" in table and "queue page" in table
    assert "GET /metrics, under load" in table and "400.0 req/s" in table
