"""The change log's vocabulary: :class:`EventType`, and an event as it is read back.

Each event type is about one kind of entity. The search indexer decides what each type
means for the index (``mpi.search.indexer.HANDLERS``, which must cover every type here).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel

from mpi.domain.types import UtcDatetime


class EventType(StrEnum):
    """Every change the service records; the value is the feed's ``type``."""

    entity_type: str

    def __new__(cls, value: str, entity_type: str) -> EventType:
        member = str.__new__(cls, value)
        member._value_ = value
        member.entity_type = entity_type
        return member

    PATIENT_CREATED = "PatientCreated", "patient"
    PATIENT_UPDATED = "PatientUpdated", "patient"
    PATIENT_DELETED = "PatientDeleted", "patient"
    PATIENT_LINKED = "PatientLinked", "patient"
    PATIENT_UNLINKED = "PatientUnlinked", "patient"
    PERSONS_MERGED = "PersonsMerged", "person"
    MERGE_UNDONE = "MergeUndone", "person"
    REVIEW_OPENED = "ReviewOpened", "review"
    REVIEW_RESOLVED = "ReviewResolved", "review"


@dataclass(frozen=True)
class ChangeEvent:
    """One committed change, read back from the log (``event_type`` as stored)."""

    id: int
    occurred_at: datetime
    event_type: str
    entity_type: str
    entity_id: str
    entity_version: int | None
    actor: str
    request_id: str | None
    payload: Any

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "occurred_at": self.occurred_at.replace(tzinfo=UTC).isoformat(),
            "type": self.event_type,
            "entity_type": self.entity_type,
            "entity_id": self.entity_id,
            "entity_version": self.entity_version,
            "actor": self.actor,
            "request_id": self.request_id,
            "data": self.payload,
        }


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
