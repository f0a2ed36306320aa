"""Reading persons: a person (the PIX view), the person of a record, a person's history;
and, for the command line, every record's person and matching form."""

from __future__ import annotations

from typing import Any

from mpi.domain.audit import Actor, AuditTag
from mpi.domain.errors import Deleted
from mpi.domain.identity import LinkHistoryEntry, LinkHistoryPage, Person
from mpi.domain.patient import Patient
from mpi.identity.views import IdentityViews
from mpi.storage.identity import IdentityRepository
from mpi.storage.patients import PatientRepository
from mpi.storage.work import UnitOfWork


class PersonService:
    def __init__(self, work: UnitOfWork, repo: IdentityRepository, patients: PatientRepository,
                 views: IdentityViews):
        self._work = work
        self._repo = repo
        self._patients = patients
        self._views = views

    def person(self, person_id: str, actor: Actor) -> Person:
        with self._work.begin(actor) as tx:
            view = self._views.person(self._repo.person(person_id))
            tx.audit(AuditTag.PERSON_READ, person_id)
        return view

    def person_of_patient(self, patient_id: str, actor: Actor) -> Person:
        with self._work.begin(actor) as tx:
            row = self._patients.get_row(patient_id)
            link = self._repo.link_of(row.pk)
            if link is None:  # pragma: no cover - every record is linked on write
                raise Deleted(f"patient {patient_id} has no person")
            view = self._views.person(self._repo.person_by_pk(link.person_id))
            tx.audit(AuditTag.PERSON_READ, view.id, new={"via_patient": patient_id})
        return view

    def records_of(self, person_ids: list[str], actor: Actor, *,
                   via: str = "match") -> dict[str, list[Patient]]:
        """The live records of several persons at once (a match's candidates, a review's
        persons), each person audited as read ``via`` that; a few statements whatever their
        number."""
        with self._work.begin(actor) as tx:
            out: dict[str, list[Patient]] = {pid: [] for pid in person_ids}
            for person_id, record_id in self._repo.live_records_of(person_ids):
                # The one-statement read (its SQL built once, prepared on PostgreSQL).
                out.setdefault(person_id, []).append(self._patients.read(record_id))
            for person_id in person_ids:
                tx.audit(AuditTag.PERSON_READ, person_id, new={"via": via})
        return out

    def history(self, person_id: str, actor: Actor, *, before: int | None,
                limit: int) -> LinkHistoryPage:
        with self._work.begin(actor) as tx:
            person = self._repo.person(person_id)
            rows, cursor = self._repo.history(person.pk, before=before, limit=limit)
            pids = self._repo.patient_ids(r.patient_id for r in rows if r.patient_id)
            items = [LinkHistoryEntry(id=r.pk, occurred_at=r.occurred_at, action=r.action,
                                      actor=r.actor, patient_id=pids.get(r.patient_id),
                                      probability=r.probability,
                                      model_version=r.model_version, detail=r.detail)
                     for r in rows]
            tx.audit(AuditTag.PERSON_HISTORY_READ, person_id)
        return LinkHistoryPage(items=items, next_cursor=str(cursor) if cursor else None)

    # --- the whole registry (``mpi export``, ``mpi train``; the caller holds a connection) --

    def clusters(self) -> list[tuple[str, str, str]]:
        """(source, source id, person id) of every live record."""
        return self._repo.clusters()

    def matching_forms(self) -> list[tuple[str, dict[str, Any] | None]]:
        """(patient id, matching form) of every live record (empty for records linked
        before matching existed)."""
        return self._repo.matching_forms()
