"""``mpi dedupe | link | train | blocking report``: matching from the command line.

Registered on the main parser by :func:`register`; imports nothing from the database or
HTTP layers. ``run_train`` takes any iterable of records, so training from the database
is one more source plugged into the same function.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mpi.matching.model import Model
    from mpi.matching.record import MatchRecord

EXIT_OK = 0
EXIT_INPUT = 2


def _progress(args: argparse.Namespace) -> Any:
    from tqdm import tqdm

    def wrap(items: Iterable[Any], label: str, total: int) -> Iterable[Any]:
        return tqdm(items, desc=label, total=total or None, file=sys.stderr, unit="rec",
                    disable=args.no_progress, leave=False)
    return wrap


def _model(args: argparse.Namespace) -> Model:
    from mpi.matching.model import Model

    return Model.load(args.model) if args.model else Model.default()


def _records(path: str, args: argparse.Namespace) -> list[MatchRecord]:
    """The CSV's records; the values dropped from them (bad dates, ...) said on stderr."""
    from mpi.matching.csvio import BadValues, parse_mapping, read_records

    _use_placeholders(args)
    bad = BadValues()
    records = list(read_records(path, parse_mapping(args.map), bad=bad))
    for line in bad.summary(path):
        print(line, file=sys.stderr)
    return records


def _use_placeholders(args: argparse.Namespace) -> None:
    """The placeholder list: --placeholders, else MATCHING_PLACEHOLDERS_PATH, else the
    shipped one (as the service does)."""
    import os

    from mpi.matching import placeholders

    path = getattr(args, "placeholders", None) or os.environ.get(
        "MATCHING_PLACEHOLDERS_PATH", "").strip()
    if path:
        try:
            placeholders.use(placeholders.Placeholders.load(Path(path)))
        except (OSError, ValueError) as exc:
            raise placeholders.PlaceholderError(f"{path}: {exc}") from None


def cmd_dedupe(args: argparse.Namespace) -> int:
    from mpi.matching.batch import dedupe
    from mpi.matching.csvio import write_rows

    model = _model(args)
    result = dedupe(_records(args.file, args), model, link_threshold=args.threshold,
                    review_threshold=args.review_threshold,
                    auto_merge=not args.no_auto_merge, twin_guard=not args.no_twin_guard,
                    progress=_progress(args))
    write_rows(args.output, ("record_id", "cluster_id"), sorted(result.clusters.items()))
    clusters = len(set(result.clusters.values()))
    d = result.decisions
    print(f"{len(result.clusters)} records -> {clusters} clusters (model {model.version}); "
          f"link {d['link']}, review {d['review']} (kept apart; {result.possible_twins} "
          f"possible twins), new {d['new']}; "
          f"{result.possible_duplicates} possible duplicate(s), "
          f"{result.merged_persons} persons merged (a record proved them one); "
          f"{result.pairs_scored} pairs scored", file=sys.stderr)
    return EXIT_OK


def cmd_link(args: argparse.Namespace) -> int:
    from mpi.matching.batch import LinkPair, link
    from mpi.matching.csvio import write_rows

    model = _model(args)
    result = link(_records(args.left, args), _records(args.right, args), model,
                  threshold=args.threshold, one_to_one=not args.many_to_many,
                  twin_guard=not args.no_twin_guard, progress=_progress(args))
    header = ("left_id", "right_id", "probability", "match_weight", "reason")

    def rows(pairs: list[LinkPair]) -> Iterator[tuple[str, ...]]:
        return ((p.left_id, p.right_id, f"{p.probability:.6f}", f"{p.weight:.3f}", p.reason)
                for p in pairs)

    write_rows(args.output, header, rows(result.pairs))
    if args.reviews:
        write_rows(args.reviews, header, rows(result.held))
    print(f"{len(result.pairs)} pairs at probability >= {args.threshold} (model "
          f"{model.version}); {len(result.held)} held for review as possible twins or "
          f"relatives{f' ({args.reviews})' if args.reviews else ''}", file=sys.stderr)
    return EXIT_OK


def run_train(records: Iterable[MatchRecord], output: str | Path, *, name: str,
              base: Model, u_pairs: int, term_frequencies: bool) -> Model:
    """Train from any record source (CSV today, the database later) and save the model."""
    from mpi.matching.training import train

    model = train(records, base=base, name=name, u_pairs=u_pairs,
                  include_term_frequencies=term_frequencies,
                  progress=lambda msg: print(msg, file=sys.stderr))
    model.save(output)
    return model


def cmd_train(args: argparse.Namespace) -> int:
    if args.from_csv:
        records: Iterable[MatchRecord] = _records(args.from_csv, args)
    elif getattr(args, "database_records", None) is not None:
        # The registry's own records; the identity layer plugs this source in.
        records = args.database_records()
    else:
        print("name a CSV with --from-csv (no database source is available)", file=sys.stderr)
        return EXIT_INPUT
    model = run_train(records, args.output,
                      name=args.name, base=_model(args), u_pairs=args.u_pairs,
                      term_frequencies=args.term_frequencies)
    print(f"wrote {args.output}: model {model.version}, prior {model.prior:.3g}",
          file=sys.stderr)
    return EXIT_OK


def read_labels(path: str, column: str, args: argparse.Namespace) -> dict[str, str]:
    from mpi.matching.csvio import CsvError, parse_mapping

    id_column = parse_mapping(args.map).get("record_id", "record_id")
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        if column not in (reader.fieldnames or []):
            raise CsvError(f"{path}: line 1: no column {column!r} for --labels")
        return {row[id_column]: row[column] for row in reader if row.get(column)}


def cmd_blocking_report(args: argparse.Namespace) -> int:
    from mpi.matching.batch import blocking_report

    labels = read_labels(args.file, args.labels, args) if args.labels else None
    report = blocking_report(_records(args.file, args), labels, show_missed=args.show_missed)
    if args.json:
        print(json.dumps(report, sort_keys=True))
    else:
        examples = report.pop("missed_examples", [])
        for key, value in report.items():
            print(f"{key:>22}: {value}")
        for ex in examples:
            print(f"{'missed':>22}: {ex['left']} ({', '.join(ex['left_has'])}) ~ "
                  f"{ex['right']} ({', '.join(ex['right_has'])})")
    return EXIT_OK


def _common(p: argparse.ArgumentParser, model: bool = True) -> None:
    p.add_argument("--map", metavar="FIELD=COLUMN,...",
                   help="read our FIELD from the file's COLUMN (e.g. given_name=first)")
    if model:
        p.add_argument("--model", metavar="JSON", help="model file (default: the shipped one)")
    p.add_argument("--placeholders", metavar="JSON",
                   help="placeholder values treated as missing (default: "
                        "MATCHING_PLACEHOLDERS_PATH, else the shipped list)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")


def register(commands: Any) -> None:
    """Add the matching commands to the ``mpi`` parser's subparsers."""
    dd = commands.add_parser("dedupe", help="cluster the records of one CSV file")
    dd.add_argument("file", metavar="FILE.csv")
    dd.add_argument("--output", required=True, metavar="CLUSTERS.csv",
                    help="written: record_id, cluster_id")
    dd.add_argument("--threshold", type=float, default=0.95, help="link probability (0.95)")
    dd.add_argument("--review-threshold", type=float, default=0.5,
                    help="review probability (0.5, as MATCHING_REVIEW_THRESHOLD); reviews "
                         "are counted, not merged")
    dd.add_argument("--no-auto-merge", action="store_true",
                    help="keep persons a later record proves one apart, as possible "
                         "duplicates (as MATCHING_AUTO_MERGE=false online)")
    dd.add_argument("--no-twin-guard", action="store_true",
                    help="link twin-like pairs (same birth date, different given name, no "
                         "shared SSN) instead of sending them to review; for synthetic data")
    _common(dd)
    dd.set_defaults(run=_guard(cmd_dedupe))

    ln = commands.add_parser("link", help="pair the records of two CSV files")
    ln.add_argument("left", metavar="A.csv")
    ln.add_argument("right", metavar="B.csv")
    ln.add_argument("--output", required=True, metavar="PAIRS.csv",
                    help="written: left_id, right_id, probability, match_weight, reason")
    ln.add_argument("--threshold", type=float, default=0.95, help="probability (0.95)")
    ln.add_argument("--many-to-many", action="store_true",
                    help="keep every pair above the threshold (default: each record once)")
    ln.add_argument("--reviews", metavar="REVIEWS.csv",
                    help="written: the pairs held for review by the twin guard (same columns)")
    ln.add_argument("--no-twin-guard", action="store_true",
                    help="link twin-like pairs (same birth date, different given name, no "
                         "shared SSN) instead of holding them for review; for synthetic data")
    _common(ln)
    ln.set_defaults(run=_guard(cmd_link))

    tr = commands.add_parser("train", help="estimate a new model version (no labels needed)")
    tr.add_argument("--from-csv", metavar="FILE.csv",
                    help="train on this file (default: the live records in DATABASE_URL)")
    tr.add_argument("--output", required=True, metavar="MODEL.json")
    tr.add_argument("--name", default="trained", help="model name (version = name-hash)")
    tr.add_argument("--u-pairs", type=int, default=200_000, help="random pairs for u")
    tr.add_argument("--term-frequencies", action=argparse.BooleanOptionalAction, default=True,
                    help="store the registry's name frequencies in the model, so the service "
                         "and the batch tools weigh a common name less than a rare one "
                         "(default: on; without them, a name only weighs less where it is "
                         "common in the registry, or the file, beyond what the model says)")
    _common(tr)
    tr.set_defaults(run=_guard(cmd_train))

    bl = commands.add_parser("blocking", help="blocking tools")
    bl_commands = bl.add_subparsers(dest="blocking_command", required=True, metavar="COMMAND")
    rep = bl_commands.add_parser("report", help="candidate counts per record from blocking")
    rep.add_argument("file", metavar="FILE.csv")
    rep.add_argument("--labels", metavar="COLUMN",
                     help="column with the true entity: also report pair completeness")
    rep.add_argument("--show-missed", type=int, default=0, metavar="N",
                     help="with --labels: list N true pairs no key brings together, with "
                          "the fields each side has")
    rep.add_argument("--json", action="store_true", help="one JSON object on stdout")
    _common(rep, model=False)
    rep.set_defaults(run=_guard(cmd_blocking_report))


def _guard(command: Any) -> Any:
    """Input problems (bad CSV rows, bad model files) exit 2 with one clear line."""
    def run(args: argparse.Namespace) -> int:
        from mpi.matching.csvio import CsvError
        from mpi.matching.model import ModelError
        from mpi.matching.placeholders import PlaceholderError

        try:
            return int(command(args))
        except (CsvError, ModelError, PlaceholderError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_INPUT
        except FileNotFoundError as exc:
            print(f"error: {exc.filename}: no such file", file=sys.stderr)
            return EXIT_INPUT
    return run
