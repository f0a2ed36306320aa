"""Migration 0003's frozen key function gives the keys the live one gave when 0003 shipped.

``migration_0003_keys.json`` holds matching forms (as ``patient_link.match_data`` stores
them) and the blocking keys the live code (``MatchingEngine.keys``, the online path)
gave for them at the commit that froze 0003. The test compares the migration against that
file, never against the live code: the live key function is free to change, the
migration is not.

The file was written once by running this module (``python -m
tests.storage.test_migration_0003_keys``) at that commit. Do not run it again after the
live key function has changed: it would record the new function, not 0003's.
"""

from __future__ import annotations

import importlib
import json
import random
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

GOLDEN = Path(__file__).with_name("migration_0003_keys.json")


def frozen_keys() -> Callable[[dict[str, Any]], list[str]]:
    module = importlib.import_module("mpi.migrations.0003_ssn_blocking_keys")
    return module.blocking_keys  # type: ignore[no-any-return]


def load_cases() -> list[dict[str, Any]]:
    return json.loads(GOLDEN.read_text(encoding="utf-8"))["cases"]  # type: ignore[no-any-return]


def dump(cases: list[dict[str, Any]]) -> str:
    """Canonical text of the golden file: sorted keys, one case per line."""
    lines = [json.dumps(c, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
             for c in cases]
    return '{"cases":[\n' + ",\n".join(lines) + "\n]}\n"


def test_frozen_keys_equal_the_golden_keys() -> None:
    keys = frozen_keys()
    cases = load_cases()
    wrong = [(c["data"], keys(c["data"]), c["keys"]) for c in cases
             if keys(c["data"]) != c["keys"]]
    assert not wrong, f"{len(wrong)} of {len(cases)} differ, first: {wrong[0]}"


def test_golden_file_is_canonical_and_covers_every_kind_of_key() -> None:
    cases = load_cases()
    assert GOLDEN.read_text(encoding="utf-8") == dump(cases)
    assert len(cases) >= 200
    assert len({json.dumps(c["data"], sort_keys=True) for c in cases}) == len(cases)
    kinds = {k.split(":", 1)[0] for c in cases for k in c["keys"] if ":" in k}
    assert kinds == {"d", "g", "n", "p", "a", "s01", "s02", "s12", "t", "i"}
    assert any("#" in k for c in cases for k in c["keys"])  # long keys hashed
    assert any(c["keys"] == [] for c in cases)
    # the cut into six of a name's canonical forms
    assert any(sum(k.startswith("g:") for k in c["keys"]) == 6 for c in cases)


# --- how the golden file was made (once; see the module docstring) ----------------------

GIVEN = ["Ada", "Bill", "William", "BILL", "bill", "Bob", "Robert", "Liz", "Elizabeth",
         "Peggy", "Margaret", "Dick", "Richard", "Kate", "Al", "Chris", "Ed", "Jo", "Fred",
         "Tony", "Élodie", "José", "Jean-Luc", "Mary Ann", "Anne-Marie", "Zoë", "Søren",
         "Björn", "Ștefan", "Łukasz", "Chloé", "Ngozi", "Xi", "O'Neil", "D'Arcy",
         "X Æ A-12", "Jo3", "  Ada  ", "Ñandú", "ﬁona", "Straße", "", None]
FAMILY = ["Obi", "Smith", "Smyth", "O'Brien", "García Márquez", "Smith-Jones",
          "van der Berg", "Ødegård", "Nguyễn", "Straße", "MacDonald", "McDonald",
          "D'Angelo", "Łódź", "Li", "Lee", "Müller", "Mueller", "Smith2", "Ó Súilleabháin",
          "al-Rashid", "Kowalczyk", "  ", "", None]
MIDDLE = ["Ann", "Marie Claire", "J.", "", None]
POSTCODES = ["02139", "02139-4307", "02193", "SW1A 1AA", "sw1a1aa", "H0H 0H0", " 12345 ",
             "75008", "1010", "D02 X285", "", None]
PHONES = ["+1 (617) 555-0199", "617.555.0199", "555-0199", "12345", "0044 20 7946 0958",
          "+44 20 7946 0958 ext 12", "", None]
SSNS = ["123-45-6789", "123456789", "123 45 6789", "132-45-6789", "000-00-0000",
        "111111111", "12345", "123456", "078-05-1120", "SSN: 219-09-9999", "1234567890",
        "", None]
SYSTEMS = ["http://hospital.example/mrn", "urn:oid:1.2.36.146.595.217.0.1", " MRN ",
           "https://example.org/" + "a-very-long-identifier-system/" * 2]
VALUES = ["MRN-001", " mrn-001 ", "A1b2C3", "Ω-42", "x" * 70]


def _date(rng: random.Random) -> str | None:
    roll = rng.random()
    if roll < 0.1:
        return None
    year = rng.randint(1900, 2025)
    if roll < 0.2:  # day and month alike, or swappable
        day = rng.randint(1, 12)
        return f"{year:04d}-{rng.choice([day, rng.randint(1, 12)]):02d}-{day:02d}"
    return f"{year:04d}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"


def generated(count: int = 200, seed: int = 13) -> list[dict[str, Any]]:
    """Matching forms in the shape ``mpi.identity.records.match_data`` gives."""
    rng = random.Random(seed)
    forms = []
    for i in range(count):
        identifiers = [[rng.choice(SYSTEMS), rng.choice(VALUES)]
                       for _ in range(rng.choice([0, 0, 1, 2]))]
        forms.append({
            "record_id": f"r{i}", "source": rng.choice(["ehr", "lab", None]),
            "given_name": rng.choice(GIVEN), "middle_name": rng.choice(MIDDLE),
            "family_name": rng.choice(FAMILY), "birth_date": _date(rng),
            "sex": rng.choice(["m", "f", None]),
            "address_line": rng.choice(["1 Main St", "Flat 2, 10 Rue de l'Église", None]),
            "city": rng.choice(["Boston", "Zürich", None]),
            "state": rng.choice(["MA", "ZH", None]),
            "postal_code": rng.choice(POSTCODES), "phone": rng.choice(PHONES),
            "ssn": rng.choice(SSNS), "identifiers": identifiers})
    return forms


def edge_cases() -> list[dict[str, Any]]:
    empty: dict[str, Any] = {
        "record_id": "", "source": None, "given_name": None, "middle_name": None,
        "family_name": None, "birth_date": None, "sex": None, "address_line": None,
        "city": None, "state": None, "postal_code": None, "phone": None, "ssn": None,
        "identifiers": []}
    full = {**empty, "record_id": "e", "source": "ehr", "given_name": "Ada",
            "family_name": "Obi", "birth_date": "1980-05-07", "postal_code": "02139",
            "phone": "617-555-0199", "ssn": "123-45-6789",
            "identifiers": [["http://hospital.example/mrn", "MRN-001"]]}
    only_ssn = {**empty, "record_id": "s", "ssn": "123-45-6789"}
    changes: list[dict[str, Any]] = [
        {"ssn": "987654321"}, {"ssn": "999-99-9999"}, {"ssn": "12345"}, {"ssn": "123456"},
        {"ssn": "12345678901"}, {"birth_date": "1980-07-05"}, {"birth_date": "1980-05-05"},
        {"birth_date": "2000-02-29"}, {"birth_date": None}, {"postal_code": None},
        {"postal_code": "93120"}, {"given_name": "Chris"}, {"given_name": "Al"},
        {"given_name": "Bill", "family_name": "Williams"},
        {"given_name": "Obi", "family_name": "Ada"},
        {"given_name": "Ada", "family_name": None}, {"given_name": None},
        {"given_name": "Q" * 70}, {"family_name": "Ngozi-Obi Okafor"},
        {"given_name": "Mary Ann"}, {"given_name": "José", "family_name": "Núñez"},
        {"given_name": "4da", "family_name": "0bi"}, {"phone": "555 01"},
        {"phone": "00 1 617 555 0199 99"},
        {"identifiers": [["MRN", "a1"], ["mrn", " A1 "], [" Mrn", "b2"]]},
        {"identifiers": [["http://hospital.example/mrn", "x" * 80]]},
        {"given_name": None, "family_name": None, "birth_date": None, "postal_code": None,
         "phone": None, "ssn": None, "identifiers": [["MRN", "only-identifier"]]},
    ]
    return [empty, full, only_ssn] + [{**full, **change} for change in changes]


def _write() -> None:  # pragma: no cover - run by hand, once
    from mpi.identity.engine import MatchingEngine
    from mpi.matching.model import Model

    engine = MatchingEngine(Model.default())
    forms = generated() + edge_cases()
    cases = [{"data": data, "keys": engine.keys(data)} for data in forms]
    GOLDEN.write_text(dump(cases), encoding="utf-8")
    print(f"wrote {len(cases)} cases to {GOLDEN}", file=sys.stderr)


if __name__ == "__main__":
    _write()
