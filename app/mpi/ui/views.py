"""What the pages show, computed from the services' answers (no database, no HTTP): the
side-by-side comparison of records, the match-weight waterfall and the model's weights."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from mpi.domain.patient import Patient
from mpi.matching.comparisons import COMPARISONS
from mpi.matching.model import Model

# --- records side by side ---------------------------------------------------------------------


@dataclass(frozen=True)
class Cell:
    text: str
    state: str  # "same", "differs", "missing" (either side has no value) or "" (the reference)


@dataclass(frozen=True)
class FieldRow:
    label: str
    cells: list[Cell]


def _norm(text: str) -> str:
    return " ".join(text.casefold().split())


def _name(p: Patient) -> str:
    if not p.names:
        return ""
    n = p.names[0]
    return " ".join([*n.given, n.family or ""]).strip()


def _family(p: Patient) -> str:
    return next((n.family for n in p.names if n.family), "") or ""


def _given(p: Patient) -> str:
    return next((" ".join(n.given) for n in p.names if n.given), "")


def _birth(p: Patient) -> str:
    if p.birth_date is None:
        return ""
    if p.birth_date_partial:
        return p.birth_date_partial
    return p.birth_date.isoformat()


def _address(p: Patient) -> str:
    if not p.addresses:
        return ""
    a = p.addresses[0]
    return ", ".join(x for x in [*a.line, a.city or "", a.postal_code or ""] if x)


def _phone(p: Patient) -> str:
    return next((t.value for t in p.telecom if t.system == "phone"), "")


def _identifiers(p: Patient) -> str:
    return "; ".join(f"{i.value} ({i.type or i.system})" for i in p.identifiers)


def _source(p: Patient) -> str:
    return f"{p.source} {p.source_id}"


FIELDS: tuple[tuple[str, Callable[[Patient], str]], ...] = (
    ("Source", _source),
    ("Family name", _family),
    ("Given names", _given),
    ("Birth date", _birth),
    ("Sex", lambda p: p.gender or ""),
    ("Address", _address),
    ("Phone", _phone),
    ("Identifiers", _identifiers),
    ("Mother's maiden name", lambda p: p.mothers_maiden_name or ""),
)


def side_by_side(reference: Patient, others: Sequence[Patient]) -> list[FieldRow]:
    """One row per field: the reference record's value, then each other record's, marked
    as agreeing with the reference, disagreeing, or missing on one side."""
    rows = []
    for label, read in FIELDS:
        mine = read(reference)
        cells = [Cell(mine, "")]
        for other in others:
            theirs = read(other)
            if label == "Source":
                state = ""
            elif not mine or not theirs:
                state = "missing"
            elif label == "Identifiers":
                a = {(i.system, _norm(i.value)) for i in reference.identifiers}
                b = {(i.system, _norm(i.value)) for i in other.identifiers}
                state = "same" if a & b else "differs"
            else:
                state = "same" if _norm(mine) == _norm(theirs) else "differs"
            cells.append(Cell(theirs, state))
        rows.append(FieldRow(label, cells))
    return rows


def display_name(p: Patient) -> str:
    return _name(p) or "(no name)"


# --- the match-weight waterfall -------------------------------------------------------------


@dataclass(frozen=True)
class Bar:
    label: str
    detail: str
    weight: float  # bits this step adds
    start: float  # running total before it
    end: float
    kind: str  # "prior", "up", "down", "total"
    x: float = 0.0  # SVG geometry, filled by :func:`waterfall`
    width: float = 0.0


@dataclass(frozen=True)
class Waterfall:
    bars: list[Bar]
    probability: float
    total: float
    ticks: list[tuple[float, float]]  # (bits, x)
    lines: list[tuple[str, float]]  # thresholds: (label, x)
    width: int
    row: int
    left: int
    silent: list[str]  # comparisons that weighed nothing (a value missing on one side)


def _logit2(p: float) -> float:
    p = min(max(p, 1e-12), 1 - 1e-12)
    return math.log2(p / (1 - p))


def waterfall(explanation: dict[str, Any] | None, *, link_threshold: float,
              review_threshold: float, prior_weight: float, model_version: str,
              width: int = 700) -> Waterfall | None:
    """Each comparison's contribution in bits, from the prior to the final match weight.

    The prior is the active model's when the review was scored by it; for an earlier
    version it is read off the explanation (final log-odds minus the comparisons' total).
    Evidence the model counts once for a correlated group (a household's address fields)
    is its own step, so the bars always add up to the total. Comparisons that weighed
    nothing (a value missing on one side) are listed apart, not drawn."""
    if not explanation or "comparisons" not in explanation:
        return None
    probability = float(explanation.get("probability", 0.0))
    steps = [(str(c.get("comparison", "")).replace("_", " "), str(c.get("level", "")),
              float(c.get("weight", 0.0))) for c in explanation["comparisons"]]
    weight = float(explanation.get("match_weight", sum(w for _, _, w in steps)))
    prior = prior_weight
    if explanation.get("model_version", model_version) != model_version \
            and 1e-9 < probability < 1 - 1e-9:
        prior = _logit2(probability) - weight
    bars: list[Bar] = [Bar("prior", "before any comparison", prior, 0.0, prior, "prior")]
    running = prior
    silent = []
    for name, level, w in steps:
        if abs(w) < 0.005:
            silent.append(f"{name} ({level})")
            continue
        bars.append(Bar(name, level, w, running, running + w, "up" if w >= 0 else "down"))
        running += w
    rest = prior + weight - running
    if abs(rest) >= 0.005:
        bars.append(Bar("counted once", "correlated fields (one household)", rest, running,
                        running + rest, "up" if rest >= 0 else "down"))
    total = prior + weight
    bars.append(Bar("match weight", f"probability {probability:.4f}", total, 0.0, total,
                    "total"))
    link, review = _logit2(link_threshold), _logit2(review_threshold)
    values = [0.0, link, review] + [b.start for b in bars] + [b.end for b in bars]
    low, high = math.floor(min(values)) - 1, math.ceil(max(values)) + 1
    left = 270
    plot = width - left - 60

    def x(bits: float) -> float:
        return round(left + (bits - low) / (high - low) * plot, 1)

    placed = [Bar(b.label, b.detail, b.weight, b.start, b.end, b.kind,
                  x=x(min(b.start, b.end)), width=max(abs(x(b.end) - x(b.start)), 1.0))
              for b in bars]
    step = max(1, math.ceil((high - low) / 10))
    ticks = [(float(t), x(t)) for t in range(int(low), int(high) + 1, step)]
    lines = [(f"link at {link_threshold:g}", x(link)),
             (f"review from {review_threshold:g}", x(review))]
    return Waterfall(placed, probability, total, ticks, lines, width, 26, left, silent)


# --- the model --------------------------------------------------------------------------------


@dataclass(frozen=True)
class LevelRow:
    label: str
    m: float
    u: float
    weight: float
    x: float
    width: float


@dataclass(frozen=True)
class ComparisonView:
    name: str
    title: str
    levels: list[LevelRow]


def model_view(model: Model, *, scale_width: int = 260) -> tuple[list[ComparisonView], float]:
    """Each comparison's levels with m, u and match weight, and bar geometry centred on 0;
    and the largest absolute weight (the bars' scale)."""
    weights = {c.name: model.weights(c.name) for c in COMPARISONS}
    biggest = max((abs(w) for ws in weights.values() for w in ws[1:]), default=1.0) or 1.0
    half = scale_width / 2
    out = []
    for c in COMPARISONS:
        levels = []
        for i, label in enumerate(c.labels):
            if i == 0:
                continue
            w = weights[c.name][i]
            length = abs(w) / biggest * half
            levels.append(LevelRow(label, model.m[c.name][i - 1], model.u[c.name][i - 1], w,
                                   round(half if w >= 0 else half - length, 1),
                                   round(max(length, 1.0), 1)))
        out.append(ComparisonView(c.name, c.title, levels))
    return out, biggest
