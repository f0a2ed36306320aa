"""The seam between identity and the matcher: records in their JSON matching form in,
blocking keys, pair scores and a person-level decision out."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol


@dataclass(frozen=True)
class PairScore:
    """One record compared with another."""

    probability: float
    match_weight: float
    reason: str
    comparisons: tuple[tuple[str, str, float], ...]  # (comparison, level label, weight)

    def explanation(self, model_version: str) -> dict[str, Any]:
        return {"probability": self.probability, "match_weight": self.match_weight,
                "reason": self.reason, "model_version": model_version,
                "comparisons": [{"comparison": c, "level": lvl, "weight": w}
                                for c, lvl, w in self.comparisons]}


@dataclass(frozen=True)
class RankedPerson:
    person_id: str
    probability: float
    best_record_id: str
    best: PairScore
    records_compared: int


@dataclass(frozen=True)
class PersonDecision:
    kind: Literal["link", "review", "new"]
    person_id: str | None
    probability: float
    ranked: tuple[RankedPerson, ...] = ()
    duplicates: tuple[RankedPerson, ...] = field(default=())


@dataclass(frozen=True)
class Candidate:
    """A stored record that shares a blocking key with the incoming one."""

    record_id: str
    person_id: str
    match_data: Mapping[str, Any]


class Engine(Protocol):
    model_version: str
    link_threshold: float
    review_threshold: float

    def keys(self, data: Mapping[str, Any]) -> list[str]: ...

    def decide(self, data: Mapping[str, Any], candidates: Sequence[Candidate], *,
               excluded: frozenset[str] = frozenset()) -> PersonDecision: ...


def grade(probability: float, *, link_threshold: float, review_threshold: float) -> str:
    """certain (auto-link), probable (review), possible (half-way to review), unlikely."""
    if probability >= link_threshold:
        return "certain"
    if probability >= review_threshold:
        return "probable"
    if probability >= review_threshold / 2:
        return "possible"
    return "unlikely"
