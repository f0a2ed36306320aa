"""Scoring a pair: total match weight, probability, per-comparison results, one-line reason.

A :class:`Scorer` compiles a :class:`~mpi.matching.model.Model` into a plan (comparison
function, weight per level) once; scoring a pair is then one call per comparison and a
table look-up. Names get a term-frequency adjustment on their exact level: the exact
weight becomes ``log2(m_exact / max(tf(value), tf_min_u))`` instead of
``log2(m_exact / u_exact)``, so "Smith = Smith" counts for less than "Zylberstein =
Zylberstein". TF tables come from the model or are computed from the records being
matched (:func:`term_frequencies`).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache

from mpi.matching.comparisons import COMPARISONS, NULL
from mpi.matching.model import Model
from mpi.matching.record import MatchRecord, PreparedRecord, prepare

TF_COMPARISONS = tuple(c.name for c in COMPARISONS if c.tf_attribute)


@dataclass(frozen=True, slots=True)
class ComparisonResult:
    comparison: str
    level: int
    label: str
    weight: float


class Score:
    """The evidence that two records belong to the same person."""

    __slots__ = ("_weights", "left", "levels", "probability", "right", "scorer", "weight")

    def __init__(self, scorer: Scorer, left: PreparedRecord, right: PreparedRecord,
                 levels: tuple[int, ...], weight: float) -> None:
        self.scorer = scorer
        self.left = left
        self.right = right
        self.levels = levels
        self.weight = weight
        self.probability = scorer.model.probability(weight)
        self._weights: tuple[float, ...] | None = None

    @property
    def model(self) -> Model:
        return self.scorer.model

    @property
    def left_id(self) -> str:
        return self.left.record.record_id

    @property
    def right_id(self) -> str:
        return self.right.record.record_id

    @property
    def weights(self) -> tuple[float, ...]:
        """Match weight per comparison (0 for the null level), TF adjustment included."""
        if self._weights is None:
            self._weights = self.scorer.comparison_weights(self.left, self.levels)
        return self._weights

    @property
    def comparisons(self) -> tuple[ComparisonResult, ...]:
        return tuple(ComparisonResult(c.name, lv, c.labels[lv], w)
                     for c, lv, w in zip(COMPARISONS, self.levels, self.weights, strict=True))

    @property
    def reason(self) -> str:
        """One line, strongest evidence first; missing values are left out."""
        parts = sorted(((abs(w), c.phrase(lv, self.left, self.right))
                        for c, lv, w in zip(COMPARISONS, self.levels, self.weights, strict=True)
                        if lv != NULL), key=lambda t: -t[0])
        return "; ".join(p for _, p in parts) or "nothing to compare"

    def __repr__(self) -> str:
        return (f"Score({self.left_id!r}, {self.right_id!r}, weight={self.weight:.2f}, "
                f"probability={self.probability:.6f})")


def term_frequencies(records: Iterable[PreparedRecord]) -> dict[str, dict[str, float]]:
    """Share of records carrying each normalised given and family name."""
    counts = {name: Counter[str]() for name in TF_COMPARISONS}
    attrs = [(c.name, c.tf_attribute) for c in COMPARISONS if c.tf_attribute]
    total = 0
    for r in records:
        total += 1
        for name, attr in attrs:
            value = getattr(r, attr or "")
            if value:
                counts[name][value] += 1
    return {name: {v: n / total for v, n in c.items()} for name, c in counts.items()} if total \
        else {}


class Scorer:
    """A model compiled for fast scoring, with optional TF tables."""

    def __init__(self, model: Model,
                 tf: Mapping[str, Mapping[str, float]] | None = None) -> None:
        self.model = model
        self._plan = tuple((c.compare, model.weights(c.name)) for c in COMPARISONS)
        tables = tf if tf is not None else model.term_frequencies
        # Per TF comparison: (index in COMPARISONS, attribute, value -> adjusted exact weight)
        self._tf: list[tuple[int, str, dict[str, float]]] = []
        for i, c in enumerate(COMPARISONS):
            table = tables.get(c.name) if c.tf_attribute else None
            if not table:
                continue
            m_exact = model.m[c.name][0]
            base = model.weights(c.name)[1]
            adjusted = {v: math.log2(max(m_exact, 1e-9) / max(f, model.tf_min_u, 1e-12)) - base
                        for v, f in table.items()}
            self._tf.append((i, c.tf_attribute or "", adjusted))

    def score(self, a: PreparedRecord, b: PreparedRecord) -> Score:
        levels = []
        total = 0.0
        for compare, weights in self._plan:
            level = compare(a, b)
            levels.append(level)
            total += weights[level]
        for i, attr, adjusted in self._tf:
            if levels[i] == 1:
                total += adjusted.get(getattr(a, attr), 0.0)
        return Score(self, a, b, tuple(levels), total)

    def comparison_weights(self, a: PreparedRecord, levels: tuple[int, ...]) -> tuple[float, ...]:
        out = [weights[level] for (_, weights), level in zip(self._plan, levels, strict=True)]
        for i, attr, adjusted in self._tf:
            if levels[i] == 1:
                out[i] += adjusted.get(getattr(a, attr), 0.0)
        return tuple(out)


@lru_cache(maxsize=1)
def _default_scorer() -> Scorer:
    return Scorer(Model.default())


def score(a: MatchRecord | PreparedRecord, b: MatchRecord | PreparedRecord,
          model: Model | None = None) -> Score:
    """Score one pair (prepares the records if needed; uses the shipped model by default)."""
    scorer = Scorer(model) if model is not None else _default_scorer()
    return scorer.score(prepare(a), prepare(b))
