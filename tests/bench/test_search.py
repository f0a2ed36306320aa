"""The search benchmark's pure parts: synthetic data, the searches drawn from it, the table."""

from __future__ import annotations

from bench import search as searchbench


def test_synthetic_patients_are_valid_and_identifiers_unique():
    rows = list(searchbench.synthetic_patients(25_000, seed=3))
    assert len({r["ssn"] for r in rows}) == len(rows)
    assert len({r["source_id"] for r in rows}) == len(rows)
    assert all(r["family"] and r["given"] for r in rows)
    assert rows[:3] == list(searchbench.synthetic_patients(3, seed=3))  # deterministic


def test_typical_searches_cover_every_sql_comparison():
    rows = list(searchbench.synthetic_patients(100))
    searches = searchbench.typical_searches(rows, 10)
    assert set(searchbench.SQL) <= set(searches)
    assert all(len(items) == 10 for items in searches.values())
    from mpi.search.query import Options, Shortcuts, build

    for items in searches.values():
        for s in items:  # every generated search parses
            build(s.get("q"), Shortcuts(name=s.get("name"), birth_year=int(s["birth_year"])
                                        if s.get("birth_year") else None), Options())


def test_table_lists_every_kind():
    stats = {"p50_ms": 1.0, "p99_ms": 2.0}
    report = {
        "patients": 10,
        "index_build": {"seconds": 1.0, "patients_per_s": 10.0, "bytes": 1e6, "processes": 2},
        "index_build_one_process": {"seconds": 1.8, "patients_per_s": 5.6, "bytes": 1e6,
                                    "processes": 1},
        "search_index": {"identifier": stats}, "search_service": {"identifier": stats},
        "search_sql": {"identifier": {"method": "equality (btree)", **stats}},
        "write_to_searchable": [{"writers": 2, "concurrent_writes_per_s": 5.0, "p50_ms": 200,
                                 "p99_ms": 300, "max_ms": 310, "n": 3, "missed": 0}],
    }
    table = searchbench.format_table(report)
    assert "identifier" in table and "equality (btree)" in table and "p99 300 ms" in table
    assert "2 processes" in table and "1.80x" in table
    assert "while the index merges" not in table
    report["write_to_searchable_while_merging"] = {
        "p50_ms": 700, "p99_ms": 1200, "max_ms": 1250, "n": 30, "missed": 0,
        "segments_at_start": 13, "merges": [{"segments": 10, "seconds": 36.4,
                                             "documents": 17047}]}
    table = searchbench.format_table(report)
    assert ("while the index merges (from 13 segments): p50 700 ms, p99 1200 ms, "
            "max 1250 ms over 30 probes (0 missed); merges: 10 segments in 36.4 s") in table


def test_writer_counts_parse():
    assert searchbench.parse_args(["--writers", "1,4"]).writers == [1, 4]
    assert searchbench.parse_args([]).merge_probes == 30
    assert searchbench.parse_args(["--merge-probes", "0"]).merge_probes == 0


def test_catch_up_is_measured_on_a_copy_behind_by_the_records_created(settings, db, tmp_path):
    """The catch-up scenario: records registered through the service's import path after
    the index was built, then a copy of the index caught up by one indexer; the copy ends
    holding them, the original stays where it was."""
    from mpi.search.index import WhooshSearchIndex
    from mpi.search.indexer import build_generation
    from mpi.search.query import parse
    from mpi.search.store import IndexDirectory
    from mpi.storage.db import connection

    root = tmp_path / "index"
    with connection(db):
        build_generation(db, IndexDirectory(root))
    result = searchbench.measure_catch_up(settings, db, root, tmp_path / "behind", 30, seed=1)
    assert result["patients"] == 30 and result["events"] >= 60  # created and linked
    assert result["patients_per_s"] > 0 and result["segments_after"] >= 1
    # where the indexer's steps spent the time, from its own debug log of each step
    steps = result["steps"]
    assert steps["steps"] >= 1 and steps["documents_s"] >= 0 and steps["merges"] == []
    assert set(steps) == {"steps", "merges", "read_s", "documents_s", "child_wait_s",
                          "commit_s", "merge_s"}
    readers = [WhooshSearchIndex(root), WhooshSearchIndex(tmp_path / "behind")]
    try:
        found = [r.search(parse("source:bench-catch-up"), offset=0, limit=100).hits
                 for r in readers]
    finally:
        for r in readers:
            r.close()
    assert (len(found[0]), len(found[1])) == (0, 30)
    report = {"patients": 10, "search_index": {}, "search_service": {}, "search_sql": {},
              "index_build": {"seconds": 1.0, "patients_per_s": 10.0, "bytes": 1e6,
                              "processes": 2},
              "index_build_one_process": {"seconds": 1.8, "patients_per_s": 5.6,
                                          "bytes": 1e6, "processes": 1},
              "index_catch_up": {**result, "ratio_to_build": 0.8,
                                 "ratio_to_build_one_process": 1.5}}
    table = searchbench.format_table(report)
    assert "catching up 30 records created behind the index" in table
    assert "0.8x the build above, 1.5x a one-process build" in table
    assert f"its {steps['steps']} steps: reading" in table


def test_the_catch_up_process_fails_loudly_without_an_index(settings, tmp_path):
    """measure_catch_up's process exits non-zero, saying why, when it has no index to
    catch up (measure_catch_up then raises with its error instead of waiting)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from bench.api import server_env

    done = subprocess.run([sys.executable, "-m", "bench.search", "--catch-up-index",
                           str(tmp_path / "nothing")],
                          env=server_env(os.environ, settings.database_url, 8080),
                          cwd=Path(searchbench.__file__).resolve().parent.parent,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode != 0 and done.stdout == ""
    assert "the index to catch up did not open" in done.stderr
