"""Field types that behave the same on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from typing import Any

import peewee


class JSONTextField(peewee.TextField):
    """JSON kept as canonical text (sorted keys, no spaces): portable and diffable."""

    def db_value(self, value: Any) -> str | None:
        if value is None:
            return None
        return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)

    def python_value(self, value: Any) -> Any:
        if value is None:
            return None
        return json.loads(value)
