"""Steward pages and metrics benchmark (``nox -s bench -- steward``).

    python -m bench.steward [--reviews N] [--samples N] [--connections N] [--json PATH]

On a throwaway PostgreSQL, ``mpi import`` loads N twin-like pairs (default 10,000: the same
family name, birth date, address and phone, another given name, no identifier), which the
engine never links on score alone: N open reviews. Then, against ``mpi serve`` with its
default workers:

- **queue page load**: ``GET /ui/reviews`` (the first 50 of N, counted), a filtered queue
  (one source, high scores) and one review's page, each timed ``--samples`` times
  sequentially, next to the JSON API's first page of the same queue
  (``GET /api/v1/reviews``) measured in the same run: the ratio is the figure to compare;
  and, where Debian's Chromium is installed, the queue page as the browser loads it
  (navigation start to the load event);
- **scrape under load**: ``GET /metrics`` timed idle, then while ``--connections`` load
  processes read patients as fast as they can (the read scenario of ``bench.api``).

Output: a table on stdout and a JSON report (default ``.bench/steward.json``).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import http.client
import json
import os
import random
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.api import (
    HOST,
    READY,
    LoadSpec,
    _analyze,
    _stop_postgres,
    aggregate,
    generate_load,
    machine_info,
    mpi_command,
    percentile,
    running_server,
    server_env,
    wait_for_search,
)
from toolkit import commands
from toolkit.procs import free_port

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_JSON = ROOT / ".bench" / "steward.json"
# Pairs of given names the engine cannot take for a typo or a nickname of each other
# (Mary/Maya, James/John or Ivan/John would be linked, not reviewed).
GIVEN = [("Peter", "John"), ("Ruth", "Grace"), ("Harold", "Wendy"), ("Xavier", "Beatrice"),
         ("Tomas", "Kenji"), ("Lucas", "Sofia")]
SYLLABLES = ["ka", "lo", "mi", "ne", "ra", "to", "vu", "sel", "dor", "bin", "gar", "hol",
             "zen", "pat", "quin", "wex"]


def twin_pairs(pairs: int, seed: int = 7) -> list[dict[str, str]]:
    """``pairs`` twin-like pairs as CSV rows (the first of each from ``ehr``, the second from
    ``walk-in`` or, one in four, ``lab``)."""
    rng = random.Random(seed)
    rows = []
    for n in range(pairs):
        family = "".join(rng.choice(SYLLABLES) for _ in range(3)).title() + f"{n:05d}"[-2:]
        born = f"{rng.randrange(1930, 2015)}-{rng.randrange(1, 13):02d}-{rng.randrange(1, 29):02d}"
        first, second = rng.choice(GIVEN)
        common = {"family_name": family, "birth_date": born, "sex": rng.choice("mf"),
                  "address_line": f"{rng.randrange(1, 999)} {rng.choice(SYLLABLES).title()} St",
                  "city": "Springfield", "postal_code": f"{rng.randrange(10000, 99999)}",
                  "phone": f"217-555-{n % 10000:04d}", "ssn": ""}
        rows.append({"record_id": f"E{n}", "source": "ehr", "given_name": first, **common})
        rows.append({"record_id": f"W{n}", "source": "lab" if n % 4 == 0 else "walk-in",
                     "given_name": second, **common})
    return rows


def write_pairs(path: Path, rows: list[dict[str, str]]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def timed_get(port: int, path: str, samples: int) -> dict[str, Any]:
    """``samples`` sequential GETs of ``path`` (one connection, kept alive): ms figures."""
    times, size, status = [], 0, None
    conn = http.client.HTTPConnection(HOST, port, timeout=60)
    try:
        for _ in range(samples):
            started = time.perf_counter()
            conn.request("GET", path)
            resp = conn.getresponse()
            body = resp.read()
            times.append((time.perf_counter() - started) * 1000)
            status, size = resp.status, len(body)
            if status != 200:
                raise RuntimeError(f"GET {path}: {status} {body[:300]!r}")
    finally:
        conn.close()
    return {"path": path, "samples": samples, "status": status, "bytes": size,
            "p50_ms": round(statistics.median(times), 2),
            "p95_ms": round(percentile(times, 95) or 0.0, 2),
            "max_ms": round(max(times), 2)}


def browser_load(port: int, path: str, samples: int) -> dict[str, Any] | None:
    """The page as a steward's browser loads it: Debian's Chromium (if installed), the
    navigation's duration from the request to the load event (its stylesheet included),
    ``samples`` times; None without Chromium."""
    chromium = "/usr/bin/chromium"
    if not os.access(chromium, os.X_OK):
        return None
    from playwright.sync_api import sync_playwright

    times = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True,
                                    args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            for _ in range(samples + 1):
                page.goto(f"http://{HOST}:{port}{path}", wait_until="load")
                times.append(page.evaluate(
                    "performance.getEntriesByType('navigation')[0].duration"))
        finally:
            browser.close()
    times = times[1:]  # the first load warms the browser's caches
    return {"path": path, "samples": samples, "p50_ms": round(statistics.median(times), 1),
            "p95_ms": round(percentile(times, 95) or 0.0, 1)}


def run(args: argparse.Namespace) -> dict[str, Any]:
    report: dict[str, Any] = {"machine": machine_info(), "reviews_asked": args.reviews,
                              "command": ["python", "-m", "bench.steward", *sys.argv[1:]]}
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="mpi-bench-")))
        from toolkit.postgres import start_postgres

        pg = start_postgres(durable=True)
        stack.callback(_stop_postgres, pg)
        report["postgres"] = pg.description
        port = free_port()
        env = server_env(os.environ, pg.url, port)
        commands.run(mpi_command("migrate"), env=env, cwd=workdir, timeout=120)
        rows = twin_pairs(args.reviews)
        path = workdir / "pairs.csv"
        write_pairs(path, rows)
        print(f"mpi import: {len(rows)} records ...", file=sys.stderr, flush=True)
        started = time.perf_counter()
        commands.run(mpi_command("import", str(path), "--no-progress", "--batch", "1000"),
                     env=env, cwd=workdir, timeout=6 * 3600)
        report["import_s"] = round(time.perf_counter() - started, 1)
        _analyze(pg.url)
        import psycopg

        with psycopg.connect(pg.url) as conn:
            (report["open_reviews"],) = conn.execute(
                "SELECT count(*) FROM review_item WHERE status = 'open'").fetchall()[0]
            (first,) = conn.execute(
                "SELECT id FROM review_item WHERE status = 'open' ORDER BY pk LIMIT 1"
            ).fetchall()[0]
            review_id = str(first)
            ids = [str(i) for (i,) in conn.execute(
                "SELECT id FROM patient ORDER BY random() LIMIT 2000").fetchall()]
        with running_server(mpi_command("serve"), env=env, cwd=workdir,
                            log=workdir / "mpi-server.log", port=port, ready_path=READY):
            wait_for_search(port, len(rows))
            n = args.samples
            for warm in ("/ui/reviews", "/api/v1/reviews", "/metrics"):
                timed_get(port, warm, 3)
            pages = {
                "queue page (/ui/reviews)": timed_get(port, "/ui/reviews", n),
                "filtered queue page": timed_get(
                    port, "/ui/reviews?source=lab&band=high&kind=possible_match", n),
                "a review's page": timed_get(port, f"/ui/reviews/{review_id}", n),
                "JSON API, first page (/api/v1/reviews)": timed_get(port, "/api/v1/reviews", n),
            }
            peer = pages["JSON API, first page (/api/v1/reviews)"]["p50_ms"]
            for figures in pages.values():
                figures["p50_vs_json_api"] = round(figures["p50_ms"] / peer, 2) if peer else None
            report["pages"] = pages
            report["browser"] = browser_load(port, "/ui/reviews", max(n // 2, 5))
            idle = timed_get(port, "/metrics", n)
            # The same scrapes while load processes read patients flat out.
            spec = LoadSpec(kind="read", port=port, duration=args.duration, warmup=2.0,
                            tag=uuid.uuid4().hex[:8], ids=tuple(ids))
            busy: dict[str, Any] = {}

            def scrape_during_load() -> None:
                time.sleep(3.0)  # past the warm-up
                busy.update(timed_get(port, "/metrics", n))

            scraper = threading.Thread(target=scrape_during_load)
            scraper.start()
            workers, _ = generate_load(spec, args.connections)
            scraper.join()
            load = aggregate("GET /api/v1/patients/{id}", workers)
            report["metrics"] = {"idle": idle, "under_load": busy,
                                 "load_rps": round(load.rps, 1),
                                 "load_connections": args.connections,
                                 "p50_under_load_vs_idle": round(
                                     busy["p50_ms"] / idle["p50_ms"], 2)}
    return report


def format_table(report: dict[str, Any]) -> str:
    lines = [f"{report['open_reviews']} open reviews (import {report['import_s']} s)",
             f"{'what':<44} {'p50 ms':>9} {'p95 ms':>9} {'bytes':>8} {'vs JSON':>8}"]
    for name, f in report["pages"].items():
        lines.append(f"{name:<44} {f['p50_ms']:>9} {f['p95_ms']:>9} {f['bytes']:>8} "
                     f"{f['p50_vs_json_api']:>8}")
    if report.get("browser"):
        b = report["browser"]
        lines.append(f"{'queue page in Chromium (request to load event)':<44} {b['p50_ms']:>9} "
                     f"{b['p95_ms']:>9}")
    m = report["metrics"]
    for name in ("idle", "under_load"):
        f = m[name]
        lines.append(f"{'GET /metrics, ' + name.replace('_', ' '):<44} {f['p50_ms']:>9} "
                     f"{f['p95_ms']:>9} {f['bytes']:>8}")
    lines.append(f"(load: {m['load_connections']} connections reading patients at "
                 f"{m['load_rps']} req/s; scrape p50 under load / idle = "
                 f"{m['p50_under_load_vs_idle']})")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.steward")
    parser.add_argument("--reviews", type=int, default=10_000,
                        help="twin-like pairs to load, each an open review (default 10000)")
    parser.add_argument("--samples", type=int, default=50,
                        help="timed requests per page (default 50)")
    parser.add_argument("--connections", type=int, default=4,
                        help="load processes while /metrics is scraped (default 4)")
    parser.add_argument("--duration", type=float, default=15.0,
                        help="seconds of load while /metrics is scraped (default 15)")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    report = run(args)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    print(format_table(report))
    print(f"report: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
