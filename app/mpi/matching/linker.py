"""The decision rule shared by the online (identity layer) and batch paths.

:func:`decide` is pure: given the incoming record's scores against candidate persons,
grouped by person, it says link / review / new.

How a record is scored against a *person* (several records): for each comparison, the
weights of the incoming record against that person's records where the comparison is
not null are combined, and the results summed: the best of them where all agree to some
degree, their median where some disagree::

    W(person) = sum over comparisons c of  best or median_{r in person, level_c(x, r) != null}
                                           w_c(x, r)

That is Fellegi-Sunter against the person as a whole, with each of the person's records
a witness of what the person's values are: a record that agrees with one of the
person's records but is contradicted by most of them gets the contradiction counted, so
a person is never reached through one weak (or one lucky) pair — no chaining (with two
records, the median is their mean: one agreeing record does not outvote the other). A
strong pair is not drowned by one odd record of a person whose other records agree with
it (a clerk's replaced given name on one of five records). A record that lacks a field
(a lab record without an address) does not dilute that field, so sparse records do not
split a person. The identity layer should pass the scores against *all* records of each
candidate person (not only those found by blocking).

Decisions:

- persons the steward declared "not the same person" (``excluded``) are never chosen;
- best person at or above ``link_threshold``: **link**, and every other person also at or
  above it is reported in ``duplicates`` (a possible duplicate);
- best person at or above ``review_threshold``: **review** (the best is suggested);
- otherwise **new**.
- Twin guard: a link whose evidence has the twin pattern — no SSN or identifier in
  common, and either two different birth orders of a multiple birth, or the same given
  name with birth years a generation (``GENERATION_YEARS``) apart, or only what a
  household shares (different given names and no birth date to compare, or no given name
  and no agreeing birth date, against every record), or the given name
  *different* (not a nickname, typo, initial or swap)
  against every record of the person that has one with the date of birth equal, or the
  given name the same and the middle names different (two full names, or two initials,
  that disagree) against every such record, whatever the dates say (a father and son of
  one name at one address, twins, household members), or given names that agree only
  as variants (a nickname or another language's form: John / Ivan / Johann, sounds
  alike, fuzzy) with no address or phone in common either — becomes a **review**
  (``note`` says why). Twins share a
  family name, a birth date, an address and often a phone; Fellegi-Sunter assumes the
  fields independent and would add those up into a confident link.

Fragments reconcile (:func:`merge_candidates`, :func:`same_person`): after a link, each
other person the record reached at ``review_threshold`` or above is compared with the
linked person *as wholes* (the record now among its records); when the two reach
``link_threshold`` without the twin pattern, and no steward kept them apart, they are one
person and are merged. A record that bridges two fragments of one person founded before
it arrived (a lab record with the SSN, an old address and the new) thus joins them; a
record that merely resembles two different people does not, because their own records
disagree. Persons are grown one at a time, best-ranked first, and the person with more
records is kept (on a tie, the one the record linked to).

:class:`Linker` applies exactly this rule record by record over an in-memory index of
blocking keys: the batch ``dedupe`` uses it, so batch and online give the same answers.
"""

from __future__ import annotations

import statistics
from collections.abc import Collection, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from mpi.matching.blocking import blocking_keys, probe_keys
from mpi.matching.comparisons import COMPARISONS, NAMES_INDEX, NULL
from mpi.matching.model import Model
from mpi.matching.record import MatchRecord, PreparedRecord, prepare
from mpi.matching.scoring import Score, Scorer

DecisionKind = Literal["link", "review", "new"]


@dataclass(frozen=True, slots=True)
class Candidate:
    person_id: Hashable
    probability: float  # of the person as a whole (see module docstring)
    weight: float
    best: Score  # the single best-scoring record of that person


@dataclass(frozen=True)
class Decision:
    kind: DecisionKind
    person_id: Hashable | None  # linked person (link) or suggested one (review)
    probability: float | None
    candidates: tuple[Candidate, ...]  # ranked, best first; excluded persons left out
    duplicates: tuple[Candidate, ...] = ()  # other persons also at or above link_threshold
    excluded: tuple[Hashable, ...] = field(default=())  # excluded persons that were offered
    note: str = ""  # why a link was turned into a review (twin guard)


_GIVEN = NAMES_INDEX["given_name"]
_DOB = NAMES_INDEX["birth_date"]
_DOB_EXACT = 1
_DOB_AGREES = (1, 2, 3)  # exact, day and month swapped, one digit off
_SSN = NAMES_INDEX["ssn"]
_IDS = NAMES_INDEX["identifiers"]
_GIVEN_DIFFERENT = len(COMPARISONS[_GIVEN].labels) - 1
_MIDDLE = NAMES_INDEX["middle_name"]
_ADDRESS = NAMES_INDEX["address_line"]
_PHONE = NAMES_INDEX["phone"]
# Given-name levels that agree only as variants: a nickname or another language's form
# (John / Ivan / Johann), sounds alike (John / Juan), fuzzy. Weaker evidence than the
# same name: with nothing else that places the two records in one life (an address, a
# phone, an SSN, an identifier) they may be two brothers as well as one man.
_GIVEN_VARIANT = frozenset(i for i, label in enumerate(COMPARISONS[_GIVEN].labels)
                           if label.startswith(("nickname", "another language", "sounds alike",
                                                    "fuzzy", "matches the other's family")))
_MIDDLE_DIFFERENT = len(COMPARISONS[_MIDDLE].labels) - 1
TWIN_NOTE = ("possible twin or relative: no shared SSN or identifier, and names and birth "
             "dates that fit two members of one family (twins, a son named after his "
             "father, another given or middle name, only a family name, address and phone "
             "in common) as well as one person")


def _names_differ(sc: Score) -> str | None:
    """How the pair's names say two people: "given" (the given names differ), "middle"
    (the same given name, different middle names), "" (they do not); None when there is
    no given name to compare."""
    given = sc.levels[_GIVEN]
    if given == NULL:
        return None
    if given == _GIVEN_DIFFERENT:
        return "given"
    if given in _GIVEN_VARIANT and sc.levels[_ADDRESS] not in (1, 2) and sc.levels[_PHONE] != 1:
        return "variant"
    return "middle" if given == 1 and sc.levels[_MIDDLE] == _MIDDLE_DIFFERENT else ""


def twin_pattern(scores: Sequence[Score]) -> bool:
    """No SSN (exact or one typo) or identifier shared with any record, and: a different
    birth order within a multiple birth against some record (twins say so themselves), or
    the same given name with birth years a generation apart against some record (a son
    named after his father), or against every record only what a household shares (see
    :func:`_household_only`), or against every record with a given name the same given
    name and a different middle name, or else names that differ with the same date of
    birth as some record."""
    if any(sc.levels[_SSN] in (1, 2) or sc.levels[_IDS] == 1 for sc in scores):
        return False
    if any(_birth_orders_differ(sc) or _generation_apart(sc) for sc in scores):
        return True
    if all(_household_only(sc) for sc in scores):
        return True
    differ = [d for d in map(_names_differ, scores) if d is not None]
    if not differ or not all(differ):
        return False
    return (all(d in ("middle", "variant") for d in differ)
            or any(sc.levels[_DOB] == _DOB_EXACT for sc in scores))


#: Years between the births of a parent and a child, at least: a pair of one given name
#: born this far apart is a father and a son (or a mother and a daughter) as often as one
#: person with a mistyped year, and a wrong link merges two people's records.
GENERATION_YEARS = 15


def _generation_apart(sc: Score) -> bool:
    left, right = sc.left.record.birth_date, sc.right.record.birth_date
    return (sc.levels[_GIVEN] == 1 and left is not None and right is not None
            and abs(left.year - right.year) >= GENERATION_YEARS)


def _household_only(sc: Score) -> bool:
    """What the pair shares places it in one household, not one person: the given names
    differ and there is no birth date to compare, or one has no given name (a placeholder
    such as "Resident" counts as none) and the birth dates do not agree."""
    given, born = sc.levels[_GIVEN], sc.levels[_DOB]
    return ((given == _GIVEN_DIFFERENT and born == NULL)
            or (given == NULL and born not in _DOB_AGREES))


def _birth_orders_differ(sc: Score) -> bool:
    left, right = sc.left.record.birth_order, sc.right.record.birth_order
    return left is not None and right is not None and left != right


def person_weight(scores: Sequence[Score]) -> float:
    """Sum over comparisons of the person's evidence (correlated ones counted once, as in
    ``scoring``): where every record that has the
    field agrees to some degree, the best agreement counts (a strong pair is not dragged
    down by the person's weaker records: an old address, a name with a typo); where some
    record disagrees, the median over the records counts (so one sparse record cannot
    bridge a person whose other records contradict the newcomer, and one odd record
    cannot outweigh the others that agree)."""
    if len(scores) == 1:
        return scores[0].weight
    evidence: list[float | None] = []
    for i in range(len(COMPARISONS)):
        weights = [sc.raw_weights[i] for sc in scores if sc.levels[i] != NULL]
        evidence.append((max(weights) if min(weights) >= 0 else statistics.median(weights))
                        if weights else None)
    # A correlated group (address and phone) counts once for the person as for a pair.
    return scores[0].scorer.combine(evidence)


def merge_candidates(decision: Decision, review_threshold: float) -> list[Hashable]:
    """The persons to compare as wholes with the one a record was linked to: every other
    candidate the record reached at ``review_threshold`` or above, best first (persons a
    steward kept apart from the record are not candidates)."""
    if decision.kind != "link":
        return []
    return [c.person_id for c in decision.candidates
            if c.person_id != decision.person_id and c.probability >= review_threshold]


def same_person(scores: Sequence[Score], link_threshold: float,
                twin_guard: bool = True) -> float | None:
    """Whether two persons are one, judged as wholes: ``scores`` has every record of one
    against every record of the other, aggregated as in :func:`person_weight` (a strong
    pair counts where nothing contradicts it, the median where something does). The
    probability when it reaches ``link_threshold`` and (with ``twin_guard``) the scores
    do not show the twin pattern; otherwise None.

    Wholes, not the arriving record alone: merging whenever a record cleared the link
    threshold against two persons (each on its own) lowered the multi-source benchmark's
    online precision from 0.992 to 0.989 (batch 0.985 to 0.978) for 0.001 of recall: a
    sparse record fits two relatives as well as one person."""
    if not scores:
        return None
    probability = scores[0].model.probability(person_weight(scores))
    if probability < link_threshold or (twin_guard and twin_pattern(scores)):
        return None
    return probability


def decide(candidates: Mapping[Hashable, Sequence[Score]], link_threshold: float,
           review_threshold: float, excluded: Collection[Hashable] = frozenset(),
           twin_guard: bool = True) -> Decision:
    """Link, review or new for one incoming record (see the module docstring)."""
    if not 0.0 <= review_threshold <= link_threshold <= 1.0:
        raise ValueError("need 0 <= review_threshold <= link_threshold <= 1")
    ranked: list[Candidate] = []
    offered_excluded = []
    for person, scores in candidates.items():
        if not scores:
            continue
        if person in excluded:
            offered_excluded.append(person)
            continue
        weight = person_weight(scores)
        best = max(scores, key=lambda s: s.weight)
        ranked.append(Candidate(person, best.model.probability(weight), weight, best))
    ranked.sort(key=lambda c: (-c.weight, str(c.person_id)))
    top = tuple(ranked)
    excl = tuple(sorted(offered_excluded, key=str))
    if top and top[0].probability >= link_threshold and twin_guard and twin_pattern(
            candidates[top[0].person_id]):
        return Decision("review", top[0].person_id, top[0].probability, top, (), excl, TWIN_NOTE)
    if top and top[0].probability >= link_threshold:
        dups = tuple(c for c in top[1:] if c.probability >= link_threshold)
        return Decision("link", top[0].person_id, top[0].probability, top, dups, excl)
    if top and top[0].probability >= review_threshold:
        return Decision("review", top[0].person_id, top[0].probability, top, (), excl)
    return Decision("new", None, None, top, (), excl)


class Linker:
    """Online linking in memory: each added record is decided by :func:`decide` against the
    persons found through a dict index of blocking keys, then joins its person (link) or
    starts a new one (review and new: the review is reported); after a link, with
    ``auto_merge``, the persons it proves one are merged (see the module docstring).

    Person ids are the record id of the person's first record.
    """

    def __init__(self, model: Model, *, link_threshold: float = 0.95,
                 review_threshold: float = 0.80,
                 term_frequencies: Mapping[str, Mapping[str, float]] | None = None,
                 registry: Mapping[str, Mapping[str, float]] | None = None,
                 max_block: int = 500, twin_guard: bool = True,
                 auto_merge: bool = True) -> None:
        self.model = model
        self.auto_merge = auto_merge
        self.scorer = Scorer(self.model, term_frequencies, registry=registry)
        self.link_threshold = link_threshold
        self.review_threshold = review_threshold
        self.max_block = max_block  # keys shared by more records than this are ignored
        self.twin_guard = twin_guard
        self._index: dict[str, list[Hashable]] = {}
        self._members: dict[Hashable, list[PreparedRecord]] = {}
        self._person_of: dict[str, Hashable] = {}
        self.pairs_scored = 0
        self.oversized_keys = 0
        self._apart: list[tuple[Hashable, Hashable]] = []  # steward: "not the same person"
        self._alias: dict[Hashable, Hashable] = {}  # merged person -> the one it went into
        self.merges: list[tuple[Hashable, Hashable, float]] = []  # (kept, merged, probability)

    def candidates(self, record: PreparedRecord) -> set[Hashable]:
        persons: set[Hashable] = set()
        for key in probe_keys(blocking_keys(record)):
            bucket = self._index.get(key)
            if bucket:
                if len(bucket) > self.max_block:
                    self.oversized_keys += 1
                    continue
                persons.update(bucket)
        return persons

    def decide(self, record: MatchRecord | PreparedRecord,
               excluded: Collection[Hashable] = frozenset()) -> Decision:
        """The decision for ``record`` against the persons so far (nothing is changed)."""
        p = prepare(record)
        grouped = {}
        for person in self.candidates(p):
            grouped[person] = [self.scorer.score(p, r) for r in self._members[person]]
            self.pairs_scored += len(grouped[person])
        return decide(grouped, self.link_threshold, self.review_threshold, excluded,
                      self.twin_guard)

    def add(self, record: MatchRecord | PreparedRecord,
            excluded: Collection[Hashable] = frozenset()) -> Decision:
        p = prepare(record)
        if p.record_id in self._person_of:
            raise ValueError(f"record {p.record_id!r} was already added")
        decision = self.decide(p, excluded)
        person = decision.person_id if decision.kind == "link" else p.record_id
        assert person is not None
        self._members.setdefault(person, []).append(p)
        self._person_of[p.record_id] = person
        self._apart.extend((person, other) for other in excluded)
        for key in blocking_keys(p):
            bucket = self._index.setdefault(key, [])
            if person not in bucket:
                bucket.append(person)
        if self.auto_merge and decision.kind == "link":
            for other in merge_candidates(decision, self.review_threshold):
                merged = self._reconcile(person, other)
                if merged is not None:
                    self.merges.append(merged)
        return decision

    def _reconcile(self, first: Hashable, second: Hashable
                   ) -> tuple[Hashable, Hashable, float] | None:
        """Merge the persons ``first`` and ``second`` (or those they were merged into)
        when :func:`same_person` says they are one and no steward kept them apart: the
        person with more records is kept (on a tie, ``first``)."""
        a, b = self._current(first), self._current(second)
        if a == b or any({self._current(x), self._current(y)} == {a, b}
                         for x, y in self._apart):
            return None
        scores = [self.scorer.score(x, y) for x in self._members[a] for y in self._members[b]]
        self.pairs_scored += len(scores)
        probability = same_person(scores, self.link_threshold, self.twin_guard)
        if probability is None:
            return None
        keep, drop = (a, b) if len(self._members[a]) >= len(self._members[b]) else (b, a)
        for r in self._members.pop(drop):
            self._members[keep].append(r)
            self._person_of[r.record_id] = keep
            for key in blocking_keys(r):
                self._index[key] = list(dict.fromkeys(
                    keep if x == drop else x for x in self._index[key]))
        self._alias[drop] = keep
        return keep, drop, probability

    def _current(self, person: Hashable) -> Hashable:
        while person in self._alias:
            person = self._alias[person]
        return person

    def person_of(self, record_id: str) -> Hashable:
        return self._person_of[record_id]

    @property
    def clusters(self) -> dict[str, Hashable]:
        """record id -> person id, for every record added."""
        return dict(self._person_of)
