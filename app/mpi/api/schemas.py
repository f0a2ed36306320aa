"""Response bodies that are not domain objects themselves (pages, audit, events, health)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from mpi.domain.identity import UtcDatetime
from mpi.domain.patient import Patient


class Health(BaseModel):
    status: str
    service: str
    version: str
    commit: str | None = None
    checks: dict[str, str] | None = None


class PatientPage(BaseModel):
    items: list[Patient]
    next_cursor: str | None = None


class AuditEntryOut(BaseModel):
    id: int
    occurred_at: UtcDatetime
    action: str
    actor: str
    entity_type: str
    entity_id: str | None = None
    request_id: str | None = None
    ip: str | None = None
    user_agent: str | None = None
    old_value: Any = None
    new_value: Any = None


class AuditPage(BaseModel):
    items: list[AuditEntryOut]
    next_cursor: str | None = None


class ChangeEventOut(BaseModel):
    id: str
    occurred_at: UtcDatetime
    type: str
    entity_type: str
    entity_id: str
    entity_version: int | None = None
    actor: str
    request_id: str | None = None
    data: Any = None


class EventPage(BaseModel):
    events: list[ChangeEventOut]
    next_cursor: str


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
