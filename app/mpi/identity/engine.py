"""The seam between identity and the matcher: records in their JSON matching form in,
blocking keys, pair scores and a person-level decision out."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol


class PairScore:
    """One record compared with another. ``explain``, when given, works out the reason and
    the per-comparison weights on first use: most candidates are never explained."""

    __slots__ = ("_comparisons", "_explain", "_reason", "match_weight", "probability")

    def __init__(self, probability: float, match_weight: float, reason: str = "",
                 comparisons: tuple[tuple[str, str, float], ...] = (), *,
                 explain: Callable[[], tuple[str, tuple[tuple[str, str, float], ...]]]
                 | None = None):
        self.probability = probability
        self.match_weight = match_weight
        self._reason = reason
        self._comparisons = comparisons  # (comparison, level label, weight)
        self._explain = explain

    def _load(self) -> None:
        if self._explain is not None:
            self._reason, self._comparisons = self._explain()
            self._explain = None

    @property
    def reason(self) -> str:
        self._load()
        return self._reason

    @property
    def comparisons(self) -> tuple[tuple[str, str, float], ...]:
        self._load()
        return self._comparisons

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
