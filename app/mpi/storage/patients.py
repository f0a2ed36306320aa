"""Patient repository: the only code that reads or writes the patient tables.

It returns :class:`mpi.domain.patient.Patient` objects, never rows. It does not
open transactions: the service wraps each write, with its audit row and
change-log event, in one.
"""

from __future__ import annotations

import contextlib
import json
import operator
import unicodedata
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

import peewee

from mpi.domain.errors import Conflict, Deleted, NotFound, VersionMismatch
from mpi.domain.patient import Patient, PatientInput
from mpi.storage.bulk import any_of, insert_returning, insert_together
from mpi.storage.db import PreparedSelect, execute_prepared, is_postgres, tuples, uuid_text
from mpi.storage.fields import JSONTextField
from mpi.storage.models import (
    PATIENT_CHILD_MODELS,
    PatientAddressRow,
    PatientIdentifierRow,
    PatientLinkRow,
    PatientNameRow,
    PatientRow,
    PatientTelecomRow,
    PersonRow,
)


@contextlib.contextmanager
def _source_clash() -> Iterator[None]:
    """A unique-index violation on (source, source_id): another writer won the race."""
    try:
        yield
    except peewee.IntegrityError as exc:
        raise Conflict("another live record has this source and source_id",
                       field="source_id") from exc


NAME_LENGTH = 200


def normalize_name(value: str | None) -> str | None:
    """Case- and accent-insensitive form used for exact name look-ups."""
    if value is None:
        return None
    decomposed = unicodedata.normalize("NFKD", value.casefold())
    folded = "".join(c for c in decomposed if not unicodedata.combining(c)).strip()
    # Folding can lengthen a name (ß -> ss, ligatures); the column holds NAME_LENGTH.
    return folded[:NAME_LENGTH]


#: Separates the folded given names in ``patient_name.given_norm`` (a control character,
#: which no stored name may contain), so a prefix is looked for at a name's start only.
GIVEN_SEPARATOR = "\x1f"


def given_norm(given: Sequence[str]) -> str | None:
    """A name's given names, folded as :func:`normalize_name` folds them, each preceded
    and the last followed by :data:`GIVEN_SEPARATOR`; None without given names."""
    if not given:
        return None
    return "".join(GIVEN_SEPARATOR + (normalize_name(g) or "") for g in given) + GIVEN_SEPARATOR


@dataclass(frozen=True)
class PatientFilter:
    """Filters for listing patients; every given filter must match."""

    source: str | None = None
    source_id: str | None = None
    family: str | None = None
    birth_date: date | None = None
    identifier_system: str | None = None
    identifier_value: str | None = None


@dataclass(frozen=True)
class Page:
    items: list[Patient]
    next_cursor: int | None


# The record a source holds as one of its ids: each record an HL7 feed sends is looked up.
_LIVE_BY_SOURCE = PreparedSelect(PatientRow, lambda: PatientRow.select(
    PatientRow.id, PatientRow.replaced_by_pk).where(
        PatientRow.source == "", PatientRow.source_id == "", PatientRow.deleted_at.is_null()))


#: Each person's live, active records by primary key (PostgreSQL; bound: the persons' ids).
#: A LATERAL subquery per table, kept apart by OFFSET 0, as ``identity.MEMBERS_SQL`` (which
#: says why): one index probe per person and per link whatever the statistics. Joined
#: plainly, it was planned without statistics (a fresh database's first minute) as a walk
#: over every live record: 20 ms at 26,000 records, 0.15 ms with this one (0.05 ms once
#: analyzed).
PERSON_RECORDS_SQL = (
    "SELECT k.id, r.id FROM unnest(%s::uuid[]) AS k(id) "
    "CROSS JOIN LATERAL (SELECT ps.pk FROM person ps WHERE ps.id = k.id OFFSET 0) ps "
    "CROSS JOIN LATERAL (SELECT pl.patient_pk FROM patient_link pl "
    "WHERE pl.person_pk = ps.pk OFFSET 0) l "
    "CROSS JOIN LATERAL (SELECT p.pk, p.id FROM patient p WHERE p.pk = l.patient_pk "
    "AND p.deleted_at IS NULL AND p.active OFFSET 0) r ORDER BY r.pk")
PERSON_RECORDS_SQL_SQLITE = (
    "SELECT ps.id, p.id FROM patient_link pl JOIN person ps ON ps.pk = pl.person_pk "
    "JOIN patient p ON p.pk = pl.patient_pk "
    "WHERE p.deleted_at IS NULL AND p.active AND ps.id {} ORDER BY p.pk")


class PatientRepository:
    def find_live_id_by_source(self, source: str, source_id: str) -> str | None:
        row = (PatientRow.select(PatientRow.id)
               .where(PatientRow.source == source, PatientRow.source_id == source_id,
                      PatientRow.deleted_at.is_null())
               .first())
        return str(row.id) if row else None

    def live_by_source(self, source: str, source_id: str) -> tuple[str, bool] | None:
        """(id, whether its source merged it into another record) of the live record
        ``source`` holds as ``source_id``."""
        rows = _LIVE_BY_SOURCE.rows(source, source_id)  # (unique among live records)
        return (str(rows[0].id), rows[0].replaced_by_pk is not None) if rows else None

    def live_source_ids(self, keys: set[tuple[str, str]]) -> set[tuple[str, str]]:
        """Which of these (source, source_id) pairs a live record already holds."""
        found: set[tuple[str, str]] = set()
        by_source: dict[str, list[str]] = {}
        for source, source_id in sorted(keys):
            by_source.setdefault(source, []).append(source_id)
        # One source at a time, so the look-up is a range of the (source, source_id) index.
        for source, ids in by_source.items():
            for start in range(0, len(ids), 300):
                query = (PatientRow.select(PatientRow.source, PatientRow.source_id)
                         .where(PatientRow.source == source,
                                PatientRow.source_id.in_(ids[start:start + 300]),
                                PatientRow.deleted_at.is_null()))
                found |= set(tuples(query))
        return found

    def insert(self, data: PatientInput, *, patient_id: uuid.UUID, now: datetime) -> Patient:
        return self.insert_many([(data, patient_id)], now=now)[0][1]

    def insert_many(self, items: Sequence[tuple[PatientInput, uuid.UUID]], *,
                    now: datetime) -> list[tuple[int, Patient]]:
        """Insert several records with a few statements; (primary key, domain object) each,
        in order. A (source, source_id) clash with a live record is a Conflict for all."""
        if not items:
            return []
        rows = [dict(id=pid, source=d.source, source_id=d.source_id, active=d.active,
                     gender=d.gender, **_birth_columns(d), deceased=d.deceased,
                     deceased_date=d.deceased_date, mothers_maiden_name=d.mothers_maiden_name,
                     multiple_birth=_multiple(d), multiple_birth_order=d.multiple_birth_order,
                     **_extra_columns(d), version=1, created_at=now, updated_at=now)
                for d, pid in items]
        with _source_clash():
            returned = insert_returning(PatientRow, rows, ("id", "pk"))
        ids = [pid for _, pid in items] if returned is None else []
        pks: dict[uuid.UUID, int] = {uuid.UUID(str(i)): pk for i, pk in returned or ()}
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            pks.update({pid: pk for pk, pid in tuples(
                PatientRow.select(PatientRow.pk, PatientRow.id).where(PatientRow.id.in_(chunk)))})
        self._insert_children_many([(pks[pid], d) for d, pid in items])
        out = []
        for d, pid in items:
            row = PatientRow(pk=pks[pid], id=pid, version=1, active=d.active, created_at=now,
                             updated_at=now)
            out.append((pks[pid], self._to_domain(row, d)))
        return out

    def get_row(self, patient_id: uuid.UUID | str, *, lock: str | None = None) -> PatientRow:
        """The row for ``patient_id``; NotFound or Deleted otherwise.

        ``lock`` ("FOR UPDATE" before a write, "FOR SHARE" before reading the child
        rows) holds the row until the transaction ends on PostgreSQL, so the record
        read is one version, never a mix; SQLite's write lock already serialises.
        """
        query = PatientRow.select().where(PatientRow.id == patient_id)
        if lock and is_postgres(PatientRow._meta.database):
            query = query.for_update(lock)  # type: ignore[arg-type]  # peewee takes the clause text
        row = query.first()
        if row is None:
            raise NotFound(f"no patient {patient_id}")
        if row.deleted_at is not None:
            raise Deleted(f"patient {patient_id} was deleted")
        return row

    def set_replaced_by(self, row: PatientRow, by: PatientRow | None) -> None:
        PatientRow.update(replaced_by=by.pk if by else None).where(
            PatientRow.pk == row.pk).execute()

    def require_exists(self, patient_id: uuid.UUID | str) -> None:
        """NotFound unless the record exists (deleted or not)."""
        if not PatientRow.select().where(PatientRow.id == patient_id).exists():
            raise NotFound(f"no patient {patient_id}")

    def get(self, patient_id: uuid.UUID | str) -> Patient:
        """One consistent version of the record (call inside a transaction)."""
        return self.load(self.get_row(patient_id, lock="FOR SHARE"))

    def read(self, patient_id: uuid.UUID | str) -> Patient:
        """The record, its child rows and its person in ONE statement (one round trip).

        A statement sees one snapshot of the database, so the record read is one version
        without locking anything: no transaction is needed (and none should be open if
        the read is to cost a single round trip). NotFound or Deleted otherwise.
        """
        db = PatientRow._meta.database
        try:
            key = PatientRow.id.db_value(uuid.UUID(str(patient_id)))
        except ValueError:
            raise NotFound(f"no patient {patient_id}") from None
        row = execute_prepared(db, _one_record_sql(is_postgres(db)), (key,)).fetchone()
        if row is None:
            raise NotFound(f"no patient {patient_id}")
        if row[-1] is not None:  # deleted_at
            raise Deleted(f"patient {patient_id} was deleted")
        return _record_from_row(row)

    def read_many(self, patient_ids: Sequence[str]) -> list[Patient]:
        """Live records by id, in the order given, in ONE statement (the one-statement
        read for several ids); unknown or deleted ids are left out."""
        if not patient_ids:
            return []
        db = PatientRow._meta.database
        keys = [PatientRow.id.db_value(uuid.UUID(str(i))) for i in patient_ids]
        marks = ", ".join([db.param] * len(keys))
        sql = f'{_records_select(is_postgres(db))} WHERE p."{_P.id.column_name}" IN ({marks})'
        found = {}
        for row in db.execute_sql(sql, keys).fetchall():
            if row[-1] is None:  # not deleted
                record = _record_from_row(row)
                found[record.id] = record
        return [found[str(uuid.UUID(str(i)))] for i in patient_ids
                if str(uuid.UUID(str(i))) in found]

    def person_records(self, person_ids: Iterable[str]) -> dict[str, list[str]]:
        """Each person's live records that their sources keep active, oldest first (by
        primary key), in one prepared statement (a FHIR read pays it on every request: built
        by peewee and planned each time it cost more than the read itself): the first is
        the person's one active FHIR Patient (PDQm), the others refer to it."""
        field = PersonRow._meta.fields["id"]  # type: ignore[attr-defined]
        keys = sorted({field.db_value(uuid.UUID(str(i))) for i in person_ids})
        if not keys:
            return {}
        db = PatientRow._meta.database
        if is_postgres(db):
            cursor = execute_prepared(db, PERSON_RECORDS_SQL, (keys,))
        else:
            clause, params = any_of(db, keys)
            # ``clause`` is fixed SQL text from any_of; the ids are bound as one parameter.
            cursor = db.execute_sql(PERSON_RECORDS_SQL_SQLITE.format(clause), params)
        out: dict[str, list[str]] = {}
        for person, record in cursor.fetchall():
            out.setdefault(uuid_text(person), []).append(uuid_text(record))
        return out

    def live_rows_after(self, after_pk: int, limit: int) -> list[PatientRow]:
        """Up to ``limit`` live records after ``after_pk``, by primary key (a page of
        ``mpi relink``)."""
        return list(PatientRow.select()
                    .where(PatientRow.pk > after_pk, PatientRow.deleted_at.is_null())
                    .order_by(PatientRow.pk).limit(limit))

    def load(self, row: PatientRow) -> Patient:
        """The domain object for a row already read."""
        return self._load([row])[0]

    def load_many(self, rows: Sequence[PatientRow]) -> list[Patient]:
        """Domain objects for rows already read, in their order."""
        return self._load(rows)

    def update(self, row: PatientRow, data: PatientInput, *, expected_version: int,
               now: datetime) -> Patient:
        """Replace the record's content if it is still at ``expected_version``."""
        with _source_clash():
            changed = self._update_row(row, data, expected_version=expected_version, now=now)
        if changed != 1:
            self._raise_stale(row.pk, expected_version)
        for model in PATIENT_CHILD_MODELS:
            model.delete().where(model.patient == row.pk).execute()
        self._insert_children(row.pk, data)
        fresh = PatientRow.get_by_id(row.pk)
        return self._to_domain(fresh, data)

    @staticmethod
    def _update_row(row: PatientRow, data: PatientInput, *, expected_version: int,
                    now: datetime) -> int:
        return int(PatientRow
                   .update(source=data.source, source_id=data.source_id, active=data.active,
                           gender=data.gender, **_birth_columns(data),
                           deceased=data.deceased, deceased_date=data.deceased_date,
                           mothers_maiden_name=data.mothers_maiden_name,
                           multiple_birth=_multiple(data),
                           multiple_birth_order=data.multiple_birth_order,
                           **_extra_columns(data),
                           version=PatientRow.version + 1, updated_at=now)
                   .where(PatientRow.pk == row.pk, PatientRow.version == expected_version,
                          PatientRow.deleted_at.is_null())
                   .execute())

    def soft_delete(self, row: PatientRow, *, expected_version: int | None,
                    now: datetime) -> int:
        """Mark the record deleted; returns its new version."""
        query = (PatientRow
                 .update(deleted_at=now, updated_at=now, version=PatientRow.version + 1)
                 .where(PatientRow.pk == row.pk, PatientRow.deleted_at.is_null()))
        if expected_version is not None:
            query = query.where(PatientRow.version == expected_version)
        if query.execute() != 1:
            self._raise_stale(row.pk, expected_version if expected_version is not None
                              else row.version)
        (PatientIdentifierRow.update(deleted_at=now)
         .where(PatientIdentifierRow.patient == row.pk).execute())
        return int(row.version) + 1

    def list_page(self, filters: PatientFilter, *, after: int | None, limit: int,
                  through: int | None = None) -> Page:
        """Live records in key order after the key ``after``, and up to the key ``through``
        when given (a share of the registry: a parallel index build).

        One statement: the page's keys chosen by the filters, each record assembled as
        :meth:`read` assembles one. Loading peewee rows (one query per child table, a model
        object per row) cost three times the CPU: a search index build reads every record
        through here (38,524 records: 5.3 s against 1.8 s)."""
        query = PatientRow.select(PatientRow.pk).where(PatientRow.deleted_at.is_null())
        if filters.source is not None:
            query = query.where(PatientRow.source == filters.source)
        if filters.source_id is not None:
            query = query.where(PatientRow.source_id == filters.source_id)
        if filters.birth_date is not None:
            query = query.where(PatientRow.birth_date == filters.birth_date,
                                PatientRow.birth_date_precision.is_null())
        if filters.family is not None:
            names = (PatientNameRow.select(PatientNameRow.patient)
                     .where(PatientNameRow.family_norm == normalize_name(filters.family)))
            query = query.where(PatientRow.pk.in_(names))
        if filters.identifier_value is not None:
            idents = (PatientIdentifierRow.select(PatientIdentifierRow.patient)
                      .where(PatientIdentifierRow.value == filters.identifier_value,
                             PatientIdentifierRow.deleted_at.is_null()))
            if filters.identifier_system is not None:
                idents = idents.where(PatientIdentifierRow.system == filters.identifier_system)
            query = query.where(PatientRow.pk.in_(idents))
        rows, following = _page_rows(query, after=after, limit=limit, through=through)
        return Page([_record_from_row(row) for row in rows], following)

    def search_page(self, *, after: int | None, limit: int, through: int | None = None
                    ) -> tuple[list[dict[str, Any]], int | None]:
        """What a search document is made of (:func:`mpi.search.schema.document` reads
        it) for the live records in key order after ``after`` (up to ``through``), and the
        key to go on after (None at the end): :meth:`list_page`'s statement, without
        building each record. A search index rebuild reads every record through here:
        validating each as a :class:`Patient` and dumping it again cost more than the
        statement (45,800 records: 75 + 26 µs a record against 28 µs)."""
        query = PatientRow.select(PatientRow.pk).where(PatientRow.deleted_at.is_null())
        rows, following = _page_rows(query, after=after, limit=limit, through=through)
        return [_search_fields(row) for row in rows], following

    # --- internals -----------------------------------------------------------------------

    def _raise_stale(self, pk: int, expected_version: int | None) -> None:
        current = PatientRow.get_by_id(pk)
        if current.deleted_at is not None:
            raise Deleted(f"patient {current.id} was deleted")
        raise VersionMismatch(
            f"patient {current.id} is at version {current.version}, not {expected_version}",
            current_version=current.version)

    def _insert_children(self, pk: int, data: PatientInput) -> None:
        self._insert_children_many([(pk, data)])

    def _insert_children_many(self, items: Sequence[tuple[int, PatientInput]]) -> None:
        names, idents, addresses, telecom = [], [], [], []
        for pk, data in items:
            born = _birth_columns(data)["birth_date"]  # beside each name, for the search
            names += [dict(patient=pk, position=n, use=x.use, family=x.family,
                           family_norm=normalize_name(x.family), given=list(x.given),
                           given_norm=given_norm(x.given),
                           prefix=list(x.prefix), suffix=list(x.suffix), birth_date=born)
                      for n, x in enumerate(data.names)]
            idents += [dict(patient=pk, position=n, system=x.system, value=x.value, type=x.type,
                            use=x.use)
                       for n, x in enumerate(data.identifiers)]
            addresses += [dict(patient=pk, position=n, use=x.use, type=x.type,
                               line=list(x.line), city=x.city, district=x.district,
                               state=x.state, postal_code=x.postal_code, country=x.country)
                          for n, x in enumerate(data.addresses)]
            telecom += [dict(patient=pk, position=n, system=x.system, value=x.value, use=x.use,
                             rank=x.rank)
                        for n, x in enumerate(data.telecom)]
        try:
            insert_together([(PatientNameRow, names), (PatientIdentifierRow, idents),
                             (PatientAddressRow, addresses), (PatientTelecomRow, telecom)])
        except peewee.IntegrityError as exc:  # pragma: no cover - no unique child index
            raise Conflict("a child row clashes with another record",
                           field="identifiers") from exc

    def _to_domain(self, row: PatientRow, data: PatientInput) -> Patient:
        return Patient(
            id=str(row.id), version=row.version, active=row.active,
            created_at=row.created_at, updated_at=row.updated_at,
            **{k: getattr(data, k) for k in (
                "source", "source_id", "names", "gender", "birth_date", "birth_date_partial",
                "deceased",
                "deceased_date", "identifiers", "addresses", "telecom", "mothers_maiden_name",
                "multiple_birth_order", "marital_status", "communication", "contacts",
                "managing_organization")},
            multiple_birth=_multiple(data),
        )

    def _load(self, rows: Sequence[PatientRow]) -> list[Patient]:
        """Domain objects for ``rows``, with one query per child table (no N+1)."""
        if not rows:
            return []
        pks = [r.pk for r in rows]
        children: dict[type, dict[int, list[Any]]] = {}
        for model in PATIENT_CHILD_MODELS:
            grouped: dict[int, list[Any]] = defaultdict(list)
            for child in (model.select().where(model.patient.in_(pks))
                          .order_by(model.patient, model.position)):
                grouped[getattr(child, model.patient.object_id_name)].append(child)
            children[model] = grouped
        persons = {ppk: str(pid) for ppk, pid in tuples(
                   PatientLinkRow.select(PatientLinkRow.patient, PersonRow.id)
                   .join(PersonRow).where(PatientLinkRow.patient.in_(pks)))}
        replaced = self._replaced(rows)
        return [self._assemble(row, {m: children[m].get(row.pk, []) for m in children},
                               persons.get(row.pk), *replaced.get(row.pk, (None, None)))
                for row in rows]

    @staticmethod
    def _replaced(rows: Sequence[PatientRow]) -> dict[int, tuple[str | None, list[str] | None]]:
        """For each row: the id of the record it was replaced by, and of those it replaces
        (two index look-ups for all the rows; nothing when no source ever merged)."""
        out: dict[int, tuple[str | None, list[str] | None]] = {}
        targets = {r.replaced_by_pk for r in rows if r.replaced_by_pk is not None}
        target_ids = {pk: str(i) for pk, i in tuples(
            PatientRow.select(PatientRow.pk, PatientRow.id).where(PatientRow.pk.in_(
                list(targets))))} if targets else {}
        replaces: dict[int, list[str]] = defaultdict(list)
        for by, rid in tuples(PatientRow.select(PatientRow.replaced_by, PatientRow.id).where(
                PatientRow.replaced_by.in_([r.pk for r in rows]),
                PatientRow.deleted_at.is_null())):
            replaces[by].append(str(rid))
        for r in rows:
            by = target_ids.get(r.replaced_by_pk) if r.replaced_by_pk is not None else None
            out[r.pk] = (by, sorted(replaces[r.pk]) or None)
        return out

    @staticmethod
    def _assemble(row: PatientRow, kids: dict[type, Iterable[Any]],
                  person_id: str | None, replaced_by: str | None = None,
                  replaces: list[str] | None = None) -> Patient:
        return Patient.model_validate({
            "id": str(row.id),
            "person_id": person_id,
            "replaced_by": replaced_by,
            "replaces": replaces,
            "version": row.version,
            "source": row.source,
            "source_id": row.source_id,
            "active": row.active,
            "gender": row.gender,
            **_birth_fields(row.birth_date, row.birth_date_precision),
            "deceased": row.deceased,
            "deceased_date": row.deceased_date,
            "mothers_maiden_name": row.mothers_maiden_name,
            "multiple_birth": row.multiple_birth,
            "multiple_birth_order": row.multiple_birth_order,
            "marital_status": row.marital_status,
            "managing_organization": row.managing_organization,
            "communication": row.communication or [],
            "contacts": row.contacts or [],
            "created_at": row.created_at,
            "updated_at": row.updated_at,
            "names": [{"use": n.use, "family": n.family, "given": n.given, "prefix": n.prefix,
                       "suffix": n.suffix} for n in kids[PatientNameRow]],
            "identifiers": [{"system": i.system, "value": i.value, "type": i.type, "use": i.use}
                            for i in kids[PatientIdentifierRow]],
            "addresses": [{"use": a.use, "type": a.type, "line": a.line, "city": a.city,
                           "district": a.district, "state": a.state,
                           "postal_code": a.postal_code, "country": a.country}
                          for a in kids[PatientAddressRow]],
            "telecom": [{"system": t.system, "value": t.value, "use": t.use, "rank": t.rank}
                        for t in kids[PatientTelecomRow]],
        })

    def sample_live_ids(self, n: int, pick: Callable[[int, int], int]) -> list[str]:
        """About ``n`` live records' ids spread over the table: for each of ``n`` points
        ``pick(1, highest pk)`` the first live record at or after it (an index seek each;
        fewer when the table is small)."""
        top = PatientRow.select(peewee.fn.MAX(PatientRow.pk)).scalar()
        ids: dict[str, None] = {}
        for start in sorted({pick(1, int(top)) for _ in range(n)} if top else ()):
            row = (PatientRow.select(PatientRow.id)
                   .where(PatientRow.pk >= start, PatientRow.deleted_at.is_null())
                   .order_by(PatientRow.pk).limit(1).first())
            if row is not None:
                ids[str(row.id)] = None
        return list(ids)

    def get_live_many(self, ids: Sequence[str]) -> dict[str, Patient]:
        """The live records among ``ids``, by id, in ONE statement (:meth:`read_many`;
        unknown ids and ids that are no UUID left out). A search reads its page of records
        so: one query per table, built by peewee, was three quarters of a search's time."""
        wanted = []
        for value in ids:
            with contextlib.suppress(ValueError):
                wanted.append(str(uuid.UUID(str(value))))
        return {p.id: p for p in self.read_many(wanted)}


# --------------------------------------------------------------------------- one-statement read

_P = PatientRow
#: The patient columns the one-statement read selects, in order (``_record_from_row``).
_RECORD_COLUMNS: tuple[Any, ...] = (
    _P.id, _P.version, _P.source, _P.source_id, _P.active, _P.gender, _P.birth_date,
    _P.deceased, _P.deceased_date, _P.created_at, _P.updated_at, _P.mothers_maiden_name,
    _P.multiple_birth, _P.multiple_birth_order, _P.birth_date_precision, _P.marital_status,
    _P.managing_organization, _P.communication, _P.contacts)
#: Each child table's columns, in the order of the arrays its aggregate builds.
_CHILD_COLUMNS: tuple[tuple[type[peewee.Model], tuple[str, ...]], ...] = (
    (PatientNameRow, ("use", "family", "given", "prefix", "suffix")),
    (PatientIdentifierRow, ("system", "value", "type", "use")),
    (PatientAddressRow, ("use", "type", "line", "city", "district", "state", "postal_code",
                         "country")),
    (PatientTelecomRow, ("system", "value", "use", "rank")),
)
_SQL_CACHE: dict[tuple[str, bool], str] = {}


def _one_record_sql(postgres: bool) -> str:
    """SELECT of one record by id (:func:`_records_select`)."""
    key = ("one", postgres)
    if key not in _SQL_CACHE:
        _SQL_CACHE[key] = (f'{_records_select(postgres)} '
                           f'WHERE p."{_P.id.column_name}" = {PatientRow._meta.database.param}')
    return _SQL_CACHE[key]


def _page_rows(query: Any, *, after: int | None, limit: int, through: int | None
               ) -> tuple[list[Sequence[Any]], int | None]:
    """The rows (:func:`_records_select`'s) of up to ``limit`` records whose keys ``query``
    selects, in key order after ``after`` and up to ``through``, and the key to go on
    after (None at the end)."""
    if after is not None:
        query = query.where(PatientRow.pk > after)
    if through is not None:
        query = query.where(PatientRow.pk <= through)
    keys, params = query.order_by(PatientRow.pk).limit(limit + 1).sql()
    db = PatientRow._meta.database
    rows = db.execute_sql(_page_sql(is_postgres(db), keys), params).fetchall()
    more = len(rows) > limit
    rows = rows[:limit]
    return [row[1:] for row in rows], rows[-1][0] if more and rows else None


def _page_sql(postgres: bool, keys: str) -> str:
    """SELECT of the records whose primary keys ``keys`` (a sub-SELECT) gives, in key order,
    each row led by its primary key (:func:`_records_select`)."""
    select = _records_select(postgres)
    assert select.startswith("SELECT ")
    pk = _P.pk.column_name
    # PostgreSQL planned "pk IN (sub-SELECT)" as a hash semi-join over a sequential scan
    # of the whole patient table, on every page (EXPLAIN at 41,000 records); the keys as
    # an array are looked up in the primary key's index.
    where = f'p."{pk}" = ANY(ARRAY({keys}))' if postgres else f'p."{pk}" IN ({keys})'
    return f'SELECT p."{pk}", {select[len("SELECT "):]} WHERE {where} ORDER BY p."{pk}"'


def _records_select(postgres: bool) -> str:
    """SELECT of records (the caller adds the WHERE on ``p``) with each child table
    aggregated to a JSON array of ``[position, column...]`` arrays and the person's id;
    built once per backend from the models (names never come from input)."""
    key = ("select", postgres)
    if key in _SQL_CACHE:
        return _SQL_CACHE[key]
    build_array, json_of, aggregate = (
        ("json_build_array", "{}::json", "coalesce(json_agg({}), '[]')")
        if postgres else ("json_array", "json({})", "json_group_array({})"))
    cols = ", ".join(f'p."{f.column_name}"' for f in _RECORD_COLUMNS)
    children = []
    for model, names in _CHILD_COLUMNS:
        fields = [model._meta.fields[n] for n in names]
        values = ", ".join([f'c."{model._meta.fields["position"].column_name}"'] + [
            json_of.format(f'c."{f.column_name}"') if isinstance(f, JSONTextField)
            else f'c."{f.column_name}"' for f in fields])
        fk = model._meta.fields["patient"].column_name
        table, pk = model._meta.table_name, _P.pk.column_name
        children.append(f'(SELECT {aggregate.format(f"{build_array}({values})")} '  # noqa: S608
                        f'FROM "{table}" c WHERE c."{fk}" = p."{pk}")')
    link, person = PatientLinkRow._meta, PersonRow._meta
    table, pk, rb = _P._meta.table_name, _P.pk.column_name, _P.replaced_by.column_name
    live = f'r."{_P.deleted_at.column_name}" IS NULL'
    # On PostgreSQL the live ones are picked by the aggregate, not the WHERE clause: with no
    # statistics yet (a fresh database) "deleted_at IS NULL" is taken to hold for 0.5 % of
    # the records, and the plan, prepared once per connection, could walk the live
    # records' birth-date index (partial: deleted_at IS NULL) on every read instead of
    # looking the replaced_by index up (tests/storage/test_migrations.py).
    successors = f'FROM "{table}" r WHERE r."{rb}" = p."{pk}"'
    if postgres:
        replaces = (f"(SELECT coalesce(json_agg(r.{_P.id.column_name}) FILTER (WHERE {live}), "
                    f"'[]') {successors})")
    else:
        replaces = f'(SELECT {aggregate.format(f"r.{_P.id.column_name}")} {successors} AND {live})'
    sql = (f'SELECT {cols}, ps."{PersonRow.id.column_name}", {", ".join(children)}, '  # noqa: S608
           f'rbp."{_P.id.column_name}", {replaces}, '
           f'p."{_P.deleted_at.column_name}" '
           f'FROM "{table}" p '
           f'LEFT JOIN "{link.table_name}" l '
           f'ON l."{PatientLinkRow.patient.column_name}" = p."{pk}" '
           f'LEFT JOIN "{person.table_name}" ps '
           f'ON ps."{PersonRow.pk.column_name}" = l."{PatientLinkRow.person.column_name}" '
           f'LEFT JOIN "{table}" rbp ON rbp."{pk}" = p."{rb}"')
    _SQL_CACHE[key] = sql
    return sql


def _children(value: Any, names: tuple[str, ...]) -> list[dict[str, Any]]:
    """The aggregate of one child table as dicts in position order (SQLite gives JSON
    text, psycopg parsed JSON; SQLite promises no order inside an aggregate)."""
    items = json.loads(value) if isinstance(value, str) else (value or [])
    return [dict(zip(names, item[1:], strict=True))
            for item in sorted(items, key=operator.itemgetter(0))]


#: Where each column a search document reads is in a row of :func:`_records_select`.
_AT = {f.name: i for i, f in enumerate(_RECORD_COLUMNS)}


def _search_fields(row: Sequence[Any]) -> dict[str, Any]:
    """The part of ``_record_from_row(row).to_dict()`` a search document reads, with the
    same values (absent ones left out, as ``to_dict`` leaves them), built without the
    record: ids, source, version, gender, birth date, the person, and the names,
    identifiers, addresses and telecom."""
    def column(name: str) -> Any:
        return _RECORD_COLUMNS[_AT[name]].python_value(row[_AT[name]])

    fields: dict[str, Any] = {
        "id": uuid_text(row[_AT["id"]]), "version": row[_AT["version"]],
        "source": row[_AT["source"]], "source_id": row[_AT["source_id"]],
        "gender": column("gender")}
    born = _birth_fields(column("birth_date"), row[_AT["birth_date_precision"]])
    fields["birth_date"] = born["birth_date"] and born["birth_date"].isoformat()
    fields["birth_date_partial"] = born["birth_date_partial"]
    fields["person_id"], children = _person_and_children(row)
    for key, rows in children.items():
        fields[key] = [{k: v for k, v in child.items() if v is not None} for child in rows]
    return {k: v for k, v in fields.items() if v is not None}


def _person_and_children(row: Sequence[Any]) -> tuple[str | None, dict[str, list[dict[str, Any]]]]:
    """A :func:`_records_select` row's person id, and its child tables' rows (names,
    identifiers, addresses, telecom) as dicts in position order."""
    person = row[len(_RECORD_COLUMNS)]
    start = len(_RECORD_COLUMNS) + 1
    children = {key: _children(value, names) for (_, names), key, value in zip(
        _CHILD_COLUMNS, ("names", "identifiers", "addresses", "telecom"),
        row[start:start + len(_CHILD_COLUMNS)], strict=True)}
    return None if person is None else str(PersonRow.id.python_value(person)), children


def _record_from_row(row: Sequence[Any]) -> Patient:
    values = [f.python_value(v) for f, v in zip(_RECORD_COLUMNS, row, strict=False)]
    record = dict(zip(("id", "version", "source", "source_id", "active", "gender",
                       "birth_date", "deceased", "deceased_date", "created_at", "updated_at",
                       "mothers_maiden_name", "multiple_birth", "multiple_birth_order",
                       "birth_date_precision", "marital_status", "managing_organization",
                       "communication", "contacts"), values, strict=True))
    record["communication"] = record["communication"] or []
    record["contacts"] = record["contacts"] or []
    record.update(_birth_fields(record["birth_date"], record.pop("birth_date_precision")))
    record["id"] = str(record["id"])
    record["person_id"], children = _person_and_children(row)
    record.update(children)
    start = len(_RECORD_COLUMNS) + 1
    replaced_by, replaces = row[start + len(_CHILD_COLUMNS):start + len(_CHILD_COLUMNS) + 2]
    record["replaced_by"] = None if replaced_by is None else uuid_text(replaced_by)
    ids = json.loads(replaces) if isinstance(replaces, str) else (replaces or [])
    record["replaces"] = sorted(uuid_text(i) for i in ids) or None
    return Patient.model_validate(record)


def _birth_columns(data: PatientInput) -> dict[str, Any]:
    """``birth_date`` and ``birth_date_precision`` for a record: the day, or the first day
    of the month or year only that is known, with how much of it is."""
    partial = data.birth_date_partial
    if partial is None:
        return {"birth_date": data.birth_date, "birth_date_precision": None}
    year, month = int(partial[:4]), int(partial[5:7]) if len(partial) == 7 else 1
    return {"birth_date": date(year, month, 1), "birth_date_precision": len(partial)}


def _birth_fields(born: date | None, precision: int | None) -> dict[str, Any]:
    """The record's ``birth_date`` and ``birth_date_partial`` from the two columns."""
    if born is None or precision is None:
        return {"birth_date": born, "birth_date_partial": None}
    return {"birth_date": None, "birth_date_partial": born.isoformat()[:precision]}


def _extra_columns(data: PatientInput) -> dict[str, Any]:
    """The record's columns that are only kept and shown (never matched or searched)."""
    return {"marital_status": data.marital_status,
            "managing_organization": data.managing_organization,
            "communication": [c.model_dump(exclude_none=True) for c in data.communication]
            or None,
            "contacts": [c.model_dump(exclude_none=True) for c in data.contacts] or None}


def _multiple(data: PatientInput) -> bool | None:
    """Part of a multiple birth: as sent, or implied by a birth order."""
    return True if data.multiple_birth_order is not None else data.multiple_birth
