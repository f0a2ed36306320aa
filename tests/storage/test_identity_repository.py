"""Identity repository: candidate look-up by blocking key, the steward's queue (both
backends)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any
from unittest.mock import patch

import pytest

from mpi.storage.identity import IdentityRepository
from mpi.storage.models import (
    BlockingKeyRow,
    PatientLinkRow,
    PatientRow,
    PersonRow,
    ReviewItemRow,
)
from tests.helpers import rows_read

NOW = datetime(2026, 1, 1, 12, 0)


def _person(records: int, keys: list[str]) -> int:
    """A person with ``records`` live records, each holding ``keys``; its primary key."""
    person = PersonRow.create(id=uuid.uuid4(), created_at=NOW, updated_at=NOW)
    for _ in range(records):
        row = PatientRow.create(id=uuid.uuid4(), source="ehr", source_id=uuid.uuid4().hex,
                                created_at=NOW, updated_at=NOW)
        PatientLinkRow.create(patient=row.pk, person=person.pk, match_data={"given_name": "x"},
                              how="new", linked_at=NOW)
        for key in keys:
            BlockingKeyRow.insert(key=key, patient=row.pk).execute()
    return person.pk


def test_keys_held_by_more_persons_than_the_cap_are_left_out_and_named(db):
    first, *_ = [_person(1, ["common"]) for _ in range(4)]
    rare = _person(1, ["common", "rare"])
    few = [_person(1, ["few"]) for _ in range(3)]
    hits, oversized = IdentityRepository(db).key_persons(["common", "rare", "few", "none"],
                                                         cap=3)
    assert oversized == {"common"}
    assert sorted(hits) == sorted([("rare", rare)] + [("few", pk) for pk in few])
    assert first not in {pk for _, pk in hits}


def test_a_key_with_many_records_of_few_persons_is_read_whole(db):
    # 2 persons x 7 records = 14 rows: past the 4 x cap rows read per key at first, yet
    # only 2 persons, so the key is read again whole and both persons are candidates.
    many = [_person(7, ["family"]) for _ in range(2)]
    # 4 persons with 3 records each: cut short at 12 rows, and already past the cap.
    _ = [_person(3, ["crowd"]) for _ in range(4)]
    hits, oversized = IdentityRepository(db).key_persons(["family", "crowd"], cap=3)
    assert oversized == {"crowd"}
    assert sorted(hits) == sorted(("family", pk) for pk in many)


def test_keys_locked_with_the_look_up_are_held_and_it_reads_the_same(db, backend,
                                                                     monkeypatch):
    """Locking the keys and looking them up go in one round trip on PostgreSQL (a
    pipeline: the look-up runs once the locks are held); the answer is the look-up's."""
    from mpi.storage import db as db_module

    both = [_person(1, ["k:a"]), _person(1, ["k:a", "k:b"])]
    repo = IdentityRepository(db)
    expected = repo.key_persons(["k:a", "k:b"], cap=3)
    sent: list[tuple[str, str]] = []
    run = db_module.execute_prepared_after

    def spy(database, first, sql, params):
        sent.append((first[0], sql))
        return run(database, first, sql, params)

    monkeypatch.setattr("mpi.storage.identity.execute_prepared_after", spy)
    with db.atomic():
        locked = repo.key_persons(["k:a", "k:b"], cap=3, lock=["k:a", "k:b", "k:c"])
        held = (db.execute_sql("SELECT count(*) FROM pg_locks WHERE locktype = "
                               "'advisory' AND pid = pg_backend_pid() AND granted"
                               ).fetchone()[0] if backend == "postgresql" else None)
    assert sorted(locked[0]) == sorted(expected[0]) and len(locked[0]) == 3
    assert {pk for _, pk in locked[0]} == set(both)
    if backend == "postgresql":
        assert len(sent) == 1 and "pg_advisory_xact_lock_shared" in sent[0][0]
        assert held == 4  # the linking lock (shared) and the three keys'
    else:
        assert sent == []  # SQLite: no locks (one writer at a time)


def _review_of(db: Any, source: str, n: int = 0) -> int:
    """An open possible-match review raised by a new record of ``source``; its pk."""
    person = PersonRow.create(id=uuid.uuid4(), created_at=NOW, updated_at=NOW)
    record = PatientRow.create(id=uuid.uuid4(), source=source, source_id=uuid.uuid4().hex,
                               created_at=NOW, updated_at=NOW)
    review_id = uuid.uuid4()
    IdentityRepository(db).create_review(
        review_id=review_id, kind="possible_match", patient_pk=record.pk, person_pk=person.pk,
        other_person_pk=None, probability=0.8 + n % 10 / 100, model_version="m",
        explanation=None, now=NOW)
    return ReviewItemRow.get(ReviewItemRow.id == review_id).pk


def test_a_review_carries_its_records_source_for_the_stewards_queue(db):
    """The queue lists, offers and filters by the source of the record behind each review,
    read from the review (migration 0024); a review an older release opened during an
    upgrade carries none, and its record's source stands in for it everywhere."""
    lab, ehr, legacy = (_review_of(db, source) for source in ("lab", "ehr", "legacy"))
    assert {r.pk: r.source for r in ReviewItemRow.select()} == {
        lab: "lab", ehr: "ehr", legacy: "legacy"}
    ReviewItemRow.update(source=None).where(ReviewItemRow.pk == legacy).execute()
    repo = IdentityRepository(db)
    assert repo.open_review_sources() == ["ehr", "lab", "legacy"]

    def queue(source):
        rows, total, _ = repo.open_queue(kind=None, source=source, opened_before=None,
                                         min_probability=None, max_probability=None,
                                         after=None, limit=10)
        return [(r.pk, shown) for r, shown in rows], total

    assert queue(None) == ([(lab, "lab"), (ehr, "ehr"), (legacy, "legacy")], 3)
    assert queue("legacy") == ([(legacy, "legacy")], 1)
    assert queue("lab") == ([(lab, "lab")], 1)
    assert queue("none") == ([], 0)
    ReviewItemRow.update(status="resolved").where(ReviewItemRow.pk == lab).execute()
    assert repo.open_review_sources() == ["ehr", "legacy"]


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_the_queues_sources_are_read_from_the_index_whatever_is_open(db):
    """The queue's sources come from the index of open reviews by source, a probe a
    source: joining every open review to its record took 120-180 ms at 60,000 open
    reviews. With 3,000 open reviews of three sources, the statement reads a handful of
    index entries, not the reviews."""
    for n in range(3000):
        _review_of(db, ("ehr", "lab", "pharmacy")[n % 3], n)
    db.execute_sql("ANALYZE review_item")
    db.execute_sql("SET enable_seqscan = off")  # (3,000 reviews: as on a large table)
    repo = IdentityRepository(db)
    assert repo.open_review_sources() == ["ehr", "lab", "pharmacy"]
    sql = _last_statement(db, repo.open_review_sources)
    ((plan,),) = db.execute_sql("EXPLAIN (ANALYZE, FORMAT JSON) " + sql).fetchall()
    assert rows_read(plan[0]["Plan"], "review_item") <= 20, plan
    rows, total, _ = repo.open_queue(kind=None, source="lab", opened_before=None,
                                     min_probability=0.85, max_probability=None,
                                     after=None, limit=50)
    assert total == 500 and len(rows) == 50 and {shown for _, shown in rows} == {"lab"}


def _last_statement(db, call) -> str:
    seen: list[str] = []
    execute = db.execute_sql

    def spy(sql, *args, **kwargs):
        seen.append(sql)
        return execute(sql, *args, **kwargs)

    with patch.object(db, "execute_sql", spy):
        call()
    return seen[-1]

