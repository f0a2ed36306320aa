"""Patient service: each write is ONE transaction of record rows + audit row + change event."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, date, datetime
from typing import Any

import peewee

from mpi.audit.log import Actor, AuditLog
from mpi.domain.errors import Conflict, FieldProblem, InvalidInput, StorageUnavailable
from mpi.domain.patient import Patient, PatientInput, parse_patient
from mpi.events.log import ChangeLog
from mpi.identity.service import IdentityService, change_rows
from mpi.storage.db import write_transaction
from mpi.storage.fields import EncodedJSON
from mpi.storage.patients import Page, PatientFilter, PatientRepository

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    """Naive UTC, as stored."""
    return datetime.now(UTC).replace(tzinfo=None)


class PatientService:
    """Create, read, update and retire patient records, auditing each step."""

    def __init__(self, db: peewee.Database, *, clock: Clock = utc_now,
                 new_id: Callable[[], uuid.UUID] = uuid.uuid4,
                 repository: PatientRepository | None = None,
                 audit: AuditLog | None = None, changes: ChangeLog | None = None,
                 identity: IdentityService | None = None):
        self._db = db
        self._clock = clock
        self._new_id = new_id
        self.repository = repository or PatientRepository()
        self.audit = audit or AuditLog()
        self.changes = changes or ChangeLog(db)
        if identity is None:
            from mpi.identity.matcher import default_engine

            identity = IdentityService(db, default_engine(), clock=clock, new_id=new_id,
                                       audit=self.audit, changes=self.changes,
                                       patients=self.repository)
        self.identity = identity

    def today(self) -> date:
        return self._clock().date()

    def parse(self, body: bytes) -> PatientInput:
        return parse_patient(body, today=self.today())

    # --- writes ------------------------------------------------------------------------

    def create(self, data: PatientInput, actor: Actor) -> Patient:
        if data.id is not None:
            raise InvalidInput([FieldProblem("id", "is assigned by the server; leave it out")])
        now = self._clock()
        try:
            with _storage_errors(), write_transaction(self._db):
                (patient,) = self._create_many([data], actor, now)
        except Conflict as clash:
            raise self._explain(clash, data, exclude_id=None) from None
        return patient

    def import_batch(self, items: Sequence[PatientInput], actor: Actor) -> list[Patient | None]:
        """Register several records in ONE transaction, each linked exactly as ``create``
        links it (one at a time, in order). A record whose (source, source_id) is already
        live, or repeats an earlier one in ``items``, is skipped (None), so an interrupted
        import can simply be run again."""
        now = self._clock()
        with _storage_errors(), write_transaction(self._db):
            live = self.repository.live_source_ids({(d.source, d.source_id) for d in items})
            keep: list[bool] = []
            for data in items:
                key = (data.source, data.source_id)
                keep.append(key not in live and data.id is None)
                live.add(key)
            created = iter(self._create_many([d for d, k in zip(items, keep, strict=True) if k],
                                             actor, now))
            return [next(created) if k else None for k in keep]

    def _create_many(self, items: Sequence[PatientInput], actor: Actor,
                     now: datetime) -> list[Patient]:
        """Insert, link, audit and log records, in the caller's transaction."""
        inserted = self.repository.insert_many([(d, self._new_id()) for d in items], now=now)
        outcomes = self.identity.assign_new([(p, pk) for pk, p in inserted], actor, now)
        patients = [p.model_copy(update={"person_id": o.person_id})
                    for (_, p), o in zip(inserted, outcomes, strict=True)]
        # The record goes to the audit row and the change event alike: encoded once.
        records = [EncodedJSON.of(p.to_dict()) for p in patients]
        self.audit.record_many([("patient:record:create", p.id, None, r)
                                for p, r in zip(patients, records, strict=True)], actor,
                               entity_type="patient", now=now)
        events: list[tuple[str, str, str, int | None, Any]] = []
        for p, r, o in zip(patients, records, outcomes, strict=True):
            events += [("PatientCreated", "patient", p.id, p.version, r),
                       *change_rows(o.events)]
        self.changes.append_many(events, actor, now=now)
        return patients

    def update(self, patient_id: str, data: PatientInput, actor: Actor, *,
               expected_version: int | None) -> Patient:
        """Replace the content; ``expected_version`` None means whatever version is current."""
        if data.id is not None and data.id != patient_id:
            raise InvalidInput([FieldProblem("id", f"does not match the URL ({patient_id})")])
        now = self._clock()
        try:
            with _storage_errors(), write_transaction(self._db):
                row = self.repository.get_row(patient_id, lock="FOR UPDATE")
                old = self.repository.load(row)
                version = row.version if expected_version is None else expected_version
                patient = self.repository.update(row, data, expected_version=version, now=now)
                outcome = self.identity.assign(patient, row.pk, actor, now)
                patient = patient.model_copy(update={"person_id": outcome.person_id})
                record = EncodedJSON.of(patient.to_dict())
                self.audit.record("patient:record:update", actor, entity_type="patient",
                                  entity_id=patient_id, now=now, old=old.to_dict(), new=record)
                self.changes.append_many(
                    [("PatientUpdated", "patient", patient_id, patient.version, record),
                     *change_rows(outcome.events)], actor, now=now)
        except Conflict as clash:
            raise self._explain(clash, data, exclude_id=patient_id) from None
        return patient

    def delete(self, patient_id: str, actor: Actor, *, expected_version: int | None) -> None:
        now = self._clock()
        with _storage_errors(), write_transaction(self._db):
            row = self.repository.get_row(patient_id, lock="FOR UPDATE")
            old = self.repository.load(row)
            version = self.repository.soft_delete(row, expected_version=expected_version,
                                                  now=now)
            self.identity.retire(row.pk, patient_id, actor, now)
            self.audit.record("patient:record:delete", actor, entity_type="patient",
                              entity_id=patient_id, now=now, old=old.to_dict())
            self.changes.append("PatientDeleted", actor, entity_type="patient",
                                entity_id=patient_id, entity_version=version, now=now,
                                payload={"id": patient_id, "source": old.source,
                                         "source_id": old.source_id,
                                         "person_id": old.person_id})

    # --- reads (audited: reading a record is access to health information) -------------

    def get(self, patient_id: str, actor: Actor) -> Patient:
        now = self._clock()
        with _storage_errors(), write_transaction(self._db):
            patient = self.repository.get(patient_id)
            self.audit.record("patient:record:read", actor, entity_type="patient",
                              entity_id=patient_id, now=now)
        return patient

    def list_page(self, filters: PatientFilter, actor: Actor, *, after: int | None,
             limit: int) -> Page:
        now = self._clock()
        with _storage_errors(), write_transaction(self._db):
            page = self.repository.list_page(filters, after=after, limit=limit)
            self.audit.record(
                "patient:record:list", actor, entity_type="patient", entity_id=None, now=now,
                new={"filters": {k: (v.isoformat() if isinstance(v, date) else v)
                                 for k, v in vars(filters).items() if v is not None},
                     "returned": [p.id for p in page.items]})
        return page

    def record_access(self, action: str, actor: Actor, *, entity_type: str,
                      entity_id: str | None = None, detail: Any = None) -> None:
        """Audit a read of something that shows record content (audit trails, the feed)."""
        with _storage_errors():
            self.audit.record(action, actor, entity_type=entity_type, entity_id=entity_id,
                              now=self._clock(), new=detail)

    # --- helpers -------------------------------------------------------------------------

    def _explain(self, clash: Conflict, data: PatientInput, *,
                 exclude_id: str | None) -> Conflict:
        """After a unique index refused a write (and it rolled back): name what clashed."""
        with _storage_errors():
            holder = self.repository.find_live_id_by_source(data.source, data.source_id)
            if holder is not None and holder != exclude_id:
                return Conflict(
                    f"source {data.source} already has a live record {data.source_id}: "
                    f"patient {holder}", field="source_id", existing_id=holder)
        return clash


@contextlib.contextmanager
def _storage_errors() -> Iterator[None]:
    """Turn a lost connection or pool exhaustion into StorageUnavailable."""
    try:
        yield
    except (peewee.OperationalError, peewee.InterfaceError) as exc:
        raise StorageUnavailable("the database is unavailable") from exc
