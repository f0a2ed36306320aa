"""The review queue and stewards' decisions: link, unlink, merge, undo, resolve a review.

Each action is one unit of work (its rows, audit rows and change events commit
together). A steward's placement is manual: the engine never moves that record again,
and a pair declared "not the same person" is never linked or proposed again.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import get_args

from mpi.domain.audit import Actor, AuditTag
from mpi.domain.errors import FieldProblem, InvalidInput, StateConflict
from mpi.domain.events import EventType
from mpi.domain.identity import Merge, MergeHow, Person, ReviewItem, ReviewKind, ReviewPage
from mpi.identity.merging import Merging
from mpi.identity.records import match_data
from mpi.identity.views import IdentityViews
from mpi.storage.identity import IdentityRepository
from mpi.storage.models import PatientRow, PersonRow, ReviewItemRow
from mpi.storage.patients import PatientRepository
from mpi.storage.work import Transaction, UnitOfWork, retried


@dataclass(frozen=True)
class QueueEntry:
    review: ReviewItem
    source: str | None  # of the record the review was raised for


@dataclass(frozen=True)
class QueuePage:
    entries: list[QueueEntry]
    total: int  # open reviews matching the filters, on every page
    next_cursor: int | None
    sources: list[str]  # every source with an open review (for the filter)


#: The kinds of review the engine opens.
REVIEW_KINDS: tuple[str, ...] = get_args(ReviewKind)


class StewardService:
    def __init__(self, work: UnitOfWork, repo: IdentityRepository, patients: PatientRepository,
                 views: IdentityViews, merging: Merging, *, new_id: Callable[[], uuid.UUID]):
        self._work = work
        self._merging = merging
        self._repo = repo
        self._patients = patients
        self._views = views
        self._new_id = new_id

    # --- the queue -------------------------------------------------------------------------------

    def reviews(self, actor: Actor, *, status: str | None, kind: str | None,
                person_id: str | None, after: int | None, limit: int) -> ReviewPage:
        """Reviews, oldest first."""
        with self._work.begin(actor) as tx:
            person_pk = self._repo.person(person_id).pk if person_id else None
            rows, cursor = self._repo.reviews(status=status, kind=kind, person_pk=person_pk,
                                              after=after, limit=limit)
            items = self._views.reviews(rows)
            tx.audit(AuditTag.REVIEW_LIST, None, new={"returned": [i.id for i in items]})
        return ReviewPage(items=items, next_cursor=str(cursor) if cursor else None)

    def queue(self, actor: Actor, *, kind: str | None = None, source: str | None = None,
              opened_before: datetime | None = None, min_probability: float | None = None,
              max_probability: float | None = None, after: int | None = None,
              limit: int = 50) -> QueuePage:
        """The open reviews a steward works through, oldest first, filtered by kind, the
        source of the record, age (opened at or before) and score band [min, max)."""
        with self._work.begin(actor) as tx:
            rows, total, cursor = self._repo.open_queue(
                kind=kind, source=source, opened_before=opened_before,
                min_probability=min_probability, max_probability=max_probability,
                after=after, limit=limit)
            items = self._views.reviews([r for r, _ in rows])
            sources = self._repo.open_review_sources()
            tx.audit(AuditTag.REVIEW_LIST, None, new={"returned": [i.id for i in items]})
        return QueuePage(entries=[QueueEntry(item, src) for item, (_, src)
                                  in zip(items, rows, strict=True)],
                         total=total, next_cursor=cursor, sources=sources)

    def queue_summary(self) -> list[tuple[str, int, float]]:
        """(kind, open reviews, age in seconds of the oldest) for each kind, both kinds
        always listed (for metrics: counts only, nothing of a record, so no audit row)."""
        with self._work.reading():
            found = {kind: (n, oldest) for kind, n, oldest in self._repo.open_review_summary()}
        now = self._work.clock()
        out = []
        for kind in REVIEW_KINDS:
            n, oldest = found.get(kind, (0, None))
            age = max((now - oldest).total_seconds(), 0.0) if oldest is not None else 0.0
            out.append((kind, n, round(age, 3)))
        return out

    def review(self, review_id: str, actor: Actor) -> ReviewItem:
        with self._work.begin(actor) as tx:
            view = self._views.reviews([self._repo.review(review_id)])[0]
            tx.audit(AuditTag.REVIEW_READ, review_id)
        return view

    @retried
    def resolve_review(self, review_id: str, resolution: str, actor: Actor, *,
                       comment: str | None = None) -> ReviewItem:
        """``link`` (the same person), ``not_a_match``, or ``new_person`` (a possible match
        only: the record gets a person of its own, kept apart from the one proposed);
        ``comment``, the steward's note, is kept with the review. A review already resolved
        (by someone else a moment ago, say) is a StateConflict naming who and how."""
        with self._work.begin(actor) as tx:
            self._repo.lock_linking()
            review = self._repo.review(review_id, lock=True)
            if review.status != "open":
                raise StateConflict(f"review {review_id} is already {review.status} "
                                    f"({review.resolution}) by {review.resolved_by}")
            if resolution == "link":
                person_id = str(self._repo.person_by_pk(review.person_id).id)
                if review.kind == "possible_match":
                    patient_id = self._repo.patient_ids([review.patient_id])[review.patient_id]
                    self._link(tx, person_id, patient_id, how="review")
                else:
                    other_id = str(self._repo.person_by_pk(review.other_person_id).id)
                    self._merge(tx, person_id, other_id, resolving=review.pk)
            elif resolution == "not_a_match":
                if review.kind == "possible_match":
                    left = [review.patient_id]
                    right = self._repo.live_record_pks(review.person_id)
                else:
                    left = self._repo.live_record_pks(review.person_id)
                    right = self._repo.live_record_pks(review.other_person_id)
                self._repo.add_non_matches(left, right, actor=actor.user_id, now=tx.now)
            elif resolution == "new_person":
                if review.kind != "possible_match":
                    raise InvalidInput([FieldProblem(
                        "resolution", "new_person applies to possible_match reviews only")])
                self._new_person(tx, review)
            else:  # pragma: no cover - the API validates the resolution
                raise InvalidInput([FieldProblem("resolution", "unknown resolution")])
            self._close(tx, review, resolution, comment)
            view = self._views.reviews([self._repo.review(review_id)])[0]
        return view

    # --- stewards' actions -----------------------------------------------------------------------

    @retried
    def link(self, person_id: str, patient_id: str, actor: Actor) -> Person:
        """Put a record in a person by hand; the engine will not move it again."""
        with self._work.begin(actor) as tx:
            person = self._link(tx, person_id, patient_id, how="manual")
            view = self._views.person(person)
        return view

    @retried
    def unlink(self, person_id: str, patient_id: str, actor: Actor) -> Person:
        """Take a record out of a person: it becomes a person of its own, and is never
        linked to the records it left again."""
        with self._work.begin(actor) as tx:
            person = self._active_person(person_id)
            row = self._patients.get_row(patient_id, lock="FOR UPDATE")
            link = self._repo.link_of(row.pk, lock=True)
            if link is None or link.person_id != person.pk:
                raise StateConflict(f"patient {patient_id} is not linked to person {person_id}")
            others = [pk for pk in self._repo.live_record_pks(person.pk) if pk != row.pk]
            if not others:
                raise StateConflict(f"patient {patient_id} is the only record of person "
                                    f"{person_id}; there is nothing to unlink it from")
            fresh = self._repo.new_person(person_id=self._new_id(), now=tx.now)
            self._repo.add_non_matches([row.pk], others, actor=actor.user_id, now=tx.now)
            self._move(tx, patient_id, fresh, how="manual", row=row, action="unlinked")
            view = self._views.person(fresh)
        return view

    @retried
    def merge(self, survivor_id: str, merged_id: str, actor: Actor) -> Merge:
        """Move every record of ``merged_id`` to ``survivor_id`` (undoable)."""
        if survivor_id == merged_id:
            raise InvalidInput([FieldProblem("merged_id", "must differ from survivor_id")])
        with self._work.begin(actor) as tx:
            merge = self._merge(tx, survivor_id, merged_id)
        return merge

    @retried
    def undo_merge(self, merge_id: str, actor: Actor) -> Merge:
        """Give the merged person back the records the merge moved (those still there).
        Undoing the engine's merge is a steward's "not the same person": the returned
        records are kept apart from the survivor's, so the engine never merges them again."""
        with self._work.begin(actor) as tx:
            now = tx.now
            self._repo.lock_linking()
            row = self._repo.merge(merge_id, lock=True)
            if row.undone_at is not None:
                raise StateConflict(f"merge {merge_id} was already undone")
            merged = self._repo.person_by_pk(row.merged_id)
            if merged.merged_into_id != row.survivor_id:
                raise StateConflict("the merged person has changed since; undo later merges "
                                    "first")
            still = set(self._repo.live_record_pks(row.survivor_id))
            back = [pk for pk in row.moved if pk in still]
            self._repo.move_links(back, merged.pk, how="manual", manual=True, now=now)
            if row.how == "auto":
                self._repo.add_non_matches(back, sorted(still - set(back)),
                                           actor=actor.user_id, now=now)
            self._repo.set_merged_into(merged.pk, None, now)
            self._repo.touch([row.survivor_id], now)
            self._repo.mark_undone(row.pk, now)
            ids = self._repo.person_ids([row.survivor_id, merged.pk])
            pids = self._repo.patient_ids(back)
            payload = {"merge_id": merge_id, "survivor_id": ids[row.survivor_id],
                       "merged_id": ids[merged.pk],
                       "returned_patient_ids": [pids[pk] for pk in back]}
            for pk in (row.survivor_id, merged.pk):
                self._repo.add_history(pk, "merge_undone", actor=actor.user_id, now=now,
                                       detail=payload)
            tx.audit(AuditTag.MERGE_UNDO, ids[row.survivor_id], new=payload)
            tx.emit(EventType.MERGE_UNDONE, ids[row.survivor_id], payload=payload)
            moved_ids = self._repo.patient_ids(row.moved)
        return Merge(id=merge_id, survivor_id=ids[row.survivor_id], merged_id=ids[merged.pk],
                     moved_patient_ids=[moved_ids.get(pk, "") for pk in row.moved],
                     actor=row.actor, created_at=row.created_at, undone_at=now,
                     how=row.how, probability=row.probability)  # type: ignore[arg-type]

    # --- in an open unit of work -----------------------------------------------------------------

    def join_record(self, tx: Transaction, patient_id: str, other_id: str) -> str:
        """Put record ``patient_id`` in the person of record ``other_id`` by hand (a
        source merged it into that record); the person's id. For ``PatientService``'s
        merge, inside its unit of work."""
        other = self._patients.get_row(other_id)
        link = self._repo.link_of(other.pk)
        if link is None:  # pragma: no cover - every live record is linked on write
            raise StateConflict(f"patient {other_id} has no person")
        person = self._active_person(str(self._repo.person_by_pk(link.person_id).id))
        self._move(tx, patient_id, person, how="merge")
        return str(person.id)

    def merge_persons_of(self, tx: Transaction, survivor_record_id: str,
                         merged_record_id: str) -> str:
        """Merge the person of record ``merged_record_id`` into the person of record
        ``survivor_record_id`` as a steward's merge (undoable), unless they are one
        person already; the surviving person's id. For a source's merge of two of its
        records (HL7 ADT^A40), inside its unit of work."""
        persons = []
        for record_id in (survivor_record_id, merged_record_id):
            row = self._patients.get_row(record_id)
            link = self._repo.link_of(row.pk)
            if link is None:  # pragma: no cover - every live record is linked on write
                raise StateConflict(f"patient {record_id} has no person")
            persons.append(str(self._repo.person_by_pk(link.person_id).id))
        if persons[0] != persons[1]:
            self._merge(tx, persons[0], persons[1], how="source")
        return persons[0]

    def _link(self, tx: Transaction, person_id: str, patient_id: str, *, how: str) -> PersonRow:
        person = self._active_person(person_id)
        self._move(tx, patient_id, person, how=how)
        return person

    def _merge(self, tx: Transaction, survivor_id: str, merged_id: str, *,
               how: MergeHow = "steward", resolving: int | None = None) -> Merge:
        survivor = self._active_person(survivor_id, field_name="survivor_id")
        merged = self._active_person(merged_id, field_name="merged_id")
        if self._repo.persons_kept_apart(survivor.pk, merged.pk):
            raise StateConflict("a steward recorded that records of these persons are not "
                                "the same person; unlink or review them first")
        return self._merging.merge(tx, survivor, merged, how=how, resolving=resolving)

    def _new_person(self, tx: Transaction, review: ReviewItemRow) -> None:
        """The record of a possible match keeps (or gets) a person of its own, placed by
        hand, and is kept apart from the person it was proposed for."""
        right = self._repo.live_record_pks(review.person_id)
        self._repo.add_non_matches([review.patient_id], right, actor=tx.actor.user_id,
                                   now=tx.now)
        link = self._repo.link_of(review.patient_id, lock=True)
        if link is not None and self._repo.live_record_pks(link.person_id) == [
                review.patient_id]:
            self._repo.mark_manual(review.patient_id)
        else:
            fresh = self._repo.new_person(person_id=self._new_id(), now=tx.now)
            patient_id = self._repo.patient_ids([review.patient_id])[review.patient_id]
            self._move(tx, patient_id, fresh, how="review")

    def _close(self, tx: Transaction, review: ReviewItemRow, resolution: str,
               comment: str | None = None) -> None:
        self._repo.resolve(review, resolution=resolution, actor=tx.actor.user_id, now=tx.now,
                           comment=comment)
        payload = {"review_id": str(review.id), "kind": review.kind, "resolution": resolution,
                   "comment": comment}
        tx.audit(AuditTag.REVIEW_RESOLVE, str(review.id), new=payload)
        tx.emit(EventType.REVIEW_RESOLVED, str(review.id), payload=payload)

    def _active_person(self, person_id: str, *, field_name: str = "person_id") -> PersonRow:
        self._repo.lock_linking()
        person = self._repo.person(person_id, lock=True)
        if person.merged_into_id is not None:
            target = self._repo.person_by_pk(person.merged_into_id)
            raise StateConflict(f"person {person_id} was merged into {target.id}; use that")
        return person

    def _move(self, tx: Transaction, patient_id: str, person: PersonRow, *, how: str,
              row: PatientRow | None = None, action: str = "linked") -> None:
        now, actor = tx.now, tx.actor.user_id
        row = row or self._patients.get_row(patient_id, lock="FOR UPDATE")
        link = self._repo.link_of(row.pk, lock=True)
        previous = link.person_id if link is not None else None
        data = link.match_data if link is not None else match_data(self._patients.load(row))
        self._repo.set_link(row.pk, person.pk, match_data=data, manual=True, how=how,
                            probability=None, model_version=None, now=now)
        self._repo.touch([person.pk] + ([previous] if previous else []), now)
        ids = self._repo.person_ids([person.pk] + ([previous] if previous else []))
        payload = {"patient_id": patient_id, "person_id": ids[person.pk],
                   "previous_person_id": ids.get(previous) if previous else None,
                   "how": how, "probability": None, "model_version": None}
        self._repo.add_history(person.pk, action if action == "linked" else "created",
                               actor=actor, now=now, patient_pk=row.pk, detail=payload)
        if previous is not None and previous != person.pk:
            self._repo.add_history(previous, action if action == "unlinked" else "moved_out",
                                   actor=actor, now=now, patient_pk=row.pk, detail=payload)
        if action == "unlinked":
            tx.audit(AuditTag.UNLINK_MANUAL, patient_id, new=payload)
            tx.emit(EventType.PATIENT_UNLINKED, patient_id, payload=payload)
        else:
            tx.audit(AuditTag.link(how), patient_id, new=payload)
            tx.emit(EventType.PATIENT_LINKED, patient_id, payload=payload)
