"""Enterprise identity as the API shows it: persons, their records, reviews, history, scores."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from mpi.domain.patient import Patient
from mpi.domain.types import UtcDatetime

Grade = Literal["certain", "probable", "possible", "unlikely"]
ReviewKind = Literal["possible_match", "possible_duplicate"]
ReviewStatus = Literal["open", "resolved"]
Resolution = Literal["link", "not_a_match", "new_person"]


class ComparisonOut(BaseModel):
    """One comparison of a scored pair: the level it fell in and the weight that gave."""

    comparison: str
    level: str
    weight: float


class Explanation(BaseModel):
    """Why two records scored as they did."""

    probability: float
    match_weight: float
    reason: str
    comparisons: list[ComparisonOut]
    model_version: str


class PersonRecord(BaseModel):
    """One linked record in a person view."""

    model_config = ConfigDict(frozen=True)

    patient: Patient
    how: str = Field(description="auto, new, review, manual, merge or migrated")
    manual: bool = Field(description="a steward's decision; the engine never moves it")
    probability: float | None = None
    model_version: str | None = None
    linked_at: UtcDatetime


class PersonIdentifier(BaseModel):
    """An identifier of the person and the records that carry it (the PIX view)."""

    system: str
    value: str
    type: str | None = None
    patient_ids: list[str]
    sources: list[str]


class Person(BaseModel):
    id: str
    status: Literal["active", "merged"]
    merged_into: str | None = None
    created_at: UtcDatetime
    updated_at: UtcDatetime
    records: list[PersonRecord]
    identifiers: list[PersonIdentifier]


class LinkHistoryEntry(BaseModel):
    id: int
    occurred_at: UtcDatetime
    action: str
    actor: str
    patient_id: str | None = None
    probability: float | None = None
    model_version: str | None = None
    detail: Any = None


class LinkHistoryPage(BaseModel):
    items: list[LinkHistoryEntry]
    next_cursor: str | None = None


class ReviewItem(BaseModel):
    id: str
    kind: ReviewKind
    status: ReviewStatus
    patient_id: str | None = None
    person_id: str
    other_person_id: str | None = None
    probability: float
    model_version: str
    explanation: Any = None
    created_at: UtcDatetime
    resolved_at: UtcDatetime | None = None
    resolved_by: str | None = None
    resolution: str | None = None
    comment: str | None = Field(default=None,
                                description="The steward's note on the decision, if any")


class ReviewPage(BaseModel):
    items: list[ReviewItem]
    next_cursor: str | None = None


class ReviewDecision(BaseModel):
    """How a steward resolves a review."""

    model_config = ConfigDict(extra="forbid", strict=True)

    resolution: Resolution = Field(description=(
        "link: the record belongs to the person (possible_match) or the two persons are "
        "one (possible_duplicate, merged into person_id); not_a_match: never propose this "
        "again; new_person: the record becomes a person of its own (possible_match only)"))
    comment: Annotated[str, Field(max_length=1000)] | None = None


class LinkRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    patient_id: str = Field(description="The record to link to this person")


class MergeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    survivor_id: str = Field(description="The person that remains")
    merged_id: str = Field(description="The person merged into the survivor")


MergeHow = Literal["steward", "source", "auto"]


class Merge(BaseModel):
    id: str
    survivor_id: str
    merged_id: str
    moved_patient_ids: list[str]
    actor: str
    created_at: UtcDatetime
    undone_at: UtcDatetime | None = None
    how: MergeHow = Field("steward", description=(
        "steward (a steward's merge or duplicate review), source (a source merged two of "
        "its records: HL7 ADT^A40) or auto (a record proved the two persons one)"))
    probability: float | None = Field(None, description=(
        "auto: the probability that the two persons are one, compared as wholes"))


class MatchCandidate(BaseModel):
    person_id: str
    probability: float
    grade: Grade
    best_record_id: str
    explanation: Explanation
    records_compared: int


class MatchResult(BaseModel):
    decision: Literal["link", "review", "new"]
    person_id: str | None = None
    model_version: str
    candidates: list[MatchCandidate]

