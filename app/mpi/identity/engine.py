"""The matching engine, and the seam identity sees it through.

The seam (:class:`Engine`): records in their stored JSON matching form in, blocking keys,
pair scores and a person-level decision out; tests put a fake with fixed scores behind
it. :class:`MatchingEngine` is the production engine: ``mpi.matching`` behind the seam.
The composition root (``mpi.wiring``) builds it from the settings and the model file."""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
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
    model_version: str = ""  # of the model that decided ("": the engine's)


@dataclass(frozen=True)
class Candidate:
    """A stored record that shares a blocking key with the incoming one."""

    record_id: str
    person_id: str
    # The matching form, or its JSON text as stored (parsed only when the engine has no
    # prepared form of it yet).
    match_data: Mapping[str, Any] | str

    def parsed(self) -> Mapping[str, Any]:
        """The matching form (parsed, when it is the stored text)."""
        data = self.match_data
        return json.loads(data) if isinstance(data, str) else data


class Engine(Protocol):
    link_threshold: float
    review_threshold: float

    @property
    def model_version(self) -> str:
        """The version of the model in use."""
        ...

    def keys(self, data: Mapping[str, Any]) -> list[str]: ...

    def probes(self, keys: Sequence[str]) -> list[str]:
        """The keys a record holding ``keys`` looks its candidates up by."""
        ...

    def decide(self, data: Mapping[str, Any], candidates: Sequence[Candidate], *,
               excluded: frozenset[str] = frozenset()) -> PersonDecision: ...

    def same_person(self, left: Sequence[Candidate], right: Sequence[Candidate]
                    ) -> float | None:
        """The probability that two persons (all their records) are one, when it reaches
        the link threshold without the twin pattern; otherwise None."""
        ...

    @property
    def frequency_fields(self) -> tuple[str, ...]:
        """The matching-form fields whose frequencies in the registry the engine weighs."""
        ...

    def use_frequencies(self, total: int, counts: Mapping[str, Mapping[str, float]]) -> None:
        """Weigh agreement on a value by how common it is in the registry: ``counts``
        of the raw values of :attr:`frequency_fields` among ``total`` live records."""
        ...

    @property
    def model_file(self) -> Path | None:
        """The model file the engine reads again when it changes (None: never)."""
        ...

    def reload_model(self) -> str | None:
        """Read :attr:`model_file` again if it changed since it was read; the new model's
        version when one is now in use, else None. Raises when the file does not load
        (the model in use stays)."""
        ...


def grade(probability: float, *, link_threshold: float, review_threshold: float) -> str:
    """certain (auto-link), probable (review), possible (half-way to review), unlikely."""
    if probability >= link_threshold:
        return "certain"
    if probability >= review_threshold:
        return "probable"
    if probability >= review_threshold / 2:
        return "possible"
    return "unlikely"


class MatchingEngine:
    """Blocking keys, pair scores and the person-level decision of ``mpi.matching``, fed
    with records in their stored JSON matching form."""

    def __init__(self, model: Any, *, link_threshold: float = 0.95,
                 review_threshold: float = 0.5, twin_guard: bool = True,
                 model_file: Path | None = None):
        from mpi.matching.scoring import REGISTRY_ATTRIBUTES, Scorer

        self.link_threshold = link_threshold
        self.review_threshold = review_threshold
        self.twin_guard = twin_guard
        # The matching form's fields are the comparisons' names.
        self.frequency_fields: tuple[str, ...] = tuple(REGISTRY_ATTRIBUTES)
        self.model_file = model_file
        self._file_seen = _signature(model_file)
        self._registry: dict[str, dict[str, float]] = {}
        # The model and its compiled scorer are replaced together (one reference): a
        # decision takes the scorer once and reports its model's version.
        self.scorer = Scorer(model)
        # Prepared forms of stored records, by record id: a person's records are scored
        # again each time a new record meets them. Checked against the data (an update
        # changes it); bounded, the least recently used dropped first. An OrderedDict:
        # dropping a plain dict's first key leaves a hole that every later look for the
        # first key walks past, so once full each new entry cost a walk over all those
        # dropped before (54 % of mpi import's CPU at 440,000 records, and the same in a
        # busy worker). The lock: the MLLP listener decides in several threads.
        self._prepared: OrderedDict[str, tuple[Mapping[str, Any] | str, Any]] = OrderedDict()
        self._prepared_lock = threading.Lock()
        self.cache_size = 200_000

    @property
    def model(self) -> Any:
        return self.scorer.model

    @property
    def model_version(self) -> str:
        return str(self.scorer.model.version)

    def _prepare(self, record_id: str, data: Mapping[str, Any] | str) -> Any:
        from mpi.matching.record import prepare

        cache = self._prepared
        hit = cache.get(record_id)
        if hit is not None and hit[0] == data:
            with self._prepared_lock:
                if record_id in cache:
                    cache.move_to_end(record_id)
            return hit[1]
        parsed = json.loads(data) if isinstance(data, str) else data
        if (hit is not None and isinstance(data, str) and not isinstance(hit[0], str)
                and hit[0] == parsed):
            # A record met first as an arriving record (its matching form a dict), now as
            # a candidate (the stored text of that same form): the same record, prepared.
            prepared = hit[1]
        else:
            prepared = prepare(to_match_record(parsed))
        with self._prepared_lock:
            # Kept with what it was made from (the stored text, mostly: a string compare,
            # and a fraction of a parsed dict's memory) to tell an updated record apart.
            cache[record_id] = (data, prepared)
            cache.move_to_end(record_id)
            while len(cache) > self.cache_size:
                cache.popitem(last=False)
        return prepared

    def keys(self, data: Mapping[str, Any]) -> list[str]:
        from mpi.matching.blocking import blocking_keys

        return blocking_keys(self._prepare(str(data.get("record_id") or ""), data))

    def probes(self, keys: Sequence[str]) -> list[str]:
        from mpi.matching.blocking import probe_keys

        return probe_keys(keys)

    def decide(self, data: Mapping[str, Any], candidates: Sequence[Candidate], *,
               excluded: frozenset[str] = frozenset()) -> PersonDecision:
        from mpi.matching.linker import decide

        scorer = self.scorer
        incoming = self._prepare(str(data.get("record_id") or ""), data)
        grouped: dict[Any, list[Any]] = {}
        for c in candidates:
            grouped.setdefault(c.person_id, []).append(
                scorer.score(incoming, self._prepare(c.record_id, c.match_data)))
        decision = decide(grouped, self.link_threshold, self.review_threshold, excluded,
                          self.twin_guard)
        ranked = tuple(RankedPerson(str(c.person_id), c.probability, c.best.right_id,
                                    pair_score(c.best), len(grouped[str(c.person_id)]))
                       for c in decision.candidates)
        by_id = {r.person_id: r for r in ranked}
        return PersonDecision(
            decision.kind, str(decision.person_id) if decision.person_id is not None else None,
            decision.probability or (ranked[0].probability if ranked else 0.0), ranked,
            tuple(by_id[str(c.person_id)] for c in decision.duplicates),
            model_version=str(scorer.model.version))

    def use_frequencies(self, total: int, counts: Mapping[str, Mapping[str, float]]) -> None:
        from mpi.matching.scoring import Scorer, frequencies_from_counts

        # One reference swapped: a decision in another thread scores with the old
        # tables or the new, never a mix.
        self._registry = frequencies_from_counts(counts, total)
        self.scorer = Scorer(self.model, registry=self._registry)

    def reload_model(self) -> str | None:
        from mpi.matching.model import Model
        from mpi.matching.scoring import Scorer

        if self.model_file is None:
            return None
        seen = _signature(self.model_file)
        if seen == self._file_seen:
            return None
        model = Model.load(self.model_file)  # raises: the model in use stays
        self._file_seen = seen
        if model.version == self.model_version:
            return None
        self.scorer = Scorer(model, registry=self._registry)
        return str(model.version)

    def same_person(self, left: Sequence[Candidate], right: Sequence[Candidate]
                    ) -> float | None:
        from mpi.matching.linker import same_person

        rights = [self._prepare(b.record_id, b.match_data) for b in right]
        scores = [self.scorer.score(self._prepare(a.record_id, a.match_data), b)
                  for a in left for b in rights]
        return same_person(scores, self.link_threshold, self.twin_guard)


def _signature(path: Path | None) -> tuple[int, int, int] | None:
    """What tells a rewritten file (a rename over it, as ``mpi train`` writes, or a
    Kubernetes ConfigMap's swap) from the one read."""
    if path is None:
        return None
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


def pair_score(score: Any) -> PairScore:
    """The matcher's score behind the seam; its explanation is worked out when read."""
    def explain() -> tuple[str, tuple[tuple[str, str, float], ...]]:
        return score.reason, tuple((c.comparison, c.label, round(c.weight, 4))
                                   for c in score.comparisons)

    return PairScore(score.probability, score.weight, explain=explain)


def to_match_record(data: Mapping[str, Any]) -> Any:
    from mpi.matching.record import MatchRecord

    born = data.get("birth_date")
    return MatchRecord(
        record_id=str(data.get("record_id") or ""),
        source=data.get("source"), given_name=data.get("given_name"),
        middle_name=data.get("middle_name"), family_name=data.get("family_name"),
        birth_date=date.fromisoformat(born) if born else None, sex=data.get("sex"),
        address_line=data.get("address_line"), city=data.get("city"),
        state=data.get("state"), postal_code=data.get("postal_code"),
        phone=data.get("phone"), ssn=data.get("ssn"),
        identifiers=tuple((s, v) for s, v in data.get("identifiers") or ()),
        mothers_maiden_name=data.get("mothers_maiden_name"),
        birth_partial=data.get("birth_partial"),
        birth_order=data.get("birth_order"))
