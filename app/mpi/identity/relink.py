"""Stored records re-decided with the current model and rules (``mpi relink``).

A record's person is decided when the record is written. When the model, the
thresholds or the rules change (a new comparison, the twin guard, merging fragments),
records stored before keep the persons they were given: two fragments of one person
founded before the release that merges fragments stay two persons. :meth:`Relinking.page`
takes one page of live records, by primary key, and decides each again exactly as an
update of the record with its current content would (``Linking.place``): the record may
move to another person, found one of its own, or prove two persons one (merged as the
service merges them). Only records whose placement changes are written, through the same
``Linking.link`` as an update (audited with the relink's actor, in the change feed);
records a steward placed are never moved, and persons a steward kept apart are never
merged.

``dry_run`` decides and reports the same, page by page, and writes nothing: each page's
changes are made in its transaction (so later records of the page see earlier ones, as
in a real run) and rolled back. Pages after it see the stored state, so a dry run's
counts are those of a real run up to changes that reach across pages.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mpi.domain.audit import Actor
from mpi.identity.linking import Linking, Placement
from mpi.storage.identity import IdentityRepository
from mpi.storage.patients import PatientRepository
from mpi.storage.work import UnitOfWork, retried


@dataclass(frozen=True)
class RelinkChange:
    """One record whose person changes: from where to where, and why."""

    patient_id: str
    from_person: str | None
    to_person: str
    how: str  # auto (joins a person), new (a person of its own), or review (stays, queued)
    probability: float | None
    merged: tuple[str, ...]  # persons merged into ``to_person`` on this record's evidence


@dataclass(frozen=True)
class RelinkPage:
    last_pk: int | None  # the last record of the page (None: no more records)
    checked: int
    kept: int  # placed by a steward: not re-decided
    changes: list[RelinkChange] = field(default_factory=list)


class _Rehearsed(Exception):
    """Raised with a dry run's page to roll its transaction back."""

    def __init__(self, page: RelinkPage):
        super().__init__("dry run")
        self.page = page


class Relinking:
    def __init__(self, work: UnitOfWork, repo: IdentityRepository,
                 patients: PatientRepository, linking: Linking):
        self._work = work
        self._repo = repo
        self._patients = patients
        self._linking = linking

    def total(self) -> int:
        with self._work.reading():
            return self._repo.live_linked_count()

    def page(self, after_pk: int, limit: int, actor: Actor, *,
             dry_run: bool = False) -> RelinkPage:
        """Decide again up to ``limit`` live records after ``after_pk``; write the
        changes unless ``dry_run``."""
        try:
            return self._page(after_pk, limit, actor, dry_run)
        except _Rehearsed as rehearsed:
            return rehearsed.page

    @retried
    def _page(self, after_pk: int, limit: int, actor: Actor, dry_run: bool) -> RelinkPage:
        with self._work.begin(actor) as tx:
            self._linking.hold()
            rows = self._patients.live_rows_after(after_pk, limit)
            if not rows:
                return RelinkPage(None, 0, 0)
            kept = 0
            changes: list[RelinkChange] = []
            for patient, row in zip(self._patients.load_many(rows), rows, strict=True):
                placement = self._linking.place(patient, row.pk)
                if placement.decision is None:
                    kept += 1
                    continue
                if placement.person_pk == placement.previous_pk and not placement.merges:
                    continue
                changes.append(self._change(placement))
                self._linking.link(tx, placement)
            page = RelinkPage(rows[-1].pk, len(rows), kept, changes)
            if dry_run:
                raise _Rehearsed(page)
        return page

    def _change(self, p: Placement) -> RelinkChange:
        before = (self._repo.person_ids([p.previous_pk])[p.previous_pk]
                  if p.previous_pk is not None else None)
        return RelinkChange(p.patient_id, before, p.person_id, p.how, p.probability,
                            tuple(m.person_id for m in p.merges))
