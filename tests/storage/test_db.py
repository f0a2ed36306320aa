"""Database helpers (both backends)."""

from __future__ import annotations

import uuid
from datetime import datetime

from mpi.storage.db import analyze, planned_rows
from mpi.storage.models import PersonRow

NOW = datetime(2026, 1, 1, 12, 0)


def test_planned_rows_are_what_the_statistics_know(db):
    PersonRow.insert_many([{"id": uuid.uuid4(), "created_at": NOW, "updated_at": NOW}
                           for _ in range(40)]).execute()
    assert planned_rows(db, "person") == 0  # loaded, never analyzed
    analyze(db, ["person"])
    assert planned_rows(db, "person") == 40
