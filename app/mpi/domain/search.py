"""Patient search as ``GET /api/v1/patients/search`` answers it."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

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
    index_cursor: str | None = Field(
        default=None, description="The last change-log event the index holds")
    index_complete: bool = Field(
        default=True, description="false: the index did not yet hold every committed change "
        "when it answered, so a record may be missing from these results (search again, or "
        "look the patient up by identifier, before registering a new one)")
    index_behind_events: int = Field(
        default=0, description="Change-log events the index did not hold yet (at most)")
    index_behind_seconds: float | None = Field(
        default=None, description="Age of the oldest change the index did not hold yet")
    served_by: Literal["index", "database"] = Field(
        default="index", description="database: the search index could not answer (being "
        "built or rebuilt), so the database did, with exact matches only (an identifier "
        "value as stored, family name, birth date, source); index_complete is then false "
        "and scores are 0")
