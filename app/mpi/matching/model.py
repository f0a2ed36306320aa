"""The Fellegi-Sunter model as data: m and u per comparison level, the prior, TF tables.

Saved as canonical JSON (sorted keys) and versioned by content: ``version`` is
``<name>-<first 12 hex of sha256 of the content>``, so two files with the same
parameters have the same version and any change to a parameter changes it. A file
whose stated ``version`` does not match its content is refused (hand edits must drop
the field so the model is re-versioned).

Weights: ``log2(m / u)`` per level; the null level (missing on either side) has
weight 0. The prior ``lambda`` is the probability that two records drawn at random
from the registry belong to the same person; a score's probability is
``1 / (1 + 2 ** -(W + log2(lambda / (1 - lambda))))``.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Any

from mpi.matching.comparisons import COMPARISONS

FORMAT = 1
_FLOOR = 1e-9
# Levels added to a comparison after model files were written, each with the level of
# those files that scored such pairs before: a file without the level applies that
# level's m and u to it, so it scores every pair as it did.
ADDED_LEVELS: Mapping[tuple[str, str], str] = {
    ("given_name", "another language's form"): "nickname",
    ("given_name", "matches the other's family name (Jaro-Winkler >= 0.92)"): "different",
}


class ModelError(ValueError):
    """A model file that is malformed or does not fit the comparisons of this code."""


@dataclass(frozen=True)
class Model:
    name: str
    prior: float
    m: Mapping[str, tuple[float, ...]]  # per comparison: one value per non-null level
    u: Mapping[str, tuple[float, ...]]
    # Term frequencies of names (comparison name -> normalised value -> share of records).
    # Empty: TF tables are computed from the records being matched (batch) or not used.
    term_frequencies: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    tf_min_u: float = 1e-4  # the smallest u a TF adjustment may use (caps rare-name weight)
    description: str = ""
    # Groups of comparisons whose evidence is one fact, counted once (see ``scoring``):
    # a household shares address, city, state, postal code and home phone, and a move
    # changes them all; summing them as independent made a relative at the same address
    # a confident link.
    correlated: tuple[tuple[str, ...], ...] = ()

    def __post_init__(self) -> None:
        problems = []
        if not 0.0 < self.prior < 1.0:
            problems.append(f"prior must be between 0 and 1, got {self.prior}")
        for c in COMPARISONS:
            for kind, table in (("m", self.m), ("u", self.u)):
                values = table.get(c.name)
                if values is None:
                    problems.append(f"{kind} for comparison {c.name!r} is missing")
                elif len(values) != len(c.labels) - 1:
                    problems.append(f"{kind}[{c.name}] has {len(values)} values; the comparison "
                                    f"has {len(c.labels) - 1} non-null levels")
                elif any(not 0.0 <= v <= 1.0 for v in values):
                    problems.append(f"{kind}[{c.name}] values must be probabilities")
        names = {c.name for c in COMPARISONS}
        grouped = [c for group in self.correlated for c in group]
        if set(grouped) - names:
            problems.append("correlated names unknown comparisons: "
                            + ", ".join(sorted(set(grouped) - names)))
        if len(grouped) != len(set(grouped)):
            problems.append("a comparison is in more than one correlated group")
        unknown = sorted((set(self.m) | set(self.u)) - names)
        if unknown:
            problems.append(f"unknown comparisons: {', '.join(unknown)}")
        if problems:
            raise ModelError("; ".join(problems))

    # --- weights -----------------------------------------------------------------------

    def weights(self, comparison: str) -> tuple[float, ...]:
        """Match weight per level, null level (0) first with weight 0."""
        m, u = self.m[comparison], self.u[comparison]
        return (0.0, *(math.log2(max(mi, _FLOOR) / max(ui, _FLOOR)) for mi, ui in zip(m, u,
                                                                                    strict=True)))

    @property
    def prior_weight(self) -> float:
        return math.log2(self.prior / (1.0 - self.prior))

    def probability(self, weight: float) -> float:
        x = weight + self.prior_weight
        if x > 60:
            return 1.0
        if x < -60:
            return 0.0
        return 1.0 / (1.0 + 2.0 ** -x)

    def weight_for(self, probability: float) -> float:
        """The total match weight at which a pair reaches ``probability``."""
        p = min(max(probability, 1e-15), 1 - 1e-15)
        return math.log2(p / (1 - p)) - self.prior_weight

    # --- identity and JSON -------------------------------------------------------------

    def _content(self, skip: frozenset[str] = frozenset(),
                 written: Mapping[str, tuple[str, ...]] | None = None) -> dict[str, Any]:
        # "correlated" only when there is a group: a model written before groups existed
        # keeps the version it was written with.
        groups = {"correlated": [list(g) for g in self.correlated]} if self.correlated else {}
        return {
            **groups,
            "format": FORMAT,
            "name": self.name,
            "description": self.description,
            "prior": self.prior,
            "tf_min_u": self.tf_min_u,
            "comparisons": [
                {"name": c.name, "levels": [
                    {"label": label, "m": self.m[c.name][i - 1], "u": self.u[c.name][i - 1]}
                    for i, label in enumerate(c.labels)
                    if i > 0 and label in (written or {}).get(c.name, c.labels)]}
                for c in COMPARISONS if c.name not in skip
            ],
            "term_frequencies": {k: dict(sorted(v.items()))
                                 for k, v in sorted(self.term_frequencies.items())},
        }

    @cached_property
    def version(self) -> str:
        """Computed once per model (a hash of its canonical JSON: every linking decision
        records it, and hashing it each time cost about 0.4 ms of a decision)."""
        return self._version()

    def _version(self, skip: frozenset[str] = frozenset(),
                 written: Mapping[str, tuple[str, ...]] | None = None) -> str:
        """``name-hash`` of the content (without the comparisons in ``skip``, and with only
        the ``written`` levels of the comparisons it names)."""
        digest = hashlib.sha256(_canonical(self._content(skip, written)).encode()).hexdigest()
        return f"{self.name}-{digest[:12]}"

    def to_json(self) -> str:
        return _canonical({**self._content(), "version": self.version}, indent=1) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Model:
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise ModelError(f"not JSON: {exc}") from exc
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ModelError(f"not a matching model of format {FORMAT}")
        try:
            m: dict[str, tuple[float, ...]] = {}
            u: dict[str, tuple[float, ...]] = {}
            written: dict[str, tuple[str, ...]] = {}
            for comp in data["comparisons"]:
                name = comp["name"]
                code = {c.name: c for c in COMPARISONS}.get(name)
                levels = {level["label"]: level for level in comp["levels"]}
                labels = tuple(levels)
                if code is not None and labels != code.labels[1:]:
                    # A file written before a level was added: the level it replaces
                    # scores it. Anything else does not fit this code.
                    older = tuple(label for label in code.labels[1:]
                                  if (name, label) not in ADDED_LEVELS)
                    if labels != older:
                        raise ModelError(f"comparison {name!r}: level labels {labels} do not "
                                         f"match this code's {code.labels[1:]}")
                    written[name] = labels
                    levels = {label: levels[ADDED_LEVELS.get((name, label), label)]
                              for label in code.labels[1:]}
                m[name] = tuple(float(level["m"]) for level in levels.values())
                u[name] = tuple(float(level["u"]) for level in levels.values())
            # A model written before a comparison existed (the middle name) gets the
            # shipped model's m and u for it, and keeps the version it was written with
            # checked against what it holds; ``mpi train`` learns them for the registry.
            added = frozenset(c.name for c in COMPARISONS) - set(m)
            if added:
                shipped = cls.default()
                for name in added:
                    m[name], u[name] = shipped.m[name], shipped.u[name]
            model = cls(name=str(data["name"]), prior=float(data["prior"]), m=m, u=u,
                        term_frequencies={k: {str(n): float(f) for n, f in v.items()}
                                          for k, v in data.get("term_frequencies", {}).items()},
                        tf_min_u=float(data.get("tf_min_u", 1e-4)),
                        description=str(data.get("description", "")),
                        correlated=tuple(tuple(str(c) for c in group)
                                         for group in data.get("correlated", [])))
        except (KeyError, TypeError) as exc:
            raise ModelError(f"malformed model: missing or wrong field {exc}") from exc
        stated = data.get("version")
        as_written = model._version(added, written)
        if stated is not None and stated != as_written:
            raise ModelError(f"stated version {stated} does not match the content "
                             f"({as_written}); remove 'version' to re-version an edited model")
        return model

    @classmethod
    def load(cls, path: str | Path) -> Model:
        return cls.from_json(Path(path).read_text(encoding="utf-8"))

    def save(self, path: str | Path) -> None:
        target = Path(path)
        tmp = target.with_name(target.name + ".tmp")
        tmp.write_text(self.to_json(), encoding="utf-8")
        tmp.replace(target)

    @classmethod
    def default(cls) -> Model:
        """The model shipped in the package (hand-set, reviewed defaults)."""
        text = resources.files("mpi.matching").joinpath("default_model.json").read_text("utf-8")
        return cls.from_json(text)

    def evolve(self, **changes: Any) -> Model:
        return replace(self, **changes)


def _canonical(data: Any, indent: int | None = None) -> str:
    separators = (",", ": ") if indent else (",", ":")
    return json.dumps(data, sort_keys=True, indent=indent, separators=separators,
                      ensure_ascii=True)
