"""Record-level linking: every record belongs to exactly one person.

Linking runs inside the patient service's unit of work, in two steps, so that the
record's own change event (which names its person) comes before the link's:

    placement = linking.place(patient, pk)      # decide: reads and key locks only
    ...the record's audit row and PatientCreated/PatientUpdated event, with placement.person_id
    linking.link(tx, placement)                 # write the link, keys, history, reviews

``place_new``/``link_new`` do the same for a batch of new records (``mpi import``), each
decided against the persons known before it, including those earlier records of the
batch joined or founded. Manual decisions win: a record a steward placed is never moved
by the engine, and a pair declared "not the same person" is never linked or proposed
again.

Fragments reconcile (``auto_merge``, MATCHING_AUTO_MERGE): when a record links to one
person and also reaches others at the review threshold or above, each is compared with
the linked person as wholes (``Engine.same_person``, the rule of
``mpi.matching.linker``); those that are one person with it are merged in the record's
transaction (:class:`~mpi.identity.merging.Merging`, ``how: auto``, undoable), unless a
steward kept them apart. The record joins the merged person that had the most records.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from mpi.domain.audit import AuditTag
from mpi.domain.errors import ConcurrentChange
from mpi.domain.events import EventType
from mpi.domain.patient import Patient
from mpi.identity.engine import Candidate, Engine, PersonDecision
from mpi.identity.merging import Merging
from mpi.identity.records import match_data
from mpi.storage.identity import IdentityRepository
from mpi.storage.models import BlockingKeyRow, LinkEventRow, PatientLinkRow
from mpi.storage.work import Transaction

# Keys shared by more persons than this are ignored when looking for candidates.
MAX_BLOCK = 500


@dataclass(frozen=True)
class AutoMerge:
    """A person a record proved one with the person it joins: merged into it."""

    person_id: str
    probability: float  # the two persons compared as wholes


@dataclass(frozen=True)
class Placement:
    """Where a record goes, decided before anything is written.

    ``person_pk`` is None when the record founds a new person (``person_id`` is then the
    id it will get). ``decision`` is None for a record a steward placed by hand: it
    stays where it is.
    """

    patient_id: str
    patient_pk: int
    data: dict[str, Any]
    keys: list[str]
    person_id: str
    person_pk: int | None
    how: str
    previous_pk: int | None
    decision: PersonDecision | None
    merges: tuple[AutoMerge, ...] = ()

    @property
    def probability(self) -> float | None:
        return self.decision.probability if self.decision and self.how == "auto" else None


class Linking:
    def __init__(self, engine: Engine, repo: IdentityRepository, merging: Merging, *,
                 new_id: Callable[[], uuid.UUID], auto_merge: bool = True):
        self.engine = engine
        self.auto_merge = auto_merge
        self._repo = repo
        self._merging = merging
        self._new_id = new_id

    # --- one record, created or updated ----------------------------------------------------------

    def place(self, patient: Patient, patient_pk: int) -> Placement:
        """Decide where a record just written goes (locks its keys and its link)."""
        data = match_data(patient)
        keys = self.engine.keys(data)
        # The keys it holds and those it looks up: a record arriving at once that either
        # would find shares one of them.
        self._repo.lock_keys(sorted(set(keys) | set(self.engine.probes(keys))))
        current = self._repo.link_of(patient_pk, lock=True)
        previous = current.person_id if current is not None else None
        if current is not None and current.manual:
            # A steward placed this record: keep it there, refresh what it is matched on.
            person_id = str(self._repo.person_by_pk(current.person_id).id)
            return Placement(patient.id, patient_pk, data, keys, person_id, previous,
                             "manual", previous, None)
        decision, members, stored = self._decide(data, keys, patient_pk)
        alone = previous is None or self._repo.live_record_pks(previous) == [patient_pk]
        merges: tuple[AutoMerge, ...] = ()
        if decision.kind == "link" and decision.person_id is not None:
            incoming = Candidate(patient.id, decision.person_id, data)
            person_id, merges = self._reconcile(decision, incoming, members,
                                                self._kept_apart(stored))
            person_pk: int | None = self._repo.person(person_id).pk
            how = "auto"
        elif current is not None and previous is not None and (alone
                                                               or decision.kind == "review"):
            person_pk, how = previous, current.how
            person_id = str(self._repo.person_by_pk(previous).id)
        else:
            person_pk, person_id, how = None, str(self._new_id()), "new"
        return Placement(patient.id, patient_pk, data, keys, person_id, person_pk, how,
                         previous, decision, merges)

    def link(self, tx: Transaction, placement: Placement) -> None:
        """Write what :meth:`place` decided, in ``tx``."""
        p = placement
        self._repo.replace_keys(p.patient_pk, p.keys)
        if p.decision is None:
            self._repo.refresh_match_data(p.patient_pk, p.data)
            return
        version = self._version(p.decision)
        target = p.person_pk
        if target is None:
            target = self._repo.new_person(person_id=uuid.UUID(p.person_id), now=tx.now).pk
        merged = {m.person_id: self._repo.person(m.person_id).pk for m in p.merges}
        if target != p.previous_pk or merged:
            self._claim([target, *merged.values()], tx)
        self._repo.set_link(p.patient_pk, target, match_data=p.data, manual=False, how=p.how,
                            probability=p.probability, model_version=version, now=tx.now)
        if target != p.previous_pk:
            previous = p.previous_pk
            if previous is not None:
                self._repo.touch([previous], tx.now)
            actor = tx.actor.user_id
            detail = ({"reason": p.decision.ranked[0].best.reason} if p.how == "auto"
                      else None)
            self._repo.add_history(target, "linked" if p.how == "auto" else "created",
                                   actor=actor, now=tx.now, patient_pk=p.patient_pk,
                                   probability=p.probability, model_version=version,
                                   detail=detail)
            previous_id = None
            if previous is not None:
                previous_id = self._repo.person_ids([previous])[previous]
                self._repo.add_history(previous, "moved_out", actor=actor, now=tx.now,
                                       patient_pk=p.patient_pk,
                                       detail={"to_person_id": p.person_id})
            self._linked(tx, p, previous_id)
        self._merge_into(tx, p, target, merged)
        self._reviews_for(tx, p.decision, p.patient_id, p.patient_pk, target,
                          set(merged.values()))

    # --- a batch of new records ------------------------------------------------------------------

    def place_new(self, records: Sequence[tuple[Patient, int]], *,
                  before_lookup: Callable[[], None] | None = None) -> list[Placement]:
        """Decide, one at a time in order, where each new record goes: against the persons
        known before it, including those earlier records of the batch joined, founded or
        merged. Reads are batched (a handful of statements for the whole list), so
        ``mpi import`` is fast. New records carry no steward decision yet, so none is
        excluded. ``before_lookup``: called once the records' keys are computed, before
        the persons they select are read (``mpi import --workers`` waits there for its
        turn)."""
        datas = [match_data(p) for p, _ in records]
        keys = [self.engine.keys(d) for d in datas]  # each record's, as stored
        probes = [self.engine.probes(ks) for ks in keys]  # what each looks up
        if before_lookup is not None:
            before_lookup()
        if not records:
            return []
        # The keys locked and the persons they select read in one round trip: the look-up
        # starts once the locks are held.
        index, members, person_pk_ids, oversized = self._known_persons(
            sorted({k for ks in probes for k in ks}),
            lock=sorted({k for ks in keys + probes for k in ks}))
        pk_of = {v: k for k, v in person_pk_ids.items()}
        stored: dict[str, set[int]] = {v: {k} for k, v in person_pk_ids.items()}
        kept_apart = self._kept_apart(stored)  # follows ``stored`` as the batch merges

        placed: list[Placement] = []
        for (patient, patient_pk), data, ks, looks in zip(records, datas, keys, probes,
                                                          strict=True):
            # As one record at a time would see them: a key the batch's records take
            # past MAX_BLOCK persons selects nothing from then on.
            persons = {person for k in looks if k not in oversized
                       for person in index.get(k, ())}
            candidates = [c for person in sorted(persons) for c in members.get(person, ())]
            decision = self.engine.decide(data, candidates)
            merges: tuple[AutoMerge, ...] = ()
            if decision.kind == "link" and decision.person_id is not None:
                incoming = Candidate(patient.id, decision.person_id, data)
                person_id, merges = self._reconcile(decision, incoming, members, kept_apart)
                how = "auto"
            else:
                person_id, how = str(self._new_id()), "new"
            placed.append(Placement(patient.id, patient_pk, data, ks, person_id,
                                    pk_of.get(person_id), how, None, decision, merges))
            members.setdefault(person_id, []).append(Candidate(patient.id, person_id, data))
            for k in ks:
                held = index.setdefault(k, set())
                held.add(person_id)
                if len(held) > MAX_BLOCK:
                    oversized.add(k)
            for m in merges:  # the merged person's records are the survivor's from now on
                members[person_id] += [Candidate(c.record_id, person_id, c.match_data)
                                       for c in members.pop(m.person_id, ())]
                stored.setdefault(person_id, set()).update(stored.pop(m.person_id, ()))
                for held in index.values():
                    if m.person_id in held:
                        held.discard(m.person_id)
                        held.add(person_id)
        return placed

    def link_new(self, tx: Transaction, placements: Sequence[Placement]) -> None:
        """Write what :meth:`place_new` decided, in ``tx`` (a few statements in all, and
        the merges the batch's records proved)."""
        founded = [p.person_id for p in placements if p.how == "new"]
        pk_of: dict[str, int] = {p.person_id: p.person_pk for p in placements
                                 if p.person_pk is not None}
        pk_of.update({m.person_id: self._repo.person(m.person_id).pk
                      for p in placements for m in p.merges if m.person_id not in founded})
        self._claim(sorted(set(pk_of.values())), tx)
        pk_of.update(self._repo.insert_persons(founded, tx.now))
        links, key_rows, history = [], [], []
        for p in placements:
            assert p.decision is not None
            version = self._version(p.decision)
            links.append(dict(patient=p.patient_pk, person=pk_of[p.person_id],
                              match_data=p.data, manual=False, how=p.how,
                              probability=p.probability, model_version=version,
                              linked_at=tx.now))
            key_rows += [{"patient": p.patient_pk, "key": k} for k in sorted(set(p.keys))]
            history.append(dict(person=pk_of[p.person_id], patient=p.patient_pk,
                                action="linked" if p.how == "auto" else "created",
                                actor=tx.actor.user_id, occurred_at=tx.now,
                                probability=p.probability, model_version=version,
                                detail={"reason": p.decision.ranked[0].best.reason}
                                if p.how == "auto" else None))
        self._repo.insert_rows((PatientLinkRow, links), (BlockingKeyRow, key_rows),
                               (LinkEventRow, history))
        for p in placements:
            self._linked(tx, p, None)
        for p in placements:
            assert p.decision is not None
            merged = {m.person_id: pk_of[m.person_id] for m in p.merges}
            self._merge_into(tx, p, pk_of[p.person_id], merged)
            self._reviews_for(tx, p.decision, p.patient_id, p.patient_pk, pk_of[p.person_id],
                              set(merged.values()))

    # --- a record deleted ------------------------------------------------------------------------

    def hold(self) -> None:
        """Before a record's row is locked for an update or a delete: hold linking (shared)
        so every writer takes its locks in one order (see
        :meth:`IdentityRepository.share_linking`)."""
        self._repo.share_linking()

    def retire(self, tx: Transaction, patient_pk: int) -> None:
        """A record was deleted: it stops being a candidate; its open reviews close."""
        actor = tx.actor.user_id
        self._repo.delete_keys(patient_pk)
        self._repo.close_reviews_for_patient(patient_pk, resolution="record_deleted",
                                             actor=actor, now=tx.now)
        link = self._repo.link_of(patient_pk)
        if link is not None:
            self._repo.add_history(link.person_id, "record_deleted", actor=actor, now=tx.now,
                                   patient_pk=patient_pk)

    # --- candidates ------------------------------------------------------------------------------

    def decide(self, data: dict[str, Any], keys: list[str],
               patient_pk: int | None) -> PersonDecision:
        """The engine's decision for ``data`` against the persons its keys select (leaving
        out the record ``patient_pk`` itself and persons a steward kept apart from it)."""
        return self._decide(data, keys, patient_pk)[0]

    def _decide(self, data: dict[str, Any], keys: list[str], patient_pk: int | None
                ) -> tuple[PersonDecision, dict[str, list[Candidate]], dict[str, set[int]]]:
        """:meth:`decide`, every record of each candidate person, and each candidate
        person's primary key (as a set, the shape :meth:`_kept_apart` reads)."""
        looks = self.engine.probes(keys)
        index, members, person_pk_ids, _ = self._known_persons(looks,
                                                               exclude_patient_pk=patient_pk)
        persons = {person for k in looks for person in index.get(k, ())}
        candidates = [c for person in sorted(persons) for c in members.get(person, ())]
        excluded: frozenset[str] = frozenset()
        if patient_pk is not None:
            excluded = frozenset(self._repo.person_ids(
                self._repo.excluded_person_pks(patient_pk)).values())
        return (self.engine.decide(data, candidates, excluded=excluded), members,
                {v: {k} for k, v in person_pk_ids.items()})

    # --- fragments ---------------------------------------------------------------------------

    def _reconcile(self, decision: PersonDecision, incoming: Candidate,
                   members: dict[str, list[Candidate]],
                   kept_apart: Callable[[str, str], bool]) -> tuple[str, tuple[AutoMerge, ...]]:
        """The person a linked record joins, and the persons it proves one with it (merged
        into it): each other candidate at the review threshold or above, best first,
        compared as wholes with the group so far (the record among its records); the
        group's person with the most records survives (on a tie, the one linked to)."""
        target = decision.person_id
        assert target is not None
        if not self.auto_merge:
            return target, ()
        group, whole = [target], [*members.get(target, ()), incoming]
        joined: dict[str, float] = {}
        for ranked in decision.ranked:
            other = ranked.person_id
            if other == target or ranked.probability < self.engine.review_threshold:
                continue
            theirs = members.get(other, [])
            if not theirs or any(kept_apart(g, other) for g in group):
                continue
            probability = self.engine.same_person(whole, theirs)
            if probability is None:
                continue
            group.append(other)
            whole += theirs
            joined[other] = probability
        if not joined:
            return target, ()
        size = {g: len(members.get(g, ())) + (g == target) for g in group}
        survivor = max(group, key=lambda g: size[g])  # the first of the largest
        joined.setdefault(target, joined.get(survivor, 0.0))
        return survivor, tuple(AutoMerge(g, joined[g]) for g in group if g != survivor)

    def _kept_apart(self, stored: dict[str, set[int]]) -> Callable[[str, str], bool]:
        """Whether a steward kept two candidate persons apart; ``stored``: the stored
        persons each candidate holds (a person founded in the same batch holds none, and
        no steward decided about it yet)."""
        def apart(a: str, b: str) -> bool:
            return any(self._repo.persons_kept_apart(x, y)
                       for x in stored.get(a, ()) for y in stored.get(b, ()))

        return apart

    def _claim(self, person_pks: list[int], tx: Transaction) -> None:
        """Lock the persons a write links into or merges; give way (the write is retried)
        when a concurrent merge took one of them away first."""
        if not self._repo.claim_persons(person_pks, tx.now):
            raise ConcurrentChange("a person this record joins was merged a moment ago")

    def _merge_into(self, tx: Transaction, p: Placement, survivor_pk: int,
                    merged: dict[str, int]) -> None:
        """Merge the persons ``p``'s record proved one with its own into it."""
        if not merged:
            return
        survivor = self._repo.person_by_pk(survivor_pk)
        for m in p.merges:
            self._merging.merge(tx, survivor, self._repo.person_by_pk(merged[m.person_id]),
                                how="auto", probability=m.probability,
                                model_version=self._version(p.decision),
                                patient_id=p.patient_id)

    def _known_persons(self, keys: list[str], *, exclude_patient_pk: int | None = None,
                       lock: list[str] | None = None
                       ) -> tuple[dict[str, set[str]], dict[str, list[Candidate]],
                                  dict[int, str], set[str]]:
        """The persons holding a live record that shares one of ``keys``: which persons
        each key selects, every live record of each (a person is judged as a whole),
        person ids by primary key, and the keys left out: those shared by more than
        MAX_BLOCK persons (a placeholder birth date, a common name's code) select
        nothing useful, and their persons are not even read. ``lock``: keys to lock
        first (``IdentityRepository.lock_keys``), with the look-up."""
        hits, oversized = self._repo.key_persons(keys, cap=MAX_BLOCK, lock=lock)
        members: dict[str, list[Candidate]] = {}
        person_pk_ids: dict[int, str] = {}
        for c in self._repo.members({p for _, p in hits}):
            person_pk_ids[c.person_pk] = c.person_id
            if c.patient_pk != exclude_patient_pk:
                members.setdefault(c.person_id, []).append(
                    Candidate(c.patient_id, c.person_id, c.match_data))
        index: dict[str, set[str]] = {}
        for key, person_pk in hits:
            if person_pk in person_pk_ids:
                index.setdefault(key, set()).add(person_pk_ids[person_pk])
        return index, members, person_pk_ids, oversized

    # --- what linking records --------------------------------------------------------------------

    def _version(self, decision: PersonDecision | None) -> str:
        """The version of the model that made ``decision`` (the engine's model may be
        replaced by a retrained one while a decision is in flight)."""
        return (decision.model_version if decision is not None else "") \
            or self.engine.model_version

    def _linked(self, tx: Transaction, p: Placement, previous_person_id: str | None) -> None:
        payload = {"patient_id": p.patient_id, "person_id": p.person_id,
                   "previous_person_id": previous_person_id, "how": p.how,
                   "probability": p.probability, "model_version": self._version(p.decision)}
        tx.audit(AuditTag.link(p.how), p.patient_id, new=payload)
        tx.emit(EventType.PATIENT_LINKED, p.patient_id, payload=payload)

    def _reviews_for(self, tx: Transaction, decision: PersonDecision, patient_id: str,
                     patient_pk: int, target_pk: int, merged: set[int]) -> None:
        """The reviews a decision calls for: a probable match, or possible duplicates
        (those not ``merged`` into the record's person)."""
        version = self._version(decision)
        if decision.kind == "review" and decision.person_id is not None:
            review_pk = self._repo.person(decision.person_id).pk
            if review_pk != target_pk and not self._repo.open_review_exists(
                    "possible_match", patient_pk=patient_pk, person_pk=review_pk,
                    other_person_pk=None):
                best = decision.ranked[0]
                self._open_review(tx, "possible_match", patient_pk=patient_pk,
                                  patient_id=patient_id, person_pk=review_pk,
                                  other_person_pk=None, probability=best.probability,
                                  explanation=best.best.explanation(version), version=version)
        for dup in decision.duplicates:
            dup_pk = self._repo.person(dup.person_id).pk
            if (dup_pk == target_pk or dup_pk in merged
                    or self._repo.persons_kept_apart(target_pk, dup_pk)):
                continue
            if self._repo.open_review_exists("possible_duplicate", patient_pk=None,
                                             person_pk=target_pk, other_person_pk=dup_pk):
                continue
            self._open_review(tx, "possible_duplicate", patient_pk=patient_pk,
                              patient_id=patient_id, person_pk=target_pk,
                              other_person_pk=dup_pk, probability=dup.probability,
                              explanation=dup.best.explanation(version), version=version)

    def _open_review(self, tx: Transaction, kind: str, *, patient_pk: int | None,
                     patient_id: str | None, person_pk: int, other_person_pk: int | None,
                     probability: float, explanation: dict[str, Any], version: str) -> None:
        review_id = str(self._new_id())
        self._repo.create_review(review_id=uuid.UUID(review_id), kind=kind,
                                 patient_pk=patient_pk, person_pk=person_pk,
                                 other_person_pk=other_person_pk, probability=probability,
                                 model_version=version, explanation=explanation, now=tx.now)
        ids = self._repo.person_ids([person_pk]
                                    + ([other_person_pk] if other_person_pk else []))
        payload = {"review_id": review_id, "kind": kind, "patient_id": patient_id,
                   "person_id": ids[person_pk],
                   "other_person_id": ids.get(other_person_pk) if other_person_pk else None,
                   "probability": probability, "model_version": version}
        tx.audit(AuditTag.REVIEW_OPEN, review_id, new=payload)
        tx.emit(EventType.REVIEW_OPENED, review_id, payload=payload)
