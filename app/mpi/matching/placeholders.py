"""Placeholder values: what clerks type when they do not know, treated as missing.

"Resident", "Baby Boy", "Lady of the House", "Unknown", postal code 00000, SSN
000-00-0000: such values agree between strangers and disagree between a person's own
records, so as evidence they link the wrong people (and trip the twin guard) and split
the right ones. :func:`mpi.matching.record.prepare` blanks them, so scoring, blocking,
training, the batch tools and the service all treat them as absent, alike.

The list ships in ``placeholders.json`` (this package) and is replaced as a whole by
the file named in MATCHING_PLACEHOLDERS_PATH (same shape; ``mpi`` loads it at start-up
and validates it). SSNs are also refused by rule, whatever the list: no SSN has area
000, 666 or 900-999, group 00 or serial 0000.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any


class PlaceholderError(ValueError):
    """A placeholder file that cannot be used; the message says why."""


FIELDS = ("name", "full_name", "address", "city", "postal_code", "phone", "ssn")


@dataclass(frozen=True)
class Placeholders:
    name: frozenset[str] = frozenset()
    full_name: frozenset[str] = frozenset()
    address: frozenset[str] = frozenset()
    city: frozenset[str] = frozenset()
    postal_code: frozenset[str] = frozenset()
    phone: frozenset[str] = frozenset()
    ssn: frozenset[str] = frozenset()

    @classmethod
    def from_dict(cls, data: Any) -> Placeholders:
        """From the JSON shape; ValueError naming what is wrong."""
        from mpi.matching.record import digits, normalise_text

        if not isinstance(data, dict):
            raise ValueError("the placeholder file must hold a JSON object")
        unknown = sorted(k for k in data if k not in FIELDS and not k.startswith("_"))
        if unknown:
            raise ValueError(f"unknown placeholder field(s) {', '.join(unknown)}; "
                             f"known: {', '.join(FIELDS)}")
        values: dict[str, frozenset[str]] = {}
        for field in FIELDS:
            items = data.get(field, [])
            if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
                raise ValueError(f"{field}: must be a list of strings")
            fold = digits if field in ("phone", "ssn") else normalise_text
            values[field] = frozenset(f for f in (fold(i) for i in items) if f)
        values["postal_code"] = frozenset(v.replace(" ", "") for v in values["postal_code"])
        return cls(**values)

    @classmethod
    def load(cls, path: Path) -> Placeholders:
        try:
            return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))
        except json.JSONDecodeError as exc:
            raise ValueError(f"not JSON: {exc.msg} at line {exc.lineno}") from None

    @classmethod
    def shipped(cls) -> Placeholders:
        text = resources.files("mpi.matching").joinpath("placeholders.json").read_text("utf-8")
        return cls.from_dict(json.loads(text))


def impossible_ssn(ssn: str) -> bool:
    """Nine digits no SSN has (area 000, 666 or 9xx; group 00; serial 0000)."""
    if len(ssn) != 9:
        return False
    area, group, serial = ssn[:3], ssn[3:5], ssn[5:]
    return area in ("000", "666") or area[0] == "9" or group == "00" or serial == "0000"


def is_placeholder_ssn(ssn: str, listed: Placeholders) -> bool:
    """An SSN (digits) that is no evidence: listed, or one no SSN can be."""
    return ssn in listed.ssn or impossible_ssn(ssn)


_active: Placeholders | None = None


def active() -> Placeholders:
    """The placeholders in force (the shipped list until :func:`use` says otherwise)."""
    global _active
    if _active is None:
        _active = Placeholders.shipped()
    return _active


def use(placeholders: Placeholders | None) -> None:
    """Put ``placeholders`` in force for this process (None: the shipped list)."""
    global _active
    _active = placeholders
