"""Batch tools over in-memory records: dedupe, link two files, report on blocking.

``dedupe`` runs the online :class:`~mpi.matching.linker.Linker` record by record, so a
batch gives the same answer the identity layer would give for the same arrival order.
Reviews (probability between the thresholds) are not merged: such a record starts its own
cluster and is counted. Persons a record proves one are merged as the service would.

Names weigh by their frequency as in the service: the model's TF tables when it has them
(``mpi train`` puts them in), and the file counted as the service counts its registry
(:func:`~mpi.matching.scoring.registry_frequencies`), which only lowers the weight of
values common in it. With a model that has no TF tables (the shipped one), a rare name
weighs no more than the model says, online or here: TF tables computed from the file
raised the multi-source benchmark's batch recall from 0.887 to 0.939 and lowered its
precision from 0.992 to 0.985, so the batch tools and the service disagreed on the same
input (``mpi train`` on the file, then ``--model``, gives both the file's frequencies).
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from mpi.matching.blocking import blocking_keys, probe_keys
from mpi.matching.linker import Linker, twin_pattern
from mpi.matching.model import Model
from mpi.matching.record import MatchRecord, PreparedRecord, prepare
from mpi.matching.scoring import Scorer, registry_frequencies

T = TypeVar("T")
Progress = Callable[[Iterable[Any], str, int], Iterable[Any]]


def _no_progress(items: Iterable[T], _label: str, _total: int) -> Iterable[T]:
    return items


@dataclass
class DedupeResult:
    clusters: dict[str, Hashable]  # record id -> cluster (person) id
    decisions: Counter[str] = field(default_factory=Counter)  # link / review / new
    possible_twins: int = 0  # links the twin guard turned into reviews
    possible_duplicates: int = 0  # links where another person also passed the threshold
    merged_persons: int = 0  # persons a record proved one, merged (auto_merge)
    pairs_scored: int = 0
    model_version: str = ""


def dedupe(records: Iterable[MatchRecord | PreparedRecord], model: Model | None = None, *,
           link_threshold: float = 0.95, review_threshold: float = 0.80,
           auto_merge: bool = True, twin_guard: bool = True,
           progress: Progress = _no_progress) -> DedupeResult:
    """Cluster records with the online rule, record by record in the given order.

    With ``auto_merge`` (as MATCHING_AUTO_MERGE online), persons a later record proves one
    are merged when it arrives; the result is what the online path would hold.
    """
    model = model or Model.default()
    prepared = [prepare(r) for r in progress(records, "preparing", 0)]
    # The file is the registry: its frequencies lower weights as the service's do.
    linker = Linker(model, link_threshold=link_threshold, review_threshold=review_threshold,
                    term_frequencies=model.term_frequencies,
                    registry=registry_frequencies(prepared),
                    twin_guard=twin_guard, auto_merge=auto_merge)
    result = DedupeResult({}, model_version=model.version)
    for r in progress(prepared, "deduplicating", len(prepared)):
        decision = linker.add(r)
        result.decisions[decision.kind] += 1
        result.possible_duplicates += bool(decision.duplicates)
        result.possible_twins += bool(decision.note)
    result.merged_persons = len(linker.merges)
    result.clusters = linker.clusters
    result.pairs_scored = linker.pairs_scored
    return result


@dataclass(frozen=True, slots=True)
class LinkPair:
    left_id: str
    right_id: str
    probability: float
    weight: float
    reason: str


@dataclass
class LinkResult:
    pairs: list[LinkPair]  # linked, best first
    held: list[LinkPair] = field(default_factory=list)  # twin-like: for review, not linked


def link(left: Iterable[MatchRecord | PreparedRecord],
         right: Iterable[MatchRecord | PreparedRecord], model: Model | None = None, *,
         threshold: float = 0.95, one_to_one: bool = True, twin_guard: bool = True,
         progress: Progress = _no_progress) -> LinkResult:
    """Pairs (left, right) at or above ``threshold``, best first.

    With ``one_to_one`` (for two files that are each free of duplicates) every record is
    paired at most once: pairs are taken greedily by weight, best first.

    With ``twin_guard`` (as MATCHING_TWIN_GUARD online) a pair whose evidence has the twin
    pattern (:func:`~mpi.matching.linker.twin_pattern`: no SSN or identifier in common,
    and names and birth dates that fit two members of one family) is not linked but
    ``held`` for review, as the service holds it. One to one, as if the right file's
    records arrived at a service that holds the left file's: a held pair takes its right
    record (its decision is the review: it is not paired with a weaker candidate instead)
    and leaves the left record free for a record of the right file that fits it better.
    """
    model = model or Model.default()
    a = [prepare(r) for r in left]
    b = [prepare(r) for r in right]
    scorer = Scorer(model, model.term_frequencies, registry=registry_frequencies(a + b))
    index: dict[str, list[int]] = {}
    for j, r in enumerate(b):
        for key in blocking_keys(r):
            index.setdefault(key, []).append(j)
    min_weight = model.weight_for(threshold)
    found = []
    for r in progress(a, "linking", len(a)):
        seen: set[int] = set()
        for key in probe_keys(blocking_keys(r)):
            seen.update(index.get(key, ()))
        for j in seen:
            s = scorer.score(r, b[j])
            if s.weight >= min_weight and s.probability >= threshold:
                found.append(s)
    found.sort(key=lambda s: (-s.weight, s.left_id, s.right_id))
    result = LinkResult([])
    used_l: set[str] = set()
    used_r: set[str] = set()
    for s in found:
        if one_to_one and (s.left_id in used_l or s.right_id in used_r):
            continue
        pair = LinkPair(s.left_id, s.right_id, s.probability, s.weight, s.reason)
        if twin_guard and twin_pattern([s]):
            result.held.append(pair)
            used_r.add(s.right_id)
        else:
            result.pairs.append(pair)
            used_l.add(s.left_id)
            used_r.add(s.right_id)
    return result


def blocking_report(records: Iterable[MatchRecord | PreparedRecord],
                    labels: Mapping[str, str] | None = None,
                    other: Sequence[MatchRecord | PreparedRecord] | None = None, *,
                    max_block: int = 500, show_missed: int = 0) -> dict[str, Any]:
    """Candidate counts per record from the blocking keys, ignoring keys shared by more
    than ``max_block`` records (as linking does); with ``labels`` (record id -> true
    entity) also pair completeness, the share of true pairs that share a usable key, and
    what the missed pairs lack: per field, how many missed pairs have it missing on one
    side or both (``missed_without``), and up to ``show_missed`` of them by record id
    with the fields each side has. With ``other``, counts candidates in ``other`` for
    each record (linking two files)."""
    base = [prepare(r) for r in records]
    targets = [prepare(r) for r in other] if other is not None else base
    keys_of = [set(blocking_keys(r)) for r in targets]
    index: dict[str, list[int]] = {}
    for j, keys in enumerate(keys_of):
        for k in keys:
            index.setdefault(k, []).append(j)
    index = {k: members for k, members in index.items() if len(members) <= max_block}
    counts = []
    key_counts = []
    pairs: set[tuple[int, int]] = set()
    own_keys = keys_of if other is None else [set(blocking_keys(r)) for r in base]
    for i, keys in enumerate(own_keys):
        key_counts.append(len(keys))
        cand: set[int] = set()
        for k in probe_keys(list(keys)):  # as linking looks candidates up
            cand.update(index.get(k, ()))
        if other is None:
            cand.discard(i)
            pairs.update((min(i, j), max(i, j)) for j in cand)
        else:
            pairs.update((i, j) for j in cand)
        counts.append(len(cand))
    counts.sort()
    n = len(counts)
    report: dict[str, Any] = {
        "records": n,
        "keys_per_record_mean": round(statistics.fmean(key_counts), 2) if n else 0,
        "candidates_mean": round(statistics.fmean(counts), 2) if n else 0,
        "candidates_p50": counts[n // 2] if n else 0,
        "candidates_p99": counts[min(n - 1, int(n * 0.99))] if n else 0,
        "candidates_max": counts[-1] if n else 0,
        "candidate_pairs": len(pairs),
    }
    if labels is not None:
        true_pairs = _true_pairs(base, targets, labels, same=other is None)
        missed = sorted(p for p in true_pairs if p not in pairs)
        report["true_pairs"] = len(true_pairs)
        report["pair_completeness"] = (round(1 - len(missed) / len(true_pairs), 6)
                                       if true_pairs else None)
        report["missed_pairs"] = len(missed)
        without: Counter[str] = Counter()
        for i, j in missed:
            have_i, have_j = _fields(base[i]), _fields(targets[j])
            without.update(f for f in _REPORTED if f not in have_i or f not in have_j)
        report["missed_without"] = dict(sorted(without.items()))
        report["missed_examples"] = [
            {"left": base[i].record_id, "right": targets[j].record_id,
             "left_has": sorted(_fields(base[i])), "right_has": sorted(_fields(targets[j]))}
            for i, j in missed[:show_missed]]
    return report


_REPORTED = ("given_name", "middle_name", "family_name", "birth_date", "address_line",
             "postal_code", "phone", "ssn")


def _fields(r: PreparedRecord) -> set[str]:
    """The fields a prepared record has (placeholders count as missing)."""
    present = {"given_name": r.given, "middle_name": r.middle, "family_name": r.family,
               "birth_date": r.dob, "address_line": r.address, "postal_code": r.postcode,
               "phone": r.phone, "ssn": r.ssn}
    return {f for f, v in present.items() if v}


def _true_pairs(base: Sequence[PreparedRecord], targets: Sequence[PreparedRecord],
                labels: Mapping[str, str], same: bool) -> set[tuple[int, int]]:
    groups: dict[str, list[int]] = {}
    for j, r in enumerate(targets):
        if r.record_id in labels:
            groups.setdefault(labels[r.record_id], []).append(j)
    out: set[tuple[int, int]] = set()
    for i, r in enumerate(base):
        label = labels.get(r.record_id)
        for j in groups.get(label, ()) if label is not None else ():
            if same and j != i:
                out.add((min(i, j), max(i, j)))
            elif not same:
                out.add((i, j))
    return out
