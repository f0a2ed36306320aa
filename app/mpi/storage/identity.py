"""Identity repository: the only code that reads or writes the identity tables.

Like the patient repository it opens no transaction: each decision runs in the
caller's unit of work (``mpi.storage.work``) with its audit rows and change events.
"""

from __future__ import annotations

import contextlib
import hashlib
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

import peewee

from mpi.domain.errors import NotFound
from mpi.storage.bulk import any_of, bulk_insert, insert_returning, insert_together
from mpi.storage.db import (
    execute_prepared,
    execute_prepared_after,
    is_postgres,
    tuples,
    uuid_text,
)
from mpi.storage.models import (
    BlockingKeyRow,
    LinkEventRow,
    NonMatchRow,
    PatientLinkRow,
    PatientRow,
    PersonMergeRow,
    PersonRow,
    ReviewItemRow,
)

# Advisory-lock namespace for blocking keys ("MPI" + 0x10 in the high bytes).
_KEY_LOCK_SPACE = 0x4D504910 << 32
# Linking takes this lock shared (single records, plus a lock per key) or exclusive (large
# batches, which would need more key locks than PostgreSQL's lock table holds).
LOCK_LINKING = 0x4D5049_03
MAX_KEY_LOCKS = 256


_Row = TypeVar("_Row", PersonRow, ReviewItemRow, PersonMergeRow)


#: (key, person) of the live records holding each key (PostgreSQL; bound: the keys, and
#: the most rows read per key, or NULL for all): see IdentityRepository._key_rows.
KEY_ROWS_SQL = ("SELECT k.key, pl.person_pk FROM unnest(%s::text[]) AS k(key) "
                "CROSS JOIN LATERAL (SELECT b.patient_pk FROM blocking_key b "
                "WHERE b.key = k.key LIMIT %s) bk "
                "JOIN patient_link pl ON pl.patient_pk = bk.patient_pk")

#: Every live record of the persons (PostgreSQL; bound: the persons' keys), by person and
#: record. Each table is read in a LATERAL subquery of its own, kept apart by OFFSET 0,
#: one index probe per person and per link: the plan cannot depend on the statistics.
#: Joined plainly, its plan depended on them: with the statistics of the three tables
#: removed (as in a database before autovacuum's first ANALYZE) from a copy of a registry
#: of 26,000 records, it was planned, once per connection (prepared), as a walk over every
#: live record (PostgreSQL takes "deleted_at IS NULL" to hold for 0.5 % of the rows when it
#: knows nothing of the column): 40 ms a look-up instead of 0.4 ms.
MEMBERS_SQL = ("SELECT l.patient_pk, r.id, k.pk, pe.id, l.match_data "
               "FROM unnest(%s::bigint[]) AS k(pk) "
               "CROSS JOIN LATERAL (SELECT pe.id FROM person pe WHERE pe.pk = k.pk OFFSET 0) pe "
               "CROSS JOIN LATERAL (SELECT pl.patient_pk, pl.match_data FROM patient_link pl "
               "WHERE pl.person_pk = k.pk OFFSET 0) l "
               "CROSS JOIN LATERAL (SELECT p.id FROM patient p WHERE p.pk = l.patient_pk "
               "AND p.deleted_at IS NULL OFFSET 0) r "
               "ORDER BY k.pk, l.patient_pk")
#: The whole linking lock (PostgreSQL).
LOCK_LINKING_SQL = "SELECT pg_advisory_xact_lock(%s)"
#: The linking lock shared and each key's lock, in the keys' order (PostgreSQL).
LOCK_KEYS_SQL = ("SELECT pg_advisory_xact_lock_shared(%s), count(pg_advisory_xact_lock(k)) "
                 "FROM (SELECT unnest(%s::bigint[]) AS k ORDER BY 1) AS ordered")
#: The same on SQLite (the persons' keys bound as one JSON parameter: ``any_of``).
MEMBERS_SQL_SQLITE = ("SELECT pl.patient_pk, p.id, pl.person_pk, pe.id, pl.match_data "
                      "FROM patient_link pl JOIN patient p ON p.pk = pl.patient_pk "
                      "JOIN person pe ON pe.pk = pl.person_pk "
                      "WHERE p.deleted_at IS NULL AND pl.person_pk {} "
                      "ORDER BY pl.person_pk, pl.patient_pk")


@dataclass(frozen=True)
class CandidateRecord:
    patient_pk: int
    patient_id: str
    person_pk: int
    person_id: str
    match_data: str  # JSON text, as stored


def _lock_id(key: str) -> int:
    digest = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=4).digest(), "big")
    return _KEY_LOCK_SPACE | digest


class IdentityRepository:
    def __init__(self, db: peewee.Database):
        self._db = db

    @property
    def postgres(self) -> bool:
        return is_postgres(self._db)

    # --- persons -------------------------------------------------------------------------

    def new_person(self, *, person_id: uuid.UUID, now: datetime) -> PersonRow:
        return PersonRow.create(id=person_id, created_at=now, updated_at=now)

    def _one(self, model: type[_Row], public_id: str | uuid.UUID, *, lock: bool,
             what: str) -> _Row:
        """The row with this public id (FOR UPDATE when ``lock``, on PostgreSQL); NotFound."""
        query = model.select().where(model.id == public_id)
        if lock and self.postgres:
            query = query.for_update()
        row = query.first()
        if row is None:
            raise NotFound(f"no {what} {public_id}")
        return row

    def person(self, person_id: str | uuid.UUID, *, lock: bool = False) -> PersonRow:
        return self._one(PersonRow, person_id, lock=lock, what="person")

    def person_by_pk(self, pk: int) -> PersonRow:
        return PersonRow.get_by_id(pk)

    def touch(self, person_pks: Iterable[int], now: datetime) -> None:
        pks = sorted(set(person_pks))
        if pks:
            PersonRow.update(updated_at=now).where(PersonRow.pk.in_(pks)).execute()

    def person_ids(self, pks: Iterable[int]) -> dict[int, str]:
        pks = list(set(pks))
        if not pks:
            return {}
        return {pk: str(pid) for pk, pid in tuples(
                PersonRow.select(PersonRow.pk, PersonRow.id).where(PersonRow.pk.in_(pks)))}

    # --- links ---------------------------------------------------------------------------

    def link_of(self, patient_pk: int, *, lock: bool = False) -> PatientLinkRow | None:
        query = PatientLinkRow.select().where(PatientLinkRow.patient == patient_pk)
        if lock and self.postgres:
            query = query.for_update()
        return query.first()

    def set_link(self, patient_pk: int, person_pk: int, *, match_data: dict[str, Any],
                 manual: bool, how: str, probability: float | None,
                 model_version: str | None, now: datetime) -> None:
        values = dict(person=person_pk, match_data=match_data, manual=manual, how=how,
                      probability=probability, model_version=model_version, linked_at=now)
        updated = PatientLinkRow.update(**values).where(
            PatientLinkRow.patient == patient_pk).execute()
        if not updated:
            PatientLinkRow.insert(patient=patient_pk, **values).execute()

    def refresh_match_data(self, patient_pk: int, match_data: dict[str, Any]) -> None:
        PatientLinkRow.update(match_data=match_data).where(
            PatientLinkRow.patient == patient_pk).execute()

    def mark_manual(self, patient_pk: int) -> None:
        """A steward's placement: the engine will not move the record again."""
        PatientLinkRow.update(manual=True).where(PatientLinkRow.patient == patient_pk).execute()

    def forms_after(self, after_pk: int, limit: int) -> list[tuple[int, dict[str, Any] | None]]:
        """(patient pk, matching form) of up to ``limit`` live records after ``after_pk``,
        by pk: a page of ``mpi rekey``."""
        return [(int(pk), data) for pk, data in tuples(
            PatientLinkRow.select(PatientLinkRow.patient, PatientLinkRow.match_data)
            .join(PatientRow).where(PatientRow.deleted_at.is_null(),
                                    PatientLinkRow.patient > after_pk)
            .order_by(PatientLinkRow.patient).limit(limit))]

    def keys_of(self, patient_pks: Sequence[int]) -> dict[int, set[str]]:
        """The stored blocking keys of each record."""
        out: dict[int, set[str]] = {pk: set() for pk in patient_pks}
        for key, pk in tuples(BlockingKeyRow.select(BlockingKeyRow.key, BlockingKeyRow.patient)
                              .where(BlockingKeyRow.patient.in_(list(patient_pks)))):
            out[int(pk)].add(key)
        return out

    def live_linked_count(self) -> int:
        return int(PatientLinkRow.select().join(PatientRow)
                   .where(PatientRow.deleted_at.is_null()).count())

    def value_counts(self, fields: Sequence[str], *, sample: int = 50_000
                     ) -> tuple[int, dict[str, dict[str, float]]]:
        """How many live records there are, and how many hold each value of each of the
        matching form's ``fields`` (as stored, not normalised). Over ``sample`` records
        or fewer: a registry larger than that is counted on a fixed spread of its records
        (by primary key, so the same registry gives the same counts) and the counts are
        scaled up; the matching form's JSON is parsed only for those."""
        total = self.live_linked_count()
        # Keep a record when a hash of its primary key falls under ``keep`` in 10,000.
        keep = min(10_000, -(-10_000 * sample // max(total, 1)))
        postgres = is_postgres(self._db)
        mod, mark = ("%%", "%s") if postgres else ("%", "?")
        spread = f"((pl.patient_pk * 2654435761) {mod} 10000) < {mark}"
        live = ("FROM patient_link pl JOIN patient p ON p.pk = pl.patient_pk "
                f"WHERE p.deleted_at IS NULL AND {spread}")
        # Field names are the matching form's keys, fixed by the caller, and bound as
        # parameters all the same.
        if postgres:
            pairs = ", ".join(["(%s, d.j ->> %s)"] * len(fields))
            sql = ("SELECT f.name, f.value, count(*) FROM patient_link pl "  # noqa: S608
                   "JOIN patient p ON p.pk = pl.patient_pk "
                   "CROSS JOIN LATERAL (SELECT pl.match_data::json AS j) d "
                   f"CROSS JOIN LATERAL (VALUES {pairs}) AS f(name, value) "
                   f"WHERE p.deleted_at IS NULL AND {spread} AND f.value IS NOT NULL "
                   "GROUP BY 1, 2")
            params: list[Any] = [*(x for f in fields for x in (f, f)), keep]
        else:
            one = f"SELECT ? AS name, json_extract(pl.match_data, ?) AS value {live}"
            sql = ("SELECT name, value, count(*) FROM ("  # noqa: S608
                   + " UNION ALL ".join([one] * len(fields))
                   + ") WHERE value IS NOT NULL GROUP BY 1, 2")
            params = [x for f in fields for x in (f, f"$.{f}", keep)]
        counted = int(self._db.execute_sql(f"SELECT count(*) {live}",
                                           (keep,)).fetchone()[0])
        scale = total / counted if counted else 0.0
        counts: dict[str, dict[str, float]] = {f: {} for f in fields}
        for name, value, n in self._db.execute_sql(sql, params).fetchall():
            counts[name][str(value)] = int(n) * scale
        return total, counts

    def matching_forms(self) -> list[tuple[str, dict[str, Any] | None]]:
        """(patient id, matching form) of every live record, oldest first."""
        return [(str(pid), data) for pid, data in tuples(
            PatientLinkRow.select(PatientRow.id, PatientLinkRow.match_data)
            .join(PatientRow).where(PatientRow.deleted_at.is_null()).order_by(PatientRow.pk))]

    def clusters(self) -> list[tuple[str, str, str]]:
        """(source, source id, person id) of every live record, by source and source id."""
        return [(source, source_id, str(person)) for source, source_id, person in tuples(
            PatientRow.select(PatientRow.source, PatientRow.source_id, PersonRow.id)
            .join(PatientLinkRow, on=(PatientLinkRow.patient == PatientRow.pk))
            .join(PersonRow, on=(PersonRow.pk == PatientLinkRow.person))
            .where(PatientRow.deleted_at.is_null())
            .order_by(PatientRow.source, PatientRow.source_id))]

    def live_links(self, person_pk: int) -> list[PatientLinkRow]:
        """The person's live records' links, oldest record first."""
        return list(PatientLinkRow.select(PatientLinkRow, PatientRow)
                    .join(PatientRow)
                    .where(PatientLinkRow.person == person_pk, PatientRow.deleted_at.is_null())
                    .order_by(PatientRow.pk))

    def live_records_of(self, person_ids: list[str]) -> list[tuple[str, str]]:
        """(person id, record id) of every live record of these persons, oldest record
        first: one statement, written out (peewee's query building cost more than the
        query itself on this path, a match's candidates)."""
        wanted = []
        for value in person_ids:
            with contextlib.suppress(ValueError):
                wanted.append(PersonRow.id.db_value(uuid.UUID(value)))
        if not wanted:
            return []
        db = PersonRow._meta.database  # type: ignore[attr-defined]
        marks = ", ".join([db.param] * len(wanted))
        rows = db.execute_sql(
            'SELECT ps."id", p."id" FROM "person" ps '  # noqa: S608 - fixed names
            'JOIN "patient_link" l ON l."person_pk" = ps."pk" '
            'JOIN "patient" p ON p."pk" = l."patient_pk" '
            f'WHERE ps."id" IN ({marks}) AND p."deleted_at" IS NULL ORDER BY p."pk"',
            wanted).fetchall()
        return [(str(PersonRow.id.python_value(person)), str(PatientRow.id.python_value(record)))
                for person, record in rows]

    def live_record_pks(self, person_pk: int) -> list[int]:
        return [pk for (pk,) in tuples(PatientLinkRow.select(PatientLinkRow.patient)
                .join(PatientRow)
                .where(PatientLinkRow.person == person_pk, PatientRow.deleted_at.is_null())
                .order_by(PatientRow.pk))]

    def move_links(self, patient_pks: Sequence[int], person_pk: int, *, how: str,
                   manual: bool, now: datetime) -> None:
        if patient_pks:
            (PatientLinkRow.update(person=person_pk, how=how, manual=manual, linked_at=now,
                                   probability=None)
             .where(PatientLinkRow.patient.in_(list(patient_pks))).execute())

    # --- blocking keys and candidates ----------------------------------------------------

    def lock_keys(self, keys: Iterable[str]) -> None:
        """Serialise matching of records that share a key (PostgreSQL; SQLite has one writer).

        Without it two similar records arriving at once would each miss the other
        (neither sees the other's uncommitted row) and found two persons.
        """
        statement = self._lock_statement(keys)
        if statement is not None:
            execute_prepared(self._db, *statement)

    def _lock_statement(self, keys: Iterable[str]) -> tuple[str, tuple[Any, ...]] | None:
        """What :meth:`lock_keys` runs (None: nothing, on SQLite)."""
        if not self.postgres:
            return None
        distinct = set(keys)
        if len(distinct) > MAX_KEY_LOCKS:
            # A large batch (mpi import) would exhaust the lock table
            # (max_locks_per_transaction): it takes the whole linking lock instead.
            return LOCK_LINKING_SQL, (LOCK_LINKING,)
        # Single records share the linking lock and take one lock per key, in one round
        # trip; the sorted subquery fixes the order, so no two writers deadlock. Prepared:
        # planning it took longer than running it.
        return LOCK_KEYS_SQL, (LOCK_LINKING, sorted({_lock_id(k) for k in distinct}))

    def share_linking(self) -> None:
        """A record's update or delete holds the linking lock shared *before* it locks the
        record's row: the one lock order every writer follows (linking lock, then rows,
        then blocking keys), so a steward's unlink (linking lock exclusive, then the
        row) waits for it instead of deadlocking with it (PostgreSQL)."""
        if self.postgres:
            self._db.execute_sql("SELECT pg_advisory_xact_lock_shared(%s)", (LOCK_LINKING,))

    def lock_linking(self) -> None:
        """Stewards' changes (link, unlink, merge, undo) exclude linking for their
        transaction, so a record arriving meanwhile never joins a person being merged
        away (PostgreSQL; SQLite has one writer)."""
        if self.postgres:
            self._db.execute_sql(LOCK_LINKING_SQL, (LOCK_LINKING,))

    def replace_keys(self, patient_pk: int, keys: Iterable[str]) -> None:
        BlockingKeyRow.delete().where(BlockingKeyRow.patient == patient_pk).execute()
        rows = [{"patient": patient_pk, "key": k} for k in sorted(set(keys))]
        if rows:
            BlockingKeyRow.insert_many(rows).execute()

    def delete_keys(self, patient_pk: int) -> None:
        BlockingKeyRow.delete().where(BlockingKeyRow.patient == patient_pk).execute()

    def key_persons(self, keys: Sequence[str], *, cap: int, lock: Iterable[str] | None = None
                    ) -> tuple[list[tuple[str, int]], set[str]]:
        """(key, person) for every live record holding one of ``keys``, leaving out keys
        held by more than ``cap`` persons; and those keys (they select nothing useful).

        A common key (a frequent name's phonetic code with a given initial, at a million
        records) is held by thousands of records: only ``4 * cap`` of its rows are read,
        so the cost follows the keys asked for, not the registry's size. A key whose
        rows were cut short yet name at most ``cap`` persons (persons with many records
        each) is read again whole, so the rule stays exact.

        ``lock``: keys to lock first (:meth:`lock_keys`), in the same round trip as the
        look-up, which starts once the locks are held."""
        if not keys:
            if lock is not None:
                self.lock_keys(lock)
            return [], set()
        wanted = sorted(set(keys))
        rows = self._key_rows(wanted, limit=4 * cap,
                              after=None if lock is None else self._lock_statement(lock))
        held: dict[str, set[int]] = {}
        counted: dict[str, int] = {}
        for key, person_pk in rows:
            held.setdefault(key, set()).add(person_pk)
            counted[key] = counted.get(key, 0) + 1
        short = [k for k, n in counted.items() if n >= 4 * cap and len(held[k]) <= cap]
        for key, person_pk in self._key_rows(short, limit=None) if short else ():
            held[key].add(person_pk)
        oversized = {k for k, persons in held.items() if len(persons) > cap}
        return ([(k, p) for k, persons in held.items() if k not in oversized for p in persons],
                oversized)

    def _key_rows(self, keys: list[str], *, limit: int | None,
                  after: tuple[str, tuple[Any, ...]] | None = None) -> list[tuple[str, int]]:
        """(key, person) per live record holding one of ``keys``, at most ``limit``
        records per key (``after``: a statement to run first, in the same round trip)."""
        if is_postgres(self._db):
            # One index probe per key: the cost follows the keys asked for, not the
            # registry's size. Given thousands of keys, as an import batch has, the planner
            # would rather hash the whole blocking_key table for every batch; a LATERAL
            # subquery kept apart by its LIMIT (LIMIT NULL: none) makes it loop over the
            # keys instead. That plan does not depend on the keys: planned once per
            # connection (prepared).
            if after is not None:
                return execute_prepared_after(self._db, after, KEY_ROWS_SQL, (keys, limit))
            cursor = execute_prepared(self._db, KEY_ROWS_SQL, (keys, limit))
        else:
            # The embedded database holds a hospital's registry, not a region's: every
            # row of the keys is read (no per-key limit in one SQLite statement).
            clause, params = any_of(self._db, keys)
            # ``clause`` is fixed SQL text from any_of; the keys are bound as one parameter.
            sql = ("SELECT bk.key, pl.person_pk FROM blocking_key bk "
                   "JOIN patient_link pl ON pl.patient_pk = bk.patient_pk WHERE bk.key ")
            cursor = self._db.execute_sql(sql + clause, params)
        return [(k, p) for k, p in cursor.fetchall()]

    def members(self, person_pks: Iterable[int]) -> list[CandidateRecord]:
        """Every live record of these persons, with its matching form."""
        pks = sorted(set(person_pks))
        if not pks:
            return []
        if is_postgres(self._db):
            # Prepared: planning it took 1.2 ms, running it 0.5 ms (28 persons at 1,300,000
            # records), and its plan (an index probe per person) does not depend on the
            # persons, a thousand (an import batch) or one.
            cursor = execute_prepared(self._db, MEMBERS_SQL, (pks,))
        else:
            clause, params = any_of(self._db, pks)
            # ``clause`` is fixed SQL text from any_of; the keys are bound as one parameter.
            cursor = self._db.execute_sql(MEMBERS_SQL_SQLITE.format(clause), params)
        # The matching form stays JSON text: the engine parses it only when its cache has
        # no prepared form of that text (most candidates, in a busy registry).
        return [CandidateRecord(ppk, uuid_text(pid), perpk, uuid_text(perid), data)
                for ppk, pid, perpk, perid, data in cursor.fetchall()]

    def insert_persons(self, person_ids: Sequence[str], now: datetime) -> dict[str, int]:
        """New persons; their primary keys by id."""
        if not person_ids:
            return {}
        ids = [uuid.UUID(p) for p in person_ids]
        returned = insert_returning(
            PersonRow, [{"id": i, "created_at": now, "updated_at": now} for i in ids],
            ("id", "pk"))
        if returned is not None:
            return {uuid_text(pid): pk for pid, pk in returned}
        field = PersonRow._meta.fields["id"]  # type: ignore[attr-defined]
        clause, params = any_of(self._db, [field.db_value(i) for i in ids])
        sql = "SELECT pk, id FROM person WHERE id "  # + fixed SQL from any_of; ids bound
        cursor = self._db.execute_sql(sql + clause, params)
        return {uuid_text(pid): pk for pk, pid in cursor.fetchall()}

    @staticmethod
    def insert_rows(*batches: tuple[type[peewee.Model], Sequence[dict[str, Any]]]) -> None:
        """Rows into several tables (a few of each: one statement), in order."""
        insert_together(batches)

    # --- steward constraints -------------------------------------------------------------

    def excluded_person_pks(self, patient_pk: int) -> set[int]:
        """Persons holding a record a steward said is not ``patient_pk``'s person."""
        others = ([a for (a,) in tuples(NonMatchRow.select(NonMatchRow.patient_a)
                   .where(NonMatchRow.patient_b == patient_pk))]
                  + [b for (b,) in tuples(NonMatchRow.select(NonMatchRow.patient_b)
                     .where(NonMatchRow.patient_a == patient_pk))])
        if not others:
            return set()
        return {p for (p,) in tuples(PatientLinkRow.select(PatientLinkRow.person)
                .where(PatientLinkRow.patient.in_(others)))}

    def add_non_matches(self, left: Iterable[int], right: Iterable[int], *, actor: str,
                        now: datetime) -> None:
        pairs = {(min(a, b), max(a, b)) for a in left for b in right if a != b}
        existing = set()
        if pairs:
            lows = sorted({a for a, _ in pairs})
            existing = set(tuples(NonMatchRow.select(NonMatchRow.patient_a, NonMatchRow.patient_b)
                           .where(NonMatchRow.patient_a.in_(lows))))
        rows = [{"patient_a": a, "patient_b": b, "actor": actor, "created_at": now}
                for a, b in sorted(pairs - existing)]
        bulk_insert(NonMatchRow, rows)

    def persons_kept_apart(self, person_a: int, person_b: int) -> bool:
        """True when any record of one was declared not the same person as one of the other."""
        a = self.live_record_pks(person_a)
        b = self.live_record_pks(person_b)
        if not a or not b:
            return False
        return bool(NonMatchRow.select().where(
            ((NonMatchRow.patient_a.in_(a)) & (NonMatchRow.patient_b.in_(b)))
            | ((NonMatchRow.patient_a.in_(b)) & (NonMatchRow.patient_b.in_(a)))).exists())

    # --- reviews -------------------------------------------------------------------------

    def open_review_exists(self, kind: str, *, patient_pk: int | None, person_pk: int,
                           other_person_pk: int | None) -> bool:
        query = ReviewItemRow.select().where(ReviewItemRow.kind == kind,
                                             ReviewItemRow.status == "open")
        if kind == "possible_match":
            query = query.where(ReviewItemRow.patient == patient_pk,
                                ReviewItemRow.person == person_pk)
        else:
            query = query.where(
                ((ReviewItemRow.person == person_pk)
                 & (ReviewItemRow.other_person == other_person_pk))
                | ((ReviewItemRow.person == other_person_pk)
                   & (ReviewItemRow.other_person == person_pk)))
        return bool(query.exists())

    def create_review(self, *, review_id: uuid.UUID, kind: str, patient_pk: int | None,
                      person_pk: int, other_person_pk: int | None, probability: float,
                      model_version: str, explanation: Any, now: datetime) -> None:
        # The record's source, read by the INSERT itself (the queue filters by it).
        source = (PatientRow.select(PatientRow.source).where(PatientRow.pk == patient_pk)
                  if patient_pk is not None else None)
        ReviewItemRow.insert(
            id=review_id, kind=kind, status="open", patient=patient_pk, person=person_pk,
            other_person=other_person_pk, probability=probability, model_version=model_version,
            explanation=explanation, created_at=now, source=source).execute()

    def review(self, review_id: str | uuid.UUID, *, lock: bool = False) -> ReviewItemRow:
        return self._one(ReviewItemRow, review_id, lock=lock, what="review")

    def reviews(self, *, status: str | None, kind: str | None, person_pk: int | None,
                after: int | None, limit: int) -> tuple[list[ReviewItemRow], int | None]:
        query = ReviewItemRow.select()
        if status:
            query = query.where(ReviewItemRow.status == status)
        if kind:
            query = query.where(ReviewItemRow.kind == kind)
        if person_pk is not None:
            query = query.where((ReviewItemRow.person == person_pk)
                                | (ReviewItemRow.other_person == person_pk))
        if after is not None:
            query = query.where(ReviewItemRow.pk > after)
        rows = list(query.order_by(ReviewItemRow.pk).limit(limit + 1))
        more = len(rows) > limit
        rows = rows[:limit]
        return rows, (rows[-1].pk if more and rows else None)

    def open_queue(self, *, kind: str | None, source: str | None,
                   opened_before: datetime | None, min_probability: float | None,
                   max_probability: float | None, after: int | None, limit: int
                   ) -> tuple[list[tuple[ReviewItemRow, str | None]], int, int | None]:
        """Open reviews, oldest first, filtered: each with the source of the record that
        raised it; how many match in all; the cursor of the next page (None: no more)."""
        # The record's source: the review's own (migration 0024), or its record's for a
        # review an older release opened during an upgrade (computed for the page's rows).
        shown = peewee.fn.COALESCE(ReviewItemRow.source, PatientRow.select(
            PatientRow.source).where(PatientRow.pk == ReviewItemRow.patient))
        query = (ReviewItemRow.select(ReviewItemRow, shown.alias("record_source"))
                 .where(ReviewItemRow.status == "open"))
        if kind:
            query = query.where(ReviewItemRow.kind == kind)
        if source:
            query = query.where(
                (ReviewItemRow.source == source)
                | (ReviewItemRow.source.is_null() & ReviewItemRow.patient.is_null(False)
                   & peewee.fn.EXISTS(PatientRow.select(peewee.SQL("1")).where(
                       (PatientRow.pk == ReviewItemRow.patient)
                       & (PatientRow.source == source)))))
        if opened_before is not None:
            query = query.where(ReviewItemRow.created_at <= opened_before)
        if min_probability is not None:
            query = query.where(ReviewItemRow.probability >= min_probability)
        if max_probability is not None:
            query = query.where(ReviewItemRow.probability < max_probability)
        total = int(query.count())
        if after is not None:
            query = query.where(ReviewItemRow.pk > after)
        rows = list(query.order_by(ReviewItemRow.pk).limit(limit + 1).objects())
        more = len(rows) > limit
        rows = rows[:limit]
        return ([(r, getattr(r, "record_source", None)) for r in rows], total,
                rows[-1].pk if more and rows else None)

    def open_review_sources(self) -> list[str]:
        """The sources of the records open reviews were raised for (the queue's filter):
        each the next after the one before in the index of open reviews by source (a probe
        a source, however many reviews are open), and those of reviews an older release
        opened during an upgrade (none carries its source), from their records."""
        sql = ("WITH RECURSIVE s(source) AS ("
               " SELECT MIN(source) FROM review_item WHERE status = 'open'"
               " UNION ALL SELECT (SELECT MIN(r.source) FROM review_item r"
               "  WHERE r.status = 'open' AND r.source > s.source)"
               " FROM s WHERE s.source IS NOT NULL)"
               " SELECT source FROM s WHERE source IS NOT NULL"
               " UNION SELECT p.source FROM review_item r JOIN patient p ON p.pk = r.patient_pk"
               " WHERE r.status = 'open' AND r.source IS NULL"
               " ORDER BY 1")
        return [source for (source,) in self._db.execute_sql(sql).fetchall()]

    def open_review_summary(self) -> list[tuple[str, int, datetime]]:
        """(kind, how many are open, when the oldest was opened) for each kind with one."""
        query = (ReviewItemRow
                 .select(ReviewItemRow.kind, peewee.fn.COUNT(ReviewItemRow.pk).alias("n"),
                         peewee.fn.MIN(ReviewItemRow.created_at).alias("oldest"))
                 .where(ReviewItemRow.status == "open")
                 .group_by(ReviewItemRow.kind).order_by(ReviewItemRow.kind))
        return [(kind, int(n), ReviewItemRow.created_at.python_value(oldest))
                for kind, n, oldest in tuples(query)]

    def open_reviews_within(self, person_pks: Sequence[int], patient_pks: Sequence[int]
                            ) -> list[ReviewItemRow]:
        """Open reviews that ask whether things now in one person are one: a possible
        duplicate between two of ``person_pks``, or a possible match of one of
        ``patient_pks`` (the person's records) with one of ``person_pks``."""
        if not person_pks:
            return []
        dup = ((ReviewItemRow.kind == "possible_duplicate")
               & ReviewItemRow.person.in_(list(person_pks))
               & ReviewItemRow.other_person.in_(list(person_pks)))
        match = ((ReviewItemRow.kind == "possible_match")
                 & ReviewItemRow.person.in_(list(person_pks))
                 & ReviewItemRow.patient.in_(list(patient_pks) or [0]))
        return list(ReviewItemRow.select().where((ReviewItemRow.status == "open")
                                                 & (dup | match)).order_by(ReviewItemRow.pk))

    def claim_persons(self, person_pks: Iterable[int], now: datetime) -> bool:
        """Lock these persons' rows (touching them) while none is merged away; False when
        one is (a concurrent merge committed first: the caller gives way and retries)."""
        pks = sorted(set(person_pks))
        if not pks:
            return True
        done = PersonRow.update(updated_at=now).where(
            PersonRow.pk.in_(pks) & PersonRow.merged_into.is_null()).execute()
        return int(done) == len(pks)

    def close_reviews_for_patient(self, patient_pk: int, *, resolution: str, actor: str,
                                  now: datetime) -> int:
        return int(ReviewItemRow.update(status="resolved", resolution=resolution,
                                        resolved_by=actor, resolved_at=now)
                   .where(ReviewItemRow.patient == patient_pk, ReviewItemRow.status == "open")
                   .execute())

    def resolve(self, row: ReviewItemRow, *, resolution: str, actor: str,
                now: datetime, comment: str | None = None) -> None:
        ReviewItemRow.update(status="resolved", resolution=resolution, resolved_by=actor,
                             resolved_at=now, comment=comment
                             ).where(ReviewItemRow.pk == row.pk).execute()

    def patient_ids(self, pks: Iterable[int]) -> dict[int, str]:
        pks = list(set(pks))
        if not pks:
            return {}
        return {pk: str(pid) for pk, pid in tuples(
                PatientRow.select(PatientRow.pk, PatientRow.id)
                .where(PatientRow.pk.in_(pks)))}

    # --- history and merges --------------------------------------------------------------

    def add_history(self, person_pk: int, action: str, *, actor: str, now: datetime,
                    patient_pk: int | None = None, probability: float | None = None,
                    model_version: str | None = None, detail: Any = None) -> None:
        LinkEventRow.insert(person=person_pk, patient=patient_pk, action=action, actor=actor,
                            occurred_at=now, probability=probability,
                            model_version=model_version, detail=detail).execute()

    def history(self, person_pk: int, *, before: int | None,
                limit: int) -> tuple[list[LinkEventRow], int | None]:
        query = LinkEventRow.select().where(LinkEventRow.person == person_pk)
        if before is not None:
            query = query.where(LinkEventRow.pk < before)
        rows = list(query.order_by(LinkEventRow.pk.desc()).limit(limit + 1))
        more = len(rows) > limit
        rows = rows[:limit]
        return rows, (rows[-1].pk if more and rows else None)

    def create_merge(self, *, merge_id: uuid.UUID, survivor_pk: int, merged_pk: int,
                     moved: list[int], actor: str, now: datetime, how: str = "steward",
                     probability: float | None = None,
                     model_version: str | None = None) -> PersonMergeRow:
        return PersonMergeRow.create(id=merge_id, survivor=survivor_pk, merged=merged_pk,
                                     moved=moved, actor=actor, created_at=now, how=how,
                                     probability=probability, model_version=model_version)

    def merge(self, merge_id: str | uuid.UUID, *, lock: bool = False) -> PersonMergeRow:
        return self._one(PersonMergeRow, merge_id, lock=lock, what="merge")

    def set_merged_into(self, person_pk: int, target_pk: int | None, now: datetime) -> None:
        PersonRow.update(merged_into=target_pk, updated_at=now).where(
            PersonRow.pk == person_pk).execute()

    def mark_undone(self, merge_pk: int, now: datetime) -> None:
        PersonMergeRow.update(undone_at=now).where(PersonMergeRow.pk == merge_pk).execute()
