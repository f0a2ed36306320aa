"""Field types that behave the same on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from typing import Any

import peewee


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


class EncodedJSON(str):
    """JSON already in canonical text: stored as is (one value written to several rows
    is encoded once)."""

    @classmethod
    def of(cls, value: Any) -> EncodedJSON:
        return cls(canonical_json(value))


class JSONTextField(peewee.TextField):
    """JSON kept as canonical text (sorted keys, no spaces): portable and diffable."""

    def db_value(self, value: Any) -> str | None:
        if value is None:
            return None
        if isinstance(value, EncodedJSON):
            return str(value)
        return canonical_json(value)

    def python_value(self, value: Any) -> Any:
        if value is None:
            return None
        return json.loads(value)
