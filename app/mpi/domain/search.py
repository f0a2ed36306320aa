"""Patient search as ``GET /api/v1/patients/search`` answers it."""

from __future__ import annotations

from pydantic import BaseModel

from mpi.domain.patient import Patient


class SearchHit(BaseModel):
    score: float
    person_id: str | None = None
    patient: Patient


class SearchPage(BaseModel):
    items: list[SearchHit]
    total: int
    offset: int
    limit: int
    next_offset: int | None = None
    index_cursor: str | None = None
