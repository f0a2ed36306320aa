"""Patient service: each write is ONE unit of work (record rows, link, audit rows, events)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import NoReturn

from mpi.domain.audit import Actor, AuditTag
from mpi.domain.criteria import Criteria
from mpi.domain.errors import Conflict, FieldProblem, Forbidden, InvalidInput, StateConflict
from mpi.domain.events import EventType
from mpi.domain.patient import Patient, PatientInput, parse_patient
from mpi.identity.linking import Linking
from mpi.identity.stewardship import StewardService
from mpi.storage.changes import ChangeRepository
from mpi.storage.fields import EncodedJSON
from mpi.storage.finder import Found, PatientFinder
from mpi.storage.models import PatientRow
from mpi.storage.patients import Page, PatientFilter, PatientRepository
from mpi.storage.work import Transaction, UnitOfWork, retried


def utc_now() -> datetime:
    """Naive UTC, as stored."""
    return datetime.now(UTC).replace(tzinfo=None)


class PatientService:
    """Create, read, update and retire patient records, auditing each step."""

    def __init__(self, work: UnitOfWork, repository: PatientRepository, linking: Linking, *,
                 new_id: Callable[[], uuid.UUID], stewards: StewardService | None = None):
        self._work = work
        self._repository = repository
        self._linking = linking
        self._new_id = new_id
        self._stewards = stewards
        self._finder = PatientFinder(repository)
        self._changes = ChangeRepository()

    def today(self) -> date:
        return self._work.clock().date()

    def parse(self, body: bytes) -> PatientInput:
        return parse_patient(body, today=self.today())

    # --- writes ------------------------------------------------------------------------

    @retried
    def create(self, data: PatientInput, actor: Actor) -> Patient:
        if data.id is not None:
            raise InvalidInput([FieldProblem("id", "is assigned by the server; leave it out")])
        self._may_write(actor, data.source, None, "create")
        try:
            with self._work.begin(actor) as tx:
                (patient,) = self._create_many(tx, [data])
        except Conflict as clash:
            raise self._explain(clash, data, exclude_id=None) from None
        return patient

    @retried
    def import_batch(self, items: Sequence[PatientInput], actor: Actor, *,
                     before_linking: Callable[[], None] | None = None
                     ) -> list[Patient | None]:
        """Register several records in ONE unit of work, each linked exactly as ``create``
        links it (one at a time, in order). A record whose (source, source_id) is already
        live, or repeats an earlier one in ``items``, is skipped (None), so an interrupted
        import can simply be run again.

        ``before_linking``: called in the unit of work once the records are inserted and
        their keys computed, before the persons their keys select are read (``mpi import
        --workers`` waits there until the previous batch is committed, so that every
        batch is linked against all those before it); called again if the unit of work
        is retried."""
        for source in sorted({d.source for d in items}):
            self._may_write(actor, source, None, "import")
        with self._work.begin(actor) as tx:
            live = self._repository.live_source_ids({(d.source, d.source_id) for d in items})
            keep: list[bool] = []
            for data in items:
                key = (data.source, data.source_id)
                keep.append(key not in live and data.id is None)
                live.add(key)
            created = iter(self._create_many(
                tx, [d for d, k in zip(items, keep, strict=True) if k],
                before_linking=before_linking))
            return [next(created) if k else None for k in keep]

    def _create_many(self, tx: Transaction, items: Sequence[PatientInput], *,
                     before_linking: Callable[[], None] | None = None) -> list[Patient]:
        """Insert, link, audit and log new records, in ``tx``."""
        inserted = self._repository.insert_many([(d, self._new_id()) for d in items],
                                                now=tx.now)
        placements = self._linking.place_new([(p, pk) for pk, p in inserted],
                                             before_lookup=before_linking)
        patients = [p.model_copy(update={"person_id": where.person_id})
                    for (_, p), where in zip(inserted, placements, strict=True)]
        # The record goes to the audit row and the change event alike: encoded once. The
        # feed has the record's event before its link's (a reader meets the record first);
        # the audit trail has the link's row first, as it always had.
        records = [EncodedJSON.of(p.to_dict()) for p in patients]
        for patient, record in zip(patients, records, strict=True):
            tx.emit(EventType.PATIENT_CREATED, patient.id, version=patient.version,
                    payload=record)
        self._linking.link_new(tx, placements)
        for patient, record in zip(patients, records, strict=True):
            tx.audit(AuditTag.PATIENT_CREATE, patient.id, new=record)
        return patients

    @retried
    def update(self, patient_id: str, data: PatientInput, actor: Actor, *,
               expected_version: int | None) -> Patient:
        """Replace the content; ``expected_version`` None means whatever version is current."""
        if data.id is not None and data.id != patient_id:
            raise InvalidInput([FieldProblem("id", f"does not match the URL ({patient_id})")])
        self._may_write(actor, data.source, patient_id, "update")
        try:
            with self._work.begin(actor) as tx:
                self._linking.hold()
                row = self._repository.get_row(patient_id, lock="FOR UPDATE")
                if not actor.may_write(row.source):
                    raise _SourceDenied(row.source)
                old = self._repository.load(row)
                version = row.version if expected_version is None else expected_version
                patient = self._repository.update(row, data, expected_version=version,
                                                  now=tx.now)
                placement = self._linking.place(patient, row.pk)
                patient = patient.model_copy(update={"person_id": placement.person_id})
                record = EncodedJSON.of(patient.to_dict())
                tx.emit(EventType.PATIENT_UPDATED, patient_id, version=patient.version,
                        payload=record)
                self._linking.link(tx, placement)  # (the order: as in _create_many)
                tx.audit(AuditTag.PATIENT_UPDATE, patient_id, old=old.to_dict(), new=record)
        except Conflict as clash:
            raise self._explain(clash, data, exclude_id=patient_id) from None
        except _SourceDenied as denied:
            self._deny(actor, denied.source, patient_id, "update")
        return patient

    @retried
    def merge_into(self, patient_id: str, data: PatientInput, survivor_id: str, actor: Actor,
                   *, expected_version: int | None = None,
                   whole_person: bool = False) -> Patient:
        """A source merged record ``patient_id`` into ``survivor_id`` (PIXm ITI-104 resolve
        duplicates; FHIR ``link`` replaced-by), in ONE unit of work: the record takes the
        content sent (inactive), points to the survivor, and joins the survivor's person
        by hand, so every identifier and cross-reference of it now leads there.

        ``whole_person`` (HL7 ADT^A40): the record's whole person is merged into the
        survivor's, as a steward's merge is (one undoable merge), rather than the record
        alone moving."""
        if self._stewards is None:  # pragma: no cover - wired by the composition root
            raise RuntimeError("merge_into needs the steward service")
        if data.active:
            raise InvalidInput([FieldProblem("active", "a record merged into another is "
                                             "inactive: send active false")])
        if patient_id == survivor_id:
            raise InvalidInput([FieldProblem("link", "a record cannot replace itself")])
        self._may_write(actor, data.source, patient_id, "merge")
        try:
            with self._work.begin(actor) as tx:
                self._linking.hold()
                row = self._repository.get_row(patient_id, lock="FOR UPDATE")
                survivor = self._repository.get_row(survivor_id, lock="FOR UPDATE")
                if survivor.replaced_by_pk is not None:
                    raise StateConflict(f"patient {survivor_id} was itself merged into "
                                        "another record; name that one")
                if not actor.may_write(row.source):
                    raise _SourceDenied(row.source)
                old = self._repository.load(row)
                version = row.version if expected_version is None else expected_version
                self._repository.update(row, data, expected_version=version, now=tx.now)
                self._repository.set_replaced_by(row, survivor)
                person_id = (
                    self._stewards.merge_persons_of(tx, survivor_id, patient_id)
                    if whole_person else self._stewards.join_record(tx, patient_id, survivor_id))
                patient = self._repository.load(PatientRow.get_by_id(row.pk))
                placement = self._linking.place(patient, row.pk)
                self._linking.link(tx, placement)  # (manual now: refreshes its keys)
                record = EncodedJSON.of(patient.to_dict())
                tx.emit(EventType.PATIENT_UPDATED, patient_id, version=patient.version,
                        payload=record)
                tx.audit(AuditTag.PATIENT_UPDATE, patient_id, old=old.to_dict(), new=record)
        except Conflict as clash:
            raise self._explain(clash, data, exclude_id=patient_id) from None
        except _SourceDenied as denied:
            self._deny(actor, denied.source, patient_id, "merge")
        assert patient.person_id == person_id
        return patient

    @retried
    def delete(self, patient_id: str, actor: Actor, *, expected_version: int | None) -> None:
        try:
            self._delete(patient_id, actor, expected_version=expected_version)
        except _SourceDenied as denied:
            self._deny(actor, denied.source, patient_id, "delete")

    def _delete(self, patient_id: str, actor: Actor, *, expected_version: int | None) -> None:
        with self._work.begin(actor) as tx:
            self._linking.hold()
            row = self._repository.get_row(patient_id, lock="FOR UPDATE")
            if not actor.may_write(row.source):
                raise _SourceDenied(row.source)
            old = self._repository.load(row)
            version = self._repository.soft_delete(row, expected_version=expected_version,
                                                   now=tx.now)
            self._linking.retire(tx, row.pk)
            tx.audit(AuditTag.PATIENT_DELETE, patient_id, old=old.to_dict())
            tx.emit(EventType.PATIENT_DELETED, patient_id, version=version,
                    payload={"id": patient_id, "source": old.source,
                             "source_id": old.source_id, "person_id": old.person_id})

    def _may_write(self, actor: Actor, source: str, patient_id: str | None,
                   action: str) -> None:
        """Nothing if ``actor`` may write records of ``source``; else :meth:`_deny`."""
        if not actor.may_write(source):
            self._deny(actor, source, patient_id, action)

    def _deny(self, actor: Actor, source: str, patient_id: str | None, action: str) -> NoReturn:
        """Audit the refusal (in a unit of its own: the refused write leaves nothing) and
        raise Forbidden."""
        with self._work.begin(actor) as tx:
            tx.audit(AuditTag.ACCESS_SOURCE_DENIED, patient_id,
                     new={"source": source, "action": action})
        raise Forbidden(f"this client may not write records of source {source!r} "
                        "(its token names the sources it may write)")

    # --- reads (audited: reading a record is access to health information) -------------

    def get(self, patient_id: str, actor: Actor) -> Patient:
        def fetch(tx: Transaction) -> Patient:
            patient = self._repository.read(patient_id)
            tx.audit(AuditTag.PATIENT_READ, patient_id)
            return patient

        return self._work.read(actor, fetch)

    def person_records(self, person_ids: Iterable[str]) -> dict[str, list[str]]:
        """Each person's live, active records' ids, oldest first (not audited: ids only,
        of records the caller's reads already name through their person)."""
        with self._work.reading():
            return self._repository.person_records(person_ids)

    def id_of(self, source: str, source_id: str) -> str | None:
        """The live record ``source`` holds as ``source_id``, if any (not audited: it reads
        no record content; what the caller then reads or writes is)."""
        found = self.key_state(source, source_id)
        return found[0] if found else None

    def key_state(self, source: str, source_id: str) -> tuple[str, bool] | None:
        """(id, merged into another record) of the live record ``source`` holds as
        ``source_id``, if any (not audited, as :meth:`id_of`)."""
        with self._work.reading():
            return self._repository.live_by_source(source, source_id)

    def versions(self, patient_id: str, actor: Actor, *,
                 version: int | None = None) -> list[PatientVersion]:
        """The record's versions, newest first, from the change log (every create, update
        and delete appends the record as it then was); only ``version`` when given.
        Audited as a read of the record."""
        with self._work.begin(actor) as tx:
            self._repository.require_exists(patient_id)
            events = self._changes.of_entity("patient", patient_id, _VERSION_EVENTS,
                                             version=version)
            tx.audit(AuditTag.PATIENT_READ, patient_id,
                     new={"history": True} if version is None else {"version": version})
        out = []
        for event in events:
            deleted = event.event_type == EventType.PATIENT_DELETED.value
            out.append(PatientVersion(
                version=event.entity_version or 0, occurred_at=event.occurred_at,
                deleted=deleted,
                patient=None if deleted else Patient.model_validate(event.payload)))
        return out

    def list_page(self, filters: PatientFilter, actor: Actor, *, after: int | None,
                  limit: int) -> Page:
        with self._work.begin(actor) as tx:
            page = self._repository.list_page(filters, after=after, limit=limit)
            tx.audit(AuditTag.PATIENT_LIST, None, new={
                "filters": {k: (v.isoformat() if isinstance(v, date) else v)
                            for k, v in vars(filters).items() if v is not None},
                "returned": [p.id for p in page.items]})
        return page

    def find(self, criteria: Criteria, actor: Actor, *, offset: int, count: int,
             total: bool, via: str = "fhir") -> Found:
        """Exact search in the database (FHIR PDQm, HL7 PDQ and PIX; ``via`` says which):
        every term must hold. Audited with the search's terms (they are what the client
        asked, as on a list) and the ids returned."""
        with self._work.begin(actor) as tx:
            found = self._finder.find(criteria, offset=offset, count=count, total=total,
                                      today=self.today())
            tx.audit(AuditTag.PATIENT_SEARCH, None, new={
                "via": via, "terms": [_term_summary(t) for t in criteria.terms],
                "offset": offset, "returned": [p.id for p in found.items]})
        return found

    # --- helpers -------------------------------------------------------------------------

    def _explain(self, clash: Conflict, data: PatientInput, *,
                 exclude_id: str | None) -> Conflict:
        """After a unique index refused a write (and it rolled back): name what clashed."""
        with self._work.reading():
            holder = self._repository.find_live_id_by_source(data.source, data.source_id)
        if holder is not None and holder != exclude_id:
            return Conflict(f"source {data.source} already has a live record "
                            f"{data.source_id}: patient {holder}", field="source_id",
                            existing_id=holder)
        return clash


def _term_summary(term: object) -> dict[str, object]:
    """A search term for the audit row, as plain JSON."""
    def plain(value: object) -> object:
        if isinstance(value, (date, datetime)):
            return value.isoformat()
        if hasattr(value, "__dataclass_fields__"):
            return {k: plain(v) for k, v in vars(value).items() if v is not None}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        return value

    summary = plain(term)
    assert isinstance(summary, dict)
    return summary


_VERSION_EVENTS = tuple(e.value for e in (EventType.PATIENT_CREATED, EventType.PATIENT_UPDATED,
                                          EventType.PATIENT_DELETED))


@dataclass(frozen=True)
class PatientVersion:
    version: int
    occurred_at: datetime
    deleted: bool
    patient: Patient | None  # None for the deletion


class _SourceDenied(Exception):
    """Inside a unit of work: the stored record's source is not the client's to write."""

    def __init__(self, source: str):
        super().__init__(source)
        self.source = source
