"""Identity repository: candidate look-up by blocking key (both backends)."""

from __future__ import annotations

import uuid
from datetime import datetime

from mpi.storage.identity import IdentityRepository
from mpi.storage.models import BlockingKeyRow, PatientLinkRow, PatientRow, PersonRow

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
