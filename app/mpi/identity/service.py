"""Enterprise identity: link each record to one person, queue doubt for a steward, and
carry out stewards' decisions.

Record-level linking runs inside the patient service's transaction (the record, its
link, blocking keys, reviews, audit rows and change events commit together).
Stewards' actions each run in a transaction of their own. Manual decisions win:
a record a steward placed is never moved by the engine, and a pair declared "not the
same person" is never linked or proposed again.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import peewee

from mpi.audit.log import Actor, AuditLog
from mpi.domain.errors import Deleted, FieldProblem, InvalidInput, StateConflict
from mpi.domain.identity import (
    ComparisonOut,
    Explanation,
    LinkHistoryEntry,
    LinkHistoryPage,
    MatchCandidate,
    MatchResult,
    Merge,
    Person,
    PersonIdentifier,
    PersonRecord,
    ReviewItem,
    ReviewPage,
)
from mpi.domain.patient import Patient, PatientInput
from mpi.events.log import ChangeLog
from mpi.identity.engine import Candidate, Engine, PairScore, PersonDecision, grade
from mpi.identity.records import match_data
from mpi.storage.db import write_transaction
from mpi.storage.identity import IdentityRepository
from mpi.storage.models import (
    BlockingKeyRow,
    LinkEventRow,
    PatientLinkRow,
    PatientRow,
    PersonRow,
    ReviewItemRow,
)
from mpi.storage.patients import PatientRepository

Event = tuple[str, str, str, dict[str, Any]]
# Keys shared by more persons than this are ignored when looking for candidates.
MAX_BLOCK = 500  # (type, entity type, entity id, payload)


@dataclass
class Outcome:
    """What linking one record decided, and the change events to append for it."""

    person_id: str
    kind: str
    events: list[Event] = field(default_factory=list)


class IdentityService:
    def __init__(self, db: peewee.Database, engine: Engine, *,
                 clock: Callable[[], datetime], new_id: Callable[[], uuid.UUID] = uuid.uuid4,
                 audit: AuditLog | None = None, changes: ChangeLog | None = None,
                 patients: PatientRepository | None = None):
        self._db = db
        self.engine = engine
        self._clock = clock
        self._new_id = new_id
        self.repo = IdentityRepository(db)
        self.audit = audit or AuditLog()
        self.changes = changes or ChangeLog(db)
        self.patients = patients or PatientRepository()

    # --- record-level linking (inside the caller's transaction) --------------------------

    def assign(self, patient: Patient, patient_pk: int, actor: Actor, now: datetime) -> Outcome:
        """Link a record just created or updated; returns its person and the events."""
        data = match_data(patient)
        keys = self.engine.keys(data)
        self.repo.lock_keys(keys)
        current = self.repo.link_of(patient_pk, lock=True)
        self.repo.replace_keys(patient_pk, keys)
        if current is not None and current.manual:
            # A steward placed this record: keep it there, refresh what it is matched on.
            self.repo.refresh_match_data(patient_pk, data)
            person_id = str(self.repo.person_by_pk(current.person_id).id)
            return Outcome(person_id, "manual")
        decision = self._decide(data, keys, patient_pk)
        version = self.engine.model_version
        current_person = current.person_id if current is not None else None
        alone = (current_person is None
                 or self.repo.live_record_pks(current_person) == [patient_pk])
        out: list[Event] = []

        target_pk: int
        how: str
        if decision.kind == "link" and decision.person_id is not None:
            target_pk = self.repo.person(decision.person_id).pk
            how = "auto"
        elif current_person is not None and (alone or decision.kind == "review"):
            target_pk, how = current_person, current.how if current else "new"
        else:
            target_pk = self.repo.new_person(person_id=self._new_id(), now=now).pk
            how = "new"
        moved = target_pk != current_person
        probability = decision.probability if how == "auto" else None
        self.repo.set_link(patient_pk, target_pk, match_data=data, manual=False, how=how,
                           probability=probability, model_version=version, now=now)
        ids = self.repo.person_ids([target_pk] + ([current_person] if current_person else []))
        person_id = ids[target_pk]
        if moved:
            self.repo.touch([target_pk] + ([current_person] if current_person else []), now)
            detail = {"reason": decision.ranked[0].best.reason} if how == "auto" else None
            self.repo.add_history(target_pk, "linked" if how == "auto" else "created",
                                  actor=actor.user_id, now=now, patient_pk=patient_pk,
                                  probability=probability, model_version=version,
                                  detail=detail)
            if current_person is not None:
                self.repo.add_history(current_person, "moved_out", actor=actor.user_id,
                                      now=now, patient_pk=patient_pk,
                                      detail={"to_person_id": person_id})
            payload = {"patient_id": patient.id, "person_id": person_id,
                       "previous_person_id": ids.get(current_person) if current_person else None,
                       "how": how, "probability": probability, "model_version": version}
            self.audit.record(f"identity:link:{how}", actor, entity_type="patient",
                              entity_id=patient.id, now=now, new=payload)
            out.append(("PatientLinked", "patient", patient.id, payload))

        out += self._reviews_for(decision, patient.id, patient_pk, target_pk, actor, now)
        return Outcome(person_id, decision.kind, out)

    def assign_new(self, records: list[tuple[Patient, int]], actor: Actor,
                   now: datetime) -> list[Outcome]:
        """Link records just created, one at a time in order, with the rule ``assign`` uses
        for one record: each is decided against the persons known before it, including
        those earlier records of the same call joined or founded. Reads and writes are
        batched (a handful of statements for the whole list), so ``mpi import`` is fast.
        New records carry no steward decision yet, so none is excluded."""
        if not records:
            return []
        version = self.engine.model_version
        datas = [match_data(p) for p, _ in records]
        keys = [self.engine.keys(d) for d in datas]
        all_keys = sorted({k for ks in keys for k in ks})
        self.repo.lock_keys(all_keys)
        index, members, person_pk_ids = self._known_persons(all_keys)

        founded: list[str] = []
        decided: list[tuple[str, str, float | None, PersonDecision]] = []
        for (patient, _), data, ks in zip(records, datas, keys, strict=True):
            persons = {person for k in ks for person in index.get(k, ())}
            candidates = [c for person in sorted(persons) for c in members.get(person, ())]
            decision = self.engine.decide(data, candidates)
            if decision.kind == "link" and decision.person_id is not None:
                person_id, how, probability = decision.person_id, "auto", decision.probability
            else:
                person_id, how, probability = str(self._new_id()), "new", None
                founded.append(person_id)
            decided.append((person_id, how, probability, decision))
            members.setdefault(person_id, []).append(Candidate(patient.id, person_id, data))
            for k in ks:
                index.setdefault(k, set()).add(person_id)

        pk_of = {v: k for k, v in person_pk_ids.items()}
        pk_of.update(self.repo.insert_persons(founded, now))
        self.repo.touch([pk_of[p] for p, how, _, _ in decided if how == "auto"], now)
        links, key_rows, history, audits = [], [], [], []
        outcomes: list[Outcome] = []
        for (patient, patient_pk), data, ks, (person_id, how, probability, decision) in zip(
                records, datas, keys, decided, strict=True):
            person_pk = pk_of[person_id]
            links.append(dict(patient=patient_pk, person=person_pk, match_data=data,
                              manual=False, how=how, probability=probability,
                              model_version=version, linked_at=now))
            key_rows += [{"patient": patient_pk, "key": k} for k in sorted(set(ks))]
            history.append(dict(person=person_pk, patient=patient_pk,
                                action="linked" if how == "auto" else "created",
                                actor=actor.user_id, occurred_at=now, probability=probability,
                                model_version=version,
                                detail={"reason": decision.ranked[0].best.reason}
                                if how == "auto" else None))
            payload = {"patient_id": patient.id, "person_id": person_id,
                       "previous_person_id": None, "how": how, "probability": probability,
                       "model_version": version}
            audits.append((f"identity:link:{how}", patient.id, None, payload))
            outcomes.append(Outcome(person_id, decision.kind,
                                    [("PatientLinked", "patient", patient.id, payload)]))
        self.repo.insert_rows(PatientLinkRow, links)
        self.repo.insert_rows(BlockingKeyRow, key_rows)
        self.repo.insert_rows(LinkEventRow, history)
        self.audit.record_many(audits, actor, entity_type="patient", now=now)
        for (patient, patient_pk), (person_id, _, _, decision), outcome in zip(
                records, decided, outcomes, strict=True):
            outcome.events += self._reviews_for(decision, patient.id, patient_pk,
                                                pk_of[person_id], actor, now)
        return outcomes

    def _reviews_for(self, decision: PersonDecision, patient_id: str, patient_pk: int,
                     target_pk: int, actor: Actor, now: datetime) -> list[Event]:
        """The reviews a decision calls for: a probable match, or possible duplicates."""
        out: list[Event] = []
        version = self.engine.model_version
        if decision.kind == "review" and decision.person_id is not None:
            review_pk = self.repo.person(decision.person_id).pk
            if review_pk != target_pk and not self.repo.open_review_exists(
                    "possible_match", patient_pk=patient_pk, person_pk=review_pk,
                    other_person_pk=None):
                best = decision.ranked[0]
                out.append(self._open_review("possible_match", actor, now,
                                             patient_pk=patient_pk, patient_id=patient_id,
                                             person_pk=review_pk, other_person_pk=None,
                                             probability=best.probability,
                                             explanation=best.best.explanation(version)))
        for dup in decision.duplicates:
            dup_pk = self.repo.person(dup.person_id).pk
            if dup_pk == target_pk or self.repo.persons_kept_apart(target_pk, dup_pk):
                continue
            if self.repo.open_review_exists("possible_duplicate", patient_pk=None,
                                            person_pk=target_pk, other_person_pk=dup_pk):
                continue
            out.append(self._open_review("possible_duplicate", actor, now,
                                         patient_pk=patient_pk, patient_id=patient_id,
                                         person_pk=target_pk, other_person_pk=dup_pk,
                                         probability=dup.probability,
                                         explanation=dup.best.explanation(version)))
        return out

    def retire(self, patient_pk: int, patient_id: str, actor: Actor, now: datetime) -> None:
        """A record was deleted: it stops being a candidate; its open reviews close."""
        self.repo.delete_keys(patient_pk)
        self.repo.close_reviews_for_patient(patient_pk, resolution="record_deleted",
                                            actor=actor.user_id, now=now)
        link = self.repo.link_of(patient_pk)
        if link is not None:
            self.repo.add_history(link.person_id, "record_deleted", actor=actor.user_id,
                                  now=now, patient_pk=patient_pk)

    def _known_persons(self, keys: list[str], *, exclude_patient_pk: int | None = None
                       ) -> tuple[dict[str, set[str]], dict[str, list[Candidate]],
                                  dict[int, str]]:
        """The persons holding a live record that shares one of ``keys``: which persons
        each key selects, every live record of each (a person is judged as a whole), and
        person ids by primary key. Keys shared by more than MAX_BLOCK persons (a
        placeholder birth date, say) select nothing useful and are ignored."""
        hits = self.repo.key_persons(keys)
        members: dict[str, list[Candidate]] = {}
        person_pk_ids: dict[int, str] = {}
        for c in self.repo.members({p for _, p in hits}):
            person_pk_ids[c.person_pk] = c.person_id
            if c.patient_pk != exclude_patient_pk:
                members.setdefault(c.person_id, []).append(
                    Candidate(c.patient_id, c.person_id, c.match_data))
        index: dict[str, set[str]] = {}
        for key, person_pk in hits:
            if person_pk in person_pk_ids:
                index.setdefault(key, set()).add(person_pk_ids[person_pk])
        for key in [k for k, persons in index.items() if len(persons) > MAX_BLOCK]:
            del index[key]
        return index, members, person_pk_ids

    def _decide(self, data: dict[str, Any], keys: list[str],
                patient_pk: int | None) -> PersonDecision:
        index, members, _ = self._known_persons(keys, exclude_patient_pk=patient_pk)
        persons = {person for k in keys for person in index.get(k, ())}
        candidates = [c for person in sorted(persons) for c in members.get(person, ())]
        excluded: frozenset[str] = frozenset()
        if patient_pk is not None:
            excluded = frozenset(self.repo.person_ids(
                self.repo.excluded_person_pks(patient_pk)).values())
        return self.engine.decide(data, candidates, excluded=excluded)

    def _open_review(self, kind: str, actor: Actor, now: datetime, *, patient_pk: int | None,
                     patient_id: str | None, person_pk: int, other_person_pk: int | None,
                     probability: float, explanation: dict[str, Any]) -> Event:
        review_id = self._new_id()
        self.repo.create_review(review_id=review_id, kind=kind, patient_pk=patient_pk,
                                person_pk=person_pk, other_person_pk=other_person_pk,
                                probability=probability,
                                model_version=self.engine.model_version,
                                explanation=explanation, now=now)
        ids = self.repo.person_ids([person_pk] + ([other_person_pk] if other_person_pk else []))
        payload = {"review_id": str(review_id), "kind": kind, "patient_id": patient_id,
                   "person_id": ids[person_pk],
                   "other_person_id": ids.get(other_person_pk) if other_person_pk else None,
                   "probability": probability, "model_version": self.engine.model_version}
        self.audit.record("identity:review:open", actor, entity_type="review",
                          entity_id=str(review_id), now=now, new=payload)
        return ("ReviewOpened", "review", str(review_id), payload)

    def _append(self, events: list[Event], actor: Actor, now: datetime) -> None:
        self.changes.append_many(change_rows(events), actor, now=now)

    # --- reads ---------------------------------------------------------------------------

    def person(self, person_id: str, actor: Actor) -> Person:
        now = self._clock()
        with write_transaction(self._db):
            row = self.repo.person(person_id)
            view = self._person_view(row)
            self.audit.record("person:record:read", actor, entity_type="person",
                              entity_id=person_id, now=now)
        return view

    def person_of_patient(self, patient_id: str, actor: Actor) -> Person:
        now = self._clock()
        with write_transaction(self._db):
            row = self.patients.get_row(patient_id)
            link = self.repo.link_of(row.pk)
            if link is None:  # pragma: no cover - every record is linked on write
                raise Deleted(f"patient {patient_id} has no person")
            person = self.repo.person_by_pk(link.person_id)
            view = self._person_view(person)
            self.audit.record("person:record:read", actor, entity_type="person",
                              entity_id=view.id, now=now, new={"via_patient": patient_id})
        return view

    def _person_view(self, row: PersonRow) -> Person:
        links = self.repo.live_links(row.pk)
        patients = self.patients.load_many([link.patient for link in links])
        records = [PersonRecord(patient=p, how=link.how, manual=link.manual,
                                probability=link.probability, model_version=link.model_version,
                                linked_at=link.linked_at)
                   for p, link in zip(patients, links, strict=True)]
        idents: dict[tuple[str, str], PersonIdentifier] = {}
        for p in patients:
            for ident in p.identifiers:
                entry = idents.setdefault((ident.system, ident.value), PersonIdentifier(
                    system=ident.system, value=ident.value, type=ident.type, patient_ids=[],
                    sources=[]))
                entry.patient_ids.append(p.id)
                if p.source not in entry.sources:
                    entry.sources.append(p.source)
        merged_into = None
        if row.merged_into_id is not None:
            merged_into = str(self.repo.person_by_pk(row.merged_into_id).id)
        return Person(id=str(row.id), status="merged" if merged_into else "active",
                      merged_into=merged_into, created_at=row.created_at,
                      updated_at=row.updated_at, records=records,
                      identifiers=list(idents.values()))

    def history(self, person_id: str, actor: Actor, *, before: int | None,
                limit: int) -> LinkHistoryPage:
        now = self._clock()
        with write_transaction(self._db):
            person = self.repo.person(person_id)
            rows, cursor = self.repo.history(person.pk, before=before, limit=limit)
            pids = self.repo.patient_ids(r.patient_id for r in rows if r.patient_id)
            items = [LinkHistoryEntry(id=r.pk, occurred_at=r.occurred_at, action=r.action,
                                      actor=r.actor, patient_id=pids.get(r.patient_id),
                                      probability=r.probability,
                                      model_version=r.model_version, detail=r.detail)
                     for r in rows]
            self.audit.record("person:history:read", actor, entity_type="person",
                              entity_id=person_id, now=now)
        return LinkHistoryPage(items=items, next_cursor=str(cursor) if cursor else None)

    def reviews(self, actor: Actor, *, status: str | None, kind: str | None,
                person_id: str | None, after: int | None, limit: int) -> ReviewPage:
        now = self._clock()
        with write_transaction(self._db):
            person_pk = self.repo.person(person_id).pk if person_id else None
            rows, cursor = self.repo.reviews(status=status, kind=kind, person_pk=person_pk,
                                             after=after, limit=limit)
            items = self._review_views(rows)
            self.audit.record("identity:review:list", actor, entity_type="review",
                              entity_id=None, now=now,
                              new={"returned": [i.id for i in items]})
        return ReviewPage(items=items, next_cursor=str(cursor) if cursor else None)

    def review(self, review_id: str, actor: Actor) -> ReviewItem:
        now = self._clock()
        with write_transaction(self._db):
            view = self._review_views([self.repo.review(review_id)])[0]
            self.audit.record("identity:review:read", actor, entity_type="review",
                              entity_id=review_id, now=now)
        return view

    def _review_views(self, rows: list[ReviewItemRow]) -> list[ReviewItem]:
        persons = self.repo.person_ids([r.person_id for r in rows]
                                       + [r.other_person_id for r in rows if r.other_person_id])
        patients = self.repo.patient_ids(r.patient_id for r in rows if r.patient_id)
        return [ReviewItem(id=str(r.id), kind=r.kind, status=r.status,  # type: ignore[arg-type]
                           patient_id=patients.get(r.patient_id) if r.patient_id else None,
                           person_id=persons[r.person_id],
                           other_person_id=(persons[r.other_person_id]
                                            if r.other_person_id else None),
                           probability=r.probability, model_version=r.model_version,
                           explanation=r.explanation, created_at=r.created_at,
                           resolved_at=r.resolved_at, resolved_by=r.resolved_by,
                           resolution=r.resolution)
                for r in rows]

    # --- matching without storing ----------------------------------------------------------

    def match(self, data: PatientInput, actor: Actor, *, limit: int = 10) -> MatchResult:
        record = match_data(data, record_id="candidate")
        keys = self.engine.keys(record)
        now = self._clock()
        with write_transaction(self._db):
            decision = self._decide(record, keys, None)
            ranked = decision.ranked[:limit]
            self.audit.record("identity:match:query", actor, entity_type="person",
                              entity_id=None, now=now,
                              new={"returned": [r.person_id for r in ranked]})
        version = self.engine.model_version
        return MatchResult(
            decision=decision.kind, person_id=decision.person_id, model_version=version,
            candidates=[MatchCandidate(
                person_id=r.person_id, probability=r.probability,
                grade=grade(r.probability, link_threshold=self.engine.link_threshold,
                            review_threshold=self.engine.review_threshold),  # type: ignore[arg-type]
                best_record_id=r.best_record_id, records_compared=r.records_compared,
                explanation=_explanation(r.best, version)) for r in ranked])

    # --- stewards' decisions (one transaction each) ----------------------------------------

    def link(self, person_id: str, patient_id: str, actor: Actor, *,
             how: str = "manual", review: ReviewItemRow | None = None) -> Person:
        """Put a record in a person by hand; the engine will not move it again."""
        now = self._clock()
        with write_transaction(self._db):
            person = self._active_person(person_id)
            events = self._move(patient_id, person, actor, now, how=how)
            if review is not None:
                self._close(review, "link", actor, now, events)
            self._append(events, actor, now)
            view = self._person_view(person)
        return view

    def unlink(self, person_id: str, patient_id: str, actor: Actor) -> Person:
        """Take a record out of a person: it becomes a person of its own, and is never
        linked to the records it left again."""
        now = self._clock()
        with write_transaction(self._db):
            person = self._active_person(person_id)
            row = self.patients.get_row(patient_id, lock="FOR UPDATE")
            link = self.repo.link_of(row.pk, lock=True)
            if link is None or link.person_id != person.pk:
                raise StateConflict(f"patient {patient_id} is not linked to person {person_id}")
            others = [pk for pk in self.repo.live_record_pks(person.pk) if pk != row.pk]
            if not others:
                raise StateConflict(f"patient {patient_id} is the only record of person "
                                    f"{person_id}; there is nothing to unlink it from")
            fresh = self.repo.new_person(person_id=self._new_id(), now=now)
            self.repo.add_non_matches([row.pk], others, actor=actor.user_id, now=now)
            events = self._move(patient_id, fresh, actor, now, how="manual", row=row,
                                action="unlinked")
            self._append(events, actor, now)
            view = self._person_view(fresh)
        return view

    def merge(self, survivor_id: str, merged_id: str, actor: Actor, *,
              review: ReviewItemRow | None = None) -> Merge:
        if survivor_id == merged_id:
            raise InvalidInput([FieldProblem("merged_id", "must differ from survivor_id")])
        now = self._clock()
        with write_transaction(self._db):
            survivor = self._active_person(survivor_id, field_name="survivor_id")
            merged = self._active_person(merged_id, field_name="merged_id")
            if self.repo.persons_kept_apart(survivor.pk, merged.pk):
                raise StateConflict("a steward recorded that records of these persons are not "
                                    "the same person; unlink or review them first")
            moved = self.repo.live_record_pks(merged.pk)
            self.repo.move_links(moved, survivor.pk, how="merge", manual=True, now=now)
            self.repo.set_merged_into(merged.pk, survivor.pk, now)
            self.repo.touch([survivor.pk], now)
            merge_id = self._new_id()
            row = self.repo.create_merge(merge_id=merge_id, survivor_pk=survivor.pk,
                                         merged_pk=merged.pk, moved=moved,
                                         actor=actor.user_id, now=now)
            moved_ids = [self.repo.patient_ids(moved)[pk] for pk in moved]
            payload = {"merge_id": str(merge_id), "survivor_id": survivor_id,
                       "merged_id": merged_id, "moved_patient_ids": moved_ids}
            for pk in (survivor.pk, merged.pk):
                self.repo.add_history(pk, "merged", actor=actor.user_id, now=now,
                                      detail=payload)
            self.audit.record("identity:merge:create", actor, entity_type="person",
                              entity_id=survivor_id, now=now, new=payload)
            events: list[Event] = [("PersonsMerged", "person", survivor_id, payload)]
            if review is not None:
                self._close(review, "link", actor, now, events)
            self._append(events, actor, now)
        return Merge(id=str(merge_id), survivor_id=survivor_id, merged_id=merged_id,
                     moved_patient_ids=moved_ids, actor=actor.user_id,
                     created_at=row.created_at)

    def undo_merge(self, merge_id: str, actor: Actor) -> Merge:
        """Give the merged person back the records the merge moved (those still there)."""
        now = self._clock()
        with write_transaction(self._db):
            self.repo.lock_linking()
            row = self.repo.merge(merge_id, lock=True)
            if row.undone_at is not None:
                raise StateConflict(f"merge {merge_id} was already undone")
            merged = self.repo.person_by_pk(row.merged_id)
            if merged.merged_into_id != row.survivor_id:
                raise StateConflict("the merged person has changed since; undo later merges "
                                    "first")
            still = set(self.repo.live_record_pks(row.survivor_id))
            back = [pk for pk in row.moved if pk in still]
            self.repo.move_links(back, merged.pk, how="manual", manual=True, now=now)
            self.repo.set_merged_into(merged.pk, None, now)
            self.repo.touch([row.survivor_id], now)
            self.repo.mark_undone(row.pk, now)
            ids = self.repo.person_ids([row.survivor_id, merged.pk])
            pids = self.repo.patient_ids(back)
            payload = {"merge_id": merge_id, "survivor_id": ids[row.survivor_id],
                       "merged_id": ids[merged.pk],
                       "returned_patient_ids": [pids[pk] for pk in back]}
            for pk in (row.survivor_id, merged.pk):
                self.repo.add_history(pk, "merge_undone", actor=actor.user_id, now=now,
                                      detail=payload)
            self.audit.record("identity:merge:undo", actor, entity_type="person",
                              entity_id=ids[row.survivor_id], now=now, new=payload)
            self._append([("MergeUndone", "person", ids[row.survivor_id], payload)], actor, now)
        return Merge(id=merge_id, survivor_id=ids[row.survivor_id], merged_id=ids[merged.pk],
                     moved_patient_ids=[self.repo.patient_ids(row.moved).get(pk, "")
                                        for pk in row.moved],
                     actor=row.actor, created_at=row.created_at, undone_at=now)

    def resolve_review(self, review_id: str, resolution: str, actor: Actor) -> ReviewItem:
        now = self._clock()
        review = None
        with write_transaction(self._db):
            self.repo.lock_linking()
            review = self.repo.review(review_id, lock=True)
            if review.status != "open":
                raise StateConflict(f"review {review_id} is already {review.status} "
                                    f"({review.resolution})")
            if resolution == "link":
                if review.kind == "possible_match":
                    self.link(str(self.repo.person_by_pk(review.person_id).id),
                              self.repo.patient_ids([review.patient_id])[review.patient_id],
                              actor, how="review", review=review)
                else:
                    self.merge(str(self.repo.person_by_pk(review.person_id).id),
                               str(self.repo.person_by_pk(review.other_person_id).id), actor,
                               review=review)
            elif resolution == "not_a_match":
                events: list[Event] = []
                if review.kind == "possible_match":
                    left = [review.patient_id]
                    right = self.repo.live_record_pks(review.person_id)
                else:
                    left = self.repo.live_record_pks(review.person_id)
                    right = self.repo.live_record_pks(review.other_person_id)
                self.repo.add_non_matches(left, right, actor=actor.user_id, now=now)
                self._close(review, resolution, actor, now, events)
                self._append(events, actor, now)
            elif resolution == "new_person":
                if review.kind != "possible_match":
                    raise InvalidInput([FieldProblem(
                        "resolution", "new_person applies to possible_match reviews only")])
                # The record keeps (or gets) a person of its own, placed by hand, and is
                # kept apart from the person it was proposed for.
                right = self.repo.live_record_pks(review.person_id)
                self.repo.add_non_matches([review.patient_id], right, actor=actor.user_id,
                                          now=now)
                link = self.repo.link_of(review.patient_id, lock=True)
                events = []
                pid = self.repo.patient_ids([review.patient_id])[review.patient_id]
                if link is not None and self.repo.live_record_pks(link.person_id) == [
                        review.patient_id]:
                    PatientLinkRow.update(manual=True).where(
                        PatientLinkRow.patient == review.patient_id).execute()
                else:
                    fresh = self.repo.new_person(person_id=self._new_id(), now=now)
                    events += self._move(pid, fresh, actor, now, how="review")
                self._close(review, resolution, actor, now, events)
                self._append(events, actor, now)
            else:  # pragma: no cover - the API validates the resolution
                raise InvalidInput([FieldProblem("resolution", "unknown resolution")])
            view = self._review_views([self.repo.review(review_id)])[0]
        return view

    def _close(self, review: ReviewItemRow, resolution: str, actor: Actor, now: datetime,
               events: list[Event]) -> None:
        self.repo.resolve(review, resolution=resolution, actor=actor.user_id, now=now)
        payload = {"review_id": str(review.id), "kind": review.kind, "resolution": resolution}
        self.audit.record("identity:review:resolve", actor, entity_type="review",
                          entity_id=str(review.id), now=now, new=payload)
        events.append(("ReviewResolved", "review", str(review.id), payload))

    def _active_person(self, person_id: str, *, field_name: str = "person_id") -> PersonRow:
        self.repo.lock_linking()
        person = self.repo.person(person_id, lock=True)
        if person.merged_into_id is not None:
            target = self.repo.person_by_pk(person.merged_into_id)
            raise StateConflict(f"person {person_id} was merged into {target.id}; use that")
        return person

    def _move(self, patient_id: str, person: PersonRow, actor: Actor, now: datetime, *,
              how: str, row: PatientRow | None = None, action: str = "linked") -> list[Event]:
        row = row or self.patients.get_row(patient_id, lock="FOR UPDATE")
        link = self.repo.link_of(row.pk, lock=True)
        previous = link.person_id if link is not None else None
        data = link.match_data if link is not None else match_data(self.patients.load(row))
        self.repo.set_link(row.pk, person.pk, match_data=data, manual=True, how=how,
                           probability=None, model_version=None, now=now)
        self.repo.touch([person.pk] + ([previous] if previous else []), now)
        ids = self.repo.person_ids([person.pk] + ([previous] if previous else []))
        payload = {"patient_id": patient_id, "person_id": ids[person.pk],
                   "previous_person_id": ids.get(previous) if previous else None,
                   "how": how, "probability": None, "model_version": None}
        self.repo.add_history(person.pk, action if action == "linked" else "created",
                              actor=actor.user_id, now=now, patient_pk=row.pk, detail=payload)
        if previous is not None and previous != person.pk:
            self.repo.add_history(previous, action if action == "unlinked" else "moved_out",
                                  actor=actor.user_id, now=now, patient_pk=row.pk,
                                  detail=payload)
        tag = "identity:unlink:manual" if action == "unlinked" else f"identity:link:{how}"
        self.audit.record(tag, actor, entity_type="patient", entity_id=patient_id, now=now,
                          new=payload)
        kind = "PatientUnlinked" if action == "unlinked" else "PatientLinked"
        return [(kind, "patient", patient_id, payload)]


def change_rows(events: list[Event]) -> list[tuple[str, str, str, int | None, Any]]:
    """Identity events as change-log rows (they carry no entity version)."""
    return [(kind, entity_type, entity_id, None, payload)
            for kind, entity_type, entity_id, payload in events]


def _explanation(score: PairScore, version: str) -> Explanation:
    return Explanation(probability=score.probability, match_weight=score.match_weight,
                       reason=score.reason, model_version=version,
                       comparisons=[ComparisonOut(comparison=c, level=lvl, weight=w)
                                    for c, lvl, w in score.comparisons])
