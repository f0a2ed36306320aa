"""Scoring a pair: total match weight, probability, per-comparison results, one-line reason.

A :class:`Scorer` compiles a :class:`~mpi.matching.model.Model` into a plan (comparison
function, weight per level) once; scoring a pair is then one call per comparison and a
table look-up. Names get a term-frequency adjustment on their exact level: the exact
weight becomes ``log2(m_exact / max(tf(value), tf_min_u))`` instead of
``log2(m_exact / u_exact)``, so "Smith = Smith" counts for less than "Zylberstein =
Zylberstein". TF tables come from the model (``mpi train`` computes them from the records
it trains on: :func:`term_frequencies`); a model without them has no TF adjustment.

Registry frequencies (:func:`registry_frequencies`: the share of the registry's records
holding each given name, family name, city, state and postal code) only ever *lower* an
exact level's weight, to ``log2(m_exact / share)`` where the share is above the model's
``u_exact`` (and never below 0): the untrained, shipped model assumes a diverse registry,
and in a one-town registry everybody shares the city, state and postal code, so that
agreement must weigh nothing; a value rarer here than the model assumes is not taken as
stronger evidence without a model trained on the registry (``mpi train``).

Correlated comparisons (``Model.correlated``: address line, city, state, postal code and
phone in the shipped model) agree together, so their agreement counts once: only the
strongest agreeing member counts, the other agreeing members count 0. Fellegi-Sunter
assumes comparisons independent; a household breaks that (two relatives share all five)
and the sum made a relative at the same address a confident link. Disagreements still
each count: a move also changes all five at once, but counting it once would let a
namesake with another SSN link through a single sparse record; this way a move can cost
a link (a review or a duplicate to merge later), never cause a merge.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache

from mpi.matching.comparisons import COMPARISONS, NULL
from mpi.matching.model import Model
from mpi.matching.record import MatchRecord, PreparedRecord, field_form, prepare

TF_COMPARISONS = tuple(c.name for c in COMPARISONS if c.tf_attribute)
# Comparisons whose exact level registry frequencies may lower, and the prepared
# record's attribute they count.
REGISTRY_ATTRIBUTES = {"given_name": "given", "family_name": "family", "city": "city",
                       "state": "state", "postal_code": "postcode"}


@dataclass(frozen=True, slots=True)
class ComparisonResult:
    comparison: str
    level: int
    label: str
    weight: float


class Score:
    """The evidence that two records belong to the same person."""

    __slots__ = ("_raw", "_weights", "left", "levels", "probability", "right", "scorer",
                 "weight")

    def __init__(self, scorer: Scorer, left: PreparedRecord, right: PreparedRecord,
                 levels: tuple[int, ...], weight: float) -> None:
        self.scorer = scorer
        self.left = left
        self.right = right
        self.levels = levels
        self.weight = weight
        self.probability = scorer.model.probability(weight)
        self._weights: tuple[float, ...] | None = None
        self._raw: tuple[float, ...] | None = None

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
    def raw_weights(self) -> tuple[float, ...]:
        """Match weight per comparison (0 for the null level), TF adjustment included,
        before correlated comparisons are counted once."""
        if self._raw is None:
            self._raw = self.scorer.comparison_weights(self.left, self.levels)
        return self._raw

    @property
    def weights(self) -> tuple[float, ...]:
        """The weight each comparison counts for: :attr:`raw_weights` with the members of a
        correlated group other than the one that counts set to 0 (they sum to
        :attr:`weight`)."""
        if self._weights is None:
            self._weights = self.scorer.counted(self.raw_weights, self.levels)
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


#: Registry frequencies are counted only in a registry of at least this many records,
#: and only for values at least this many records hold: in a small one, any value a
#: person's own two records share is "common", and lowering it would split the person.
REGISTRY_MIN_RECORDS = 1000
REGISTRY_MIN_HOLDERS = 10


def registry_frequencies(records: Iterable[PreparedRecord]) -> dict[str, dict[str, float]]:
    """Share of ``records`` holding each value the registry frequencies look at (values
    of fewer than REGISTRY_MIN_HOLDERS records left out; nothing below
    REGISTRY_MIN_RECORDS records)."""
    prepared = list(records)
    counts = {name: Counter[str]() for name in REGISTRY_ATTRIBUTES}
    for r in prepared:
        for name, attr in REGISTRY_ATTRIBUTES.items():
            value = getattr(r, attr)
            if value:
                counts[name][value] += 1
    return _common(counts, len(prepared))


def _common(counts: Mapping[str, Mapping[str, float]], total: int
            ) -> dict[str, dict[str, float]]:
    if total < REGISTRY_MIN_RECORDS:
        return {}
    return {name: {v: n / total for v, n in c.items() if n >= REGISTRY_MIN_HOLDERS}
            for name, c in counts.items()}


def frequencies_from_counts(counts: Mapping[str, Mapping[str, float]], total: int
                            ) -> dict[str, dict[str, float]]:
    """:func:`registry_frequencies` from counts of raw values (comparison name -> raw
    value as stored -> records holding it) among ``total`` records, as a database counts
    them (scaled up from a sample, perhaps): values that normalise alike are added up."""
    summed: dict[str, dict[str, float]] = {}
    for name, raw_counts in counts.items():
        if name not in REGISTRY_ATTRIBUTES:
            continue
        values = summed[name] = {}
        for raw, n in raw_counts.items():
            value = field_form(name, raw)
            if value:
                values[value] = values.get(value, 0.0) + n
    return _common(summed, total)


class Scorer:
    """A model compiled for fast scoring, with optional TF tables."""

    def __init__(self, model: Model,
                 tf: Mapping[str, Mapping[str, float]] | None = None, *,
                 registry: Mapping[str, Mapping[str, float]] | None = None) -> None:
        self.model = model
        self._plan = tuple((c.compare, model.weights(c.name)) for c in COMPARISONS)
        index = {c.name: i for i, c in enumerate(COMPARISONS)}
        self.groups = tuple(tuple(index[name] for name in group) for group in model.correlated)
        # Each group's members with their weight tables, for the hot loop in ``score``.
        self._group_plan = tuple(tuple((i, self._plan[i][1]) for i in group)
                                 for group in self.groups)
        tables = tf if tf is not None else model.term_frequencies
        # Per TF comparison: (index in COMPARISONS, attribute, value -> adjusted exact
        # weight, whether it is a member of a correlated group)
        grouped = {i for group in self.groups for i in group}
        self._tf: list[tuple[int, str, dict[str, float], bool]] = []
        for i, c in enumerate(COMPARISONS):
            base = model.weights(c.name)[1]
            table = tables.get(c.name) if c.tf_attribute else None
            if table:
                m_exact = model.m[c.name][0]
                self._tf.append((i, c.tf_attribute or "", {
                    v: math.log2(max(m_exact, 1e-9) / max(f, model.tf_min_u, 1e-12)) - base
                    for v, f in table.items()}, i in grouped))
                continue
            table = (registry or {}).get(c.name)
            u_exact = model.u[c.name][0]
            lowered = {v: max(math.log2(u_exact / f), -base) for v, f in (table or {}).items()
                       if f > u_exact and base > 0}
            if lowered:
                self._tf.append((i, REGISTRY_ATTRIBUTES[c.name], lowered, i in grouped))

    def score(self, a: PreparedRecord, b: PreparedRecord) -> Score:
        levels = []
        total = 0.0
        for compare, weights in self._plan:
            level = compare(a, b)
            levels.append(level)
            total += weights[level]
        adjust: dict[int, float] | None = None  # of correlated group members (city, ...)
        for i, attr, adjusted, in_group in self._tf:
            if levels[i] == 1:
                delta = adjusted.get(getattr(a, attr), 0.0)
                if delta:
                    total += delta
                    if in_group:
                        if adjust is None:
                            adjust = {}
                        adjust[i] = delta
        for group in self._group_plan:
            # Only the strongest agreement counts (:func:`_counted`); the null level weighs 0
            # and disagreements are kept.
            best = agreeing = 0.0
            for i, weights in group:
                w = weights[levels[i]]
                if adjust is not None and i in adjust:
                    w += adjust[i]
                if w > 0:
                    agreeing += w
                    if w > best:
                        best = w
            total -= agreeing - best
        return Score(self, a, b, tuple(levels), total)

    def counted(self, weights: tuple[float, ...], levels: tuple[int, ...]) -> tuple[float, ...]:
        """``weights`` with the agreeing members of each correlated group but the strongest
        set to 0."""
        if not self.groups:
            return weights
        out = list(weights)
        for group in self.groups:
            members = [i for i in group if levels[i] != NULL]
            if len(members) > 1:
                keep = _keeper(members, out)
                for i in members:
                    if i != keep and out[i] > 0:
                        out[i] = 0.0
        return tuple(out)

    def combine(self, evidence: list[float | None]) -> float:
        """The total of per-comparison evidence (None: nothing to compare), each
        correlated group counted once (for a person's evidence, ``linker``)."""
        total = sum(w for w in evidence if w is not None)
        for group in self.groups:
            present = [w for i in group if (w := evidence[i]) is not None]
            if len(present) > 1:
                total += _counted(present) - sum(present)
        return total

    def comparison_weights(self, a: PreparedRecord, levels: tuple[int, ...]) -> tuple[float, ...]:
        out = [weights[level] for (_, weights), level in zip(self._plan, levels, strict=True)]
        for i, attr, adjusted, _ in self._tf:
            if levels[i] == 1:
                out[i] += adjusted.get(getattr(a, attr), 0.0)
        return tuple(out)


def _counted(weights: list[float]) -> float:
    """What a correlated group counts for: its strongest agreement (once) and every
    disagreement."""
    return max(max(weights), 0.0) + sum(w for w in weights if w < 0)


def _keeper(members: list[int], weights: list[float]) -> int:
    """The agreeing member of a group whose weight counts (the strongest)."""
    return max(members, key=lambda i: weights[i])


@lru_cache(maxsize=1)
def _default_scorer() -> Scorer:
    return Scorer(Model.default())


def score(a: MatchRecord | PreparedRecord, b: MatchRecord | PreparedRecord,
          model: Model | None = None) -> Score:
    """Score one pair (prepares the records if needed; uses the shipped model by default)."""
    scorer = Scorer(model) if model is not None else _default_scorer()
    return scorer.score(prepare(a), prepare(b))
