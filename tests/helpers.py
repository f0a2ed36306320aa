"""Test data builders."""

from __future__ import annotations

import copy
from typing import Any

SSN = "urn:oid:2.16.840.1.113883.4.1"
MRN = "urn:oid:1.2.36.146.595.217.0.1"

JOHN: dict[str, Any] = {
    "source": "st-marys-ehr",
    "source_id": "A-1001",
    "names": [{"use": "official", "family": "Smith", "given": ["John", "Paul"]}],
    "gender": "male",
    "birth_date": "1980-05-17",
    "identifiers": [{"system": SSN, "value": "123-45-6789", "type": "SS"}],
    "addresses": [{"line": ["12 High St"], "city": "Springfield", "state": "IL",
                   "postal_code": "62701", "country": "US"}],
    "telecom": [{"system": "phone", "value": "+1-217-555-0100", "use": "home"}],
}


def patient(**changes: Any) -> dict[str, Any]:
    """JOHN with top-level fields replaced (None removes a field)."""
    body = copy.deepcopy(JOHN)
    for key, value in changes.items():
        if value is None:
            body.pop(key, None)
        else:
            body[key] = value
    return body
