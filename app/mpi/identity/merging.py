"""Merging two persons, inside an open unit of work: a steward's merge, a source's
(HL7 ADT^A40), or the engine's when a record proves two persons one.

Every merge is written the same way, so every merge can be undone the same way: the
merged person's records move to the survivor, the merged person points to it, a merge
row lists what moved, both persons' histories say so, and the unit of work gets an audit
row and a ``persons.merged`` change event. Open reviews that asked whether what is now one
person is one (a possible duplicate between the two, a possible match of one's record
with the other) are closed as ``merged``: nothing is left to decide.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

from mpi.domain.audit import AuditTag
from mpi.domain.events import EventType
from mpi.domain.identity import Merge, MergeHow
from mpi.storage.identity import IdentityRepository
from mpi.storage.models import PersonRow
from mpi.storage.work import Transaction


class Merging:
    def __init__(self, repo: IdentityRepository, *, new_id: Callable[[], uuid.UUID]):
        self._repo = repo
        self._new_id = new_id

    def merge(self, tx: Transaction, survivor: PersonRow, merged: PersonRow, *,
              how: MergeHow = "steward", probability: float | None = None,
              model_version: str | None = None, patient_id: str | None = None,
              resolving: int | None = None) -> Merge:
        """Merge ``merged`` into ``survivor`` (both locked and active: the caller's
        checks). An automatic merge (``how="auto"``) names the record that proved it
        (``patient_id``) and its evidence; the records it moves stay the engine's to
        place (a steward's merge places them by hand). ``resolving``: the review whose
        decision this merge is (closed by its caller, not here)."""
        now, actor = tx.now, tx.actor.user_id
        moved = self._repo.live_record_pks(merged.pk)
        self._repo.move_links(moved, survivor.pk, how="merge", manual=how != "auto", now=now)
        self._repo.set_merged_into(merged.pk, survivor.pk, now)
        self._repo.touch([survivor.pk], now)
        merge_id = self._new_id()
        row = self._repo.create_merge(merge_id=merge_id, survivor_pk=survivor.pk,
                                      merged_pk=merged.pk, moved=moved, actor=actor, now=now,
                                      how=how, probability=probability,
                                      model_version=model_version)
        pids = self._repo.patient_ids(moved)
        moved_ids = [pids[pk] for pk in moved]
        survivor_id, merged_id = str(survivor.id), str(merged.id)
        payload: dict[str, object] = {"merge_id": str(merge_id), "survivor_id": survivor_id,
                   "merged_id": merged_id, "moved_patient_ids": moved_ids, "how": how}
        if how == "auto":
            payload.update(patient_id=patient_id, probability=probability,
                           model_version=model_version)
        for pk in (survivor.pk, merged.pk):
            self._repo.add_history(pk, "merged", actor=actor, now=now, detail=payload,
                                   probability=probability, model_version=model_version)
        tx.audit(AuditTag.MERGE_AUTO if how == "auto" else AuditTag.MERGE_CREATE, survivor_id,
                 new=payload)
        tx.emit(EventType.PERSONS_MERGED, survivor_id, payload=payload)
        self._close_settled(tx, survivor.pk, merged.pk, resolving)
        return Merge(id=str(merge_id), survivor_id=survivor_id, merged_id=merged_id,
                     moved_patient_ids=moved_ids, actor=actor, created_at=row.created_at,
                     how=how, probability=probability)

    def _close_settled(self, tx: Transaction, survivor_pk: int, merged_pk: int,
                       resolving: int | None) -> None:
        persons = [survivor_pk, merged_pk]
        for review in self._repo.open_reviews_within(
                persons, self._repo.live_record_pks(survivor_pk)):
            if review.pk == resolving:
                continue
            self._repo.resolve(review, resolution="merged", actor=tx.actor.user_id,
                               now=tx.now)
            payload = {"review_id": str(review.id), "kind": review.kind,
                       "resolution": "merged", "comment": None}
            tx.audit(AuditTag.REVIEW_RESOLVE, str(review.id), new=payload)
            tx.emit(EventType.REVIEW_RESOLVED, str(review.id), payload=payload)
