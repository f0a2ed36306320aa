"""The audit trail, read back: per patient record, most recent, per user.

The trail shows record content (old and new values), so reading it is audited like
reading a record, in the same unit of work as the read. The audit rows of this process's
reads that wait to be written (AUDIT_READ_WINDOW) are written first, so the trail has
every read this process answered; other processes' reads show within the window.
"""

from __future__ import annotations

from mpi.domain.audit import Actor, AuditEntryOut, AuditPage, AuditTag
from mpi.storage.audit import AuditRepository
from mpi.storage.patients import PatientRepository
from mpi.storage.work import UnitOfWork


def _page(entries: list[AuditEntryOut], limit: int) -> AuditPage:
    more = len(entries) == limit and entries
    return AuditPage(items=entries, next_cursor=str(entries[-1].id) if more else None)


class AuditTrail:
    def __init__(self, work: UnitOfWork, audit: AuditRepository, patients: PatientRepository):
        self._work = work
        self._audit = audit
        self._patients = patients

    def for_patient(self, patient_id: str, actor: Actor, *, before: int | None,
                    limit: int) -> AuditPage:
        """A record's trail, newest first (deleted records keep theirs)."""
        self._work.flush_reads()
        with self._work.begin(actor) as tx:
            self._patients.require_exists(patient_id)
            entries = self._audit.for_entity("patient", patient_id, before=before,
                                             limit=limit)
            tx.audit(AuditTag.AUDIT_TRAIL_READ, patient_id)
        return _page(entries, limit)

    def recent(self, actor: Actor, *, before: int | None, limit: int) -> AuditPage:
        self._work.flush_reads()
        with self._work.begin(actor) as tx:
            entries = self._audit.recent(before=before, limit=limit)
            tx.audit(AuditTag.AUDIT_RECENT_READ, None, new={"returned": len(entries)})
        return _page(entries, limit)

    def by_user(self, user_id: str, actor: Actor, *, before: int | None,
                limit: int) -> AuditPage:
        self._work.flush_reads()
        with self._work.begin(actor) as tx:
            entries = self._audit.by_actor(user_id, before=before, limit=limit)
            tx.audit(AuditTag.AUDIT_USER_READ, user_id, new={"returned": len(entries)})
        return _page(entries, limit)
