"""Small record factories for the matching tests."""

from __future__ import annotations

from datetime import date
from typing import Any

from mpi.matching.record import MatchRecord, PreparedRecord, prepare

BASE: dict[str, Any] = {
    "given_name": "William", "family_name": "Okonkwo", "birth_date": date(1980, 5, 17),
    "sex": "male", "address_line": "12 Harbour Street", "city": "Springfield", "state": "MA",
    "postal_code": "01109", "phone": "+1 (413) 555-0101", "ssn": "123-45-6789",
}


def rec(record_id: str = "r1", **changes: Any) -> MatchRecord:
    return MatchRecord(record_id, **{**BASE, **changes})


def prep(record_id: str = "r1", **changes: Any) -> PreparedRecord:
    return prepare(rec(record_id, **changes))
