"""A rebuild shared out between processes (PostgreSQL) builds the same index as one process."""

from __future__ import annotations

import multiprocessing
import threading
from pathlib import Path
from typing import Any

import pytest

from mpi.search import indexer as indexer_module
from mpi.search.indexer import IndexBuildFailed, _shares, build_generation
from mpi.search.schema import META_ID
from mpi.search.store import IndexDirectory
from mpi.storage.changes import ChangeRepository
from mpi.storage.db import connection
from tests.search.conftest import ids

FAMILIES = ["Smith", "Jones", "Nguyen", "Okafor", "García", "O'Brien", "Müller"]
#: Only PostgreSQL builds in several processes (SQLite has no snapshot to share).
POSTGRESQL_ONLY = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
GIVEN = ["Ada", "Bo", "Chidi", "Dana", "Eve", "Farid"]


def _registry(patients: Any, n: int) -> list[Any]:
    made = []
    for i in range(n):
        made.append(patients.create(
            source_id=f"S-{i}",
            names=[{"family": FAMILIES[i % len(FAMILIES)], "given": [GIVEN[i % len(GIVEN)]]}],
            birth_date=f"19{50 + i % 40}-0{1 + i % 9}-1{i % 10}",
            identifiers=[{"system": "urn:oid:2.16.840.1.113883.4.1", "value": f"900-00-{i:04d}"}],
            telecom=[{"system": "phone", "value": f"+1 555 010 {i:04d}"}]))
    return made


def _postings(path: Path) -> tuple[dict[tuple[str, bytes], list[str]], list[dict[str, Any]]]:
    """Every (field, term) of the generation with the record ids holding it, and every
    stored document: what two builds of the same records must agree on."""
    ix = IndexDirectory.open_index(path)
    try:
        with ix.searcher() as searcher:
            reader = searcher.reader()
            stored = {docnum: fields for docnum, fields in reader.iter_docs()}
            postings = {}
            for field, term in reader.all_terms():
                docs = reader.postings(field, term).all_ids()
                postings[(field, term)] = sorted(stored[d]["id"] for d in docs)
            documents = sorted(stored.values(), key=lambda d: d["id"])
    finally:
        ix.close()
    return postings, documents


@pytest.fixture
def parallel_from_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(indexer_module, "PARALLEL_FROM", 1)


def test_shares_cover_every_key_once(db, patients, backend):
    made = _registry(patients, 7)
    patients.delete(made[3])
    from mpi.storage.models import PatientRow

    live = [r.pk for r in PatientRow.select(PatientRow.pk)
            .where(PatientRow.deleted_at.is_null()).order_by(PatientRow.pk)]
    for processes in (1, 2, 3, 6, 10):
        shares = _shares(len(live), processes)
        assert shares[0][0] is None and shares[-1][1] is None
        covered = [pk for pk in live for after, through in shares
                   if (after is None or pk > after) and (through is None or pk <= through)]
        assert covered == live  # each live record in exactly one share
        assert len(shares) == min(processes, len(live))


def test_a_parallel_rebuild_holds_what_a_one_process_rebuild_holds(
        db, patients, backend, tmp_path, parallel_from_one):
    made = _registry(patients, 40)
    patients.delete(made[5])
    one = IndexDirectory(tmp_path / "one")
    three = IndexDirectory(tmp_path / "three")
    path_one, count_one, cursor_one = build_generation(db, one, processes=1)
    progress: list[tuple[int, int]] = []
    path_three, count_three, cursor_three = build_generation(
        db, three, processes=3, progress=lambda done, total: progress.append((done, total)))
    assert count_one == count_three == 39
    assert cursor_one == cursor_three == ChangeRepository().last_id()
    assert progress[-1] == (39, 39)
    assert _postings(path_one) == _postings(path_three)
    segments = len(IndexDirectory.open_index(path_three)._segments())
    # On PostgreSQL: one segment per process and the cursor's; SQLite builds in one process.
    assert segments == (4 if backend == "postgresql" else 1)
    assert not multiprocessing.active_children()


@POSTGRESQL_ONLY
def test_a_parallel_rebuild_reads_one_snapshot(db, patients, tmp_path, parallel_from_one,
                                               monkeypatch):
    """A record written while the children index is neither in the generation nor before
    its cursor: following the log from the cursor adds it."""
    _registry(patients, 12)
    written: list[Any] = []
    real_shares = indexer_module._shares

    def shares_then_write(total: int, processes: int) -> Any:
        result = real_shares(total, processes)
        # The caller's snapshot is exported: commit a record on another connection (another
        # thread borrows another of the pool's) before the children start reading.
        late = threading.Thread(target=lambda: written.append(patients.create(
            source_id="LATE", names=[{"family": "Latecomer", "given": ["Lu"]}])))
        late.start()
        late.join()
        return result

    monkeypatch.setattr(indexer_module, "_shares", shares_then_write)
    directory = IndexDirectory(tmp_path / "ix")
    path, count, cursor = build_generation(db, directory, processes=2)
    assert count == 12
    assert written and cursor < ChangeRepository().last_id()
    _, documents = _postings(path)
    assert written[0].id not in {d["id"] for d in documents}


@POSTGRESQL_ONLY
def test_a_failed_share_fails_the_rebuild_and_leaves_the_current_generation(
        db, patients, parallel_from_one, monkeypatch, reader, indexer, index_root):
    made = _registry(patients, 10)
    indexer.catch_up()
    before = IndexDirectory(index_root).current_name()
    real_document = indexer_module.document

    def document(record: dict[str, Any]) -> dict[str, Any]:
        if record["id"] == made[7].id:
            raise ValueError("cannot index this one")
        return real_document(record)

    monkeypatch.setattr(indexer_module, "document", document)  # forked children see it
    with pytest.raises(IndexBuildFailed, match="ValueError"):
        build_generation(db, IndexDirectory(index_root), processes=3)
    assert IndexDirectory(index_root).current_name() == before
    assert not [p for p in index_root.iterdir() if p.name.startswith("building-")]
    assert not multiprocessing.active_children()
    assert ids(reader, "smith")  # the current generation still answers


def test_the_meta_document_holds_the_cursor(db, patients, backend, tmp_path,
                                            parallel_from_one):
    _registry(patients, 5)
    path, _, cursor = build_generation(db, IndexDirectory(tmp_path / "ix"), processes=2)
    ix = IndexDirectory.open_index(path)
    with ix.searcher() as searcher:
        assert int(searcher.document(id=META_ID)["cursor"]) == cursor
    ix.close()
    with connection(db):
        assert cursor == ChangeRepository().last_id()


@POSTGRESQL_ONLY
def test_a_failed_share_stops_the_others_even_under_the_indexer_process_handlers(
        db, patients, parallel_from_one, monkeypatch, index_root):
    """The children come from the indexer process, whose SIGTERM handler only asks its loop
    to stop: a child must not keep it (terminate() would not end it, and the failed
    rebuild would wait for every other share to finish)."""
    import signal
    import time

    made = _registry(patients, 10)
    real_document = indexer_module.document

    def document(record: dict[str, Any]) -> dict[str, Any]:
        if record["id"] == made[7].id:
            raise ValueError("cannot index this one")
        if record["id"] in {p.id for p in made[:5]}:
            time.sleep(15)  # a share still busy
        return real_document(record)

    monkeypatch.setattr(indexer_module, "document", document)  # forked children see it
    previous = signal.signal(signal.SIGTERM, lambda *_: None)
    started = time.monotonic()
    try:
        with pytest.raises(IndexBuildFailed, match="ValueError"):
            build_generation(db, IndexDirectory(index_root), processes=3)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert time.monotonic() - started < 10
    assert not multiprocessing.active_children()
