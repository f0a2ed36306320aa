"""Training a new model version from unlabelled records (the Splink recipe, in pure Python).

1. **u** by random sampling: pairs drawn at random are almost all non-matches, so the
   share of random pairs at each level estimates u.
2. **m** by expectation-maximisation over blocked pairs, one pass per blocking rule
   (:data:`~mpi.matching.blocking.EM_RULES`); in each pass the comparisons the rule holds
   fixed are switched off (they agree by construction), u stays fixed, and m of the other
   comparisons is estimated. Each comparison's m is the mean of the passes that estimated it.
3. **prior**: each pass also estimates the share of matches among its blocked pairs; divided
   by the rule's recall (the m of "exact" on the fixed comparisons) and by all possible
   pairs, that gives the probability that two random records match. The passes' estimates
   are averaged.

Level vectors are aggregated into patterns (vector -> count) first, so EM iterates over a
few thousand patterns whatever the number of pairs. ``records`` may be any iterable of
:class:`MatchRecord` (a CSV reader, or the identity layer's database cursor).
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from mpi.matching.blocking import EM_RULES, BlockingRule
from mpi.matching.comparisons import COMPARISONS, NULL, levels
from mpi.matching.model import Model
from mpi.matching.record import MatchRecord, PreparedRecord, prepare
from mpi.matching.scoring import term_frequencies

Pattern = tuple[int, ...]
Params = dict[str, tuple[float, ...]]
_NAMES = tuple(c.name for c in COMPARISONS)
_SIZES = tuple(len(c.labels) - 1 for c in COMPARISONS)  # non-null levels
_EPS = 1e-6


def _normalise(counts: Sequence[float], smoothing: float) -> tuple[float, ...]:
    total = sum(counts) + smoothing * len(counts)
    if total <= 0:
        return tuple(1.0 / len(counts) for _ in counts)
    return tuple((c + smoothing) / total for c in counts)


def level_distribution(patterns: Mapping[Pattern, float], smoothing: float = 0.5) -> Params:
    """Share of each non-null level per comparison (u from random pairs)."""
    out: Params = {}
    for i, (name, size) in enumerate(zip(_NAMES, _SIZES, strict=True)):
        counts = [0.0] * size
        for pattern, n in patterns.items():
            if pattern[i] != NULL:
                counts[pattern[i] - 1] += n
        out[name] = _normalise(counts, smoothing)
    return out


def estimate_u(records: Sequence[PreparedRecord], pairs: int = 200_000, seed: int = 0
               ) -> tuple[Params, Counter[Pattern]]:
    rng = random.Random(seed)
    n = len(records)
    if n < 2:
        raise ValueError("need at least two records to estimate u")
    sample: Counter[Pattern] = Counter()
    for _ in range(pairs):
        i, j = rng.randrange(n), rng.randrange(n - 1)
        if j >= i:
            j += 1
        sample[levels(records[i], records[j])] += 1
    return level_distribution(sample), sample


@dataclass(frozen=True)
class EMResult:
    m: Params
    u: Params
    prior: float  # share of matches among the pairs EM saw
    iterations: int
    pairs: int


def expectation_maximisation(patterns: Mapping[Pattern, float], m: Params, u: Params,
                             prior: float, active: Iterable[str], *, fix_u: bool = True,
                             max_iterations: int = 100, tolerance: float = 1e-6) -> EMResult:
    """EM over level patterns; only the ``active`` comparisons count and are updated."""
    idx = [i for i, name in enumerate(_NAMES) if name in set(active)]
    m = {k: tuple(v) for k, v in m.items()}
    u = {k: tuple(v) for k, v in u.items()}
    items = list(patterns.items())
    total = sum(n for _, n in items)
    lam = min(max(prior, _EPS), 1 - _EPS)
    iteration = 0
    for iteration in range(1, max_iterations + 1):  # noqa: B007 - reported below
        m_counts = {i: [0.0] * _SIZES[i] for i in idx}
        u_counts = {i: [0.0] * _SIZES[i] for i in idx}
        matches = 0.0
        for pattern, n in items:
            pm, pu = lam, 1.0 - lam
            for i in idx:
                level = pattern[i]
                if level != NULL:
                    pm *= m[_NAMES[i]][level - 1]
                    pu *= u[_NAMES[i]][level - 1]
            post = pm / (pm + pu) if pm + pu > 0 else 0.0
            matches += post * n
            for i in idx:
                level = pattern[i]
                if level != NULL:
                    m_counts[i][level - 1] += post * n
                    u_counts[i][level - 1] += (1.0 - post) * n
        new_m = dict(m)
        new_u = dict(u)
        for i in idx:
            new_m[_NAMES[i]] = _normalise(m_counts[i], 1e-3)
            if not fix_u:
                new_u[_NAMES[i]] = _normalise(u_counts[i], 1e-3)
        new_lam = min(max(matches / total, _EPS), 1 - _EPS) if total else lam
        change = max([abs(new_lam - lam)] + [abs(a - b) for i in idx for a, b in
                                             zip(new_m[_NAMES[i]], m[_NAMES[i]], strict=True)])
        m, u, lam = new_m, new_u, new_lam
        if change < tolerance:
            break
    return EMResult(m, u, lam, iteration, int(total))


def blocked_patterns(records: Sequence[PreparedRecord], rule: BlockingRule,
                     max_block: int = 200, seed: int = 0) -> Counter[Pattern]:
    """Level patterns of every pair sharing the rule's key (huge blocks are sampled)."""
    blocks: dict[str, list[PreparedRecord]] = {}
    for r in records:
        key = rule.key(r)
        if key:
            blocks.setdefault(key, []).append(r)
    rng = random.Random(seed)
    out: Counter[Pattern] = Counter()
    for block in blocks.values():
        if len(block) > max_block:
            block = rng.sample(block, max_block)
        for i in range(len(block)):
            for j in range(i + 1, len(block)):
                out[levels(block[i], block[j])] += 1
    return out


def train(records: Iterable[MatchRecord | PreparedRecord], *, base: Model | None = None,
          name: str = "trained", u_pairs: int = 200_000, rules: Sequence[BlockingRule] = EM_RULES,
          include_term_frequencies: bool = False, seed: int = 0,
          progress: Callable[[str], None] | None = None) -> Model:
    """A new model version estimated from ``records`` (no labels used)."""
    say = progress or (lambda _msg: None)
    base = base or Model.default()
    prepared = [prepare(r) for r in records]
    n = len(prepared)
    say(f"{n} records prepared; estimating u from {u_pairs} random pairs")
    u, sample = estimate_u(prepared, u_pairs, seed)
    # A comparison these records never fill (no mother's maiden name in the data) keeps
    # the base model's u: a uniform guess would make its levels near-meaningless.
    observed = {name for i, name in enumerate(_NAMES) if any(p[i] != NULL for p in sample)}
    u = {name: (values if name in observed else base.u[name]) for name, values in u.items()}
    estimates: dict[str, list[tuple[float, ...]]] = {name_: [] for name_ in _NAMES}
    passes: list[tuple[BlockingRule, EMResult]] = []
    for rule in rules:
        patterns = blocked_patterns(prepared, rule, seed=seed)
        if not patterns:
            say(f"EM pass '{rule.name}': no blocked pairs, skipped")
            continue
        active = [c for c in _NAMES if c not in rule.fixes]
        result = expectation_maximisation(patterns, dict(base.m), u, 0.1, active)
        say(f"EM pass '{rule.name}': {result.pairs} pairs, {result.iterations} iterations, "
            f"{result.prior:.4f} matches among them")
        passes.append((rule, result))
        for c in active:
            estimates[c].append(result.m[c])
    m = {c: (tuple(sum(col) / len(vals) for col in zip(*vals, strict=True)) if vals
             else base.m[c]) for c, vals in estimates.items()}
    all_pairs = n * (n - 1) / 2
    priors = []
    for rule, result in passes:
        recall = math.prod(m[c][0] for c in rule.fixes)
        if recall > 0 and all_pairs:
            priors.append(result.prior * result.pairs / recall / all_pairs)
    prior = min(max(sum(priors) / len(priors), 1e-9), 0.5) if priors else base.prior
    say(f"prior (probability two random records match) = {prior:.3g}")
    tf = term_frequencies(prepared) if include_term_frequencies else {}
    return Model(name=name, prior=prior, m=m, u=u, term_frequencies=tf,
                 tf_min_u=base.tf_min_u, correlated=base.correlated,
                 description=f"Trained on {n} records: u from {u_pairs} random pairs, m by EM "
                             f"over {len(passes)} blocking rule(s), starting from {base.version}.")
