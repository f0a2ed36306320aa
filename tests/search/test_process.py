"""The indexer process ``mpi serve`` forks: it takes the writer lock, follows the log, stops."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from mpi.search.index import WhooshSearchIndex
from mpi.search.indexer import Indexer
from mpi.search.process import IndexerProcess
from mpi.search.store import IndexDirectory, WriterLock
from mpi.storage.changes import ChangeRepository
from mpi.wiring import build
from tests.search.conftest import ids


@pytest.fixture
def reader(settings) -> Iterator[WhooshSearchIndex]:
    """A reader on the settings' index directory (the one the process writes)."""
    r = WhooshSearchIndex(settings.search_index_path)
    yield r
    r.close()


def _wait_for(condition, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the indexer process did not catch up"
        time.sleep(0.05)


def test_indexer_process_writes_and_workers_stand_by(settings, db, patients, reader):
    process = IndexerProcess(lambda: build(settings))
    stand_by = Indexer(db, settings.search_index_path)  # what a worker's thread does
    try:
        assert process.start() is True  # it holds the lock when start() returns
        assert stand_by.step() == 0 and not stand_by.lock.held()
        john = patients.create()
        last = ChangeRepository().last_id()

        def caught_up() -> bool:
            checked = IndexDirectory(settings.search_index_path).check()
            if checked.opened is None:
                return False
            checked.opened.index.close()
            return checked.opened.cursor >= last

        _wait_for(caught_up)
        assert ids(reader, "smith") == [john.id]
    finally:
        process.stop()
        stand_by.stop()
    assert process.pid is None
    lock = WriterLock(settings.search_index_path)
    assert lock.acquire()  # the stopped process no longer holds it
    lock.release()


def test_a_worker_takes_over_when_the_indexer_process_is_gone(settings, db, patients, reader):
    process = IndexerProcess(lambda: build(settings))
    assert process.start()
    process.stop()
    worker = Indexer(db, settings.search_index_path)
    try:
        john = patients.create()
        worker.catch_up()
        assert worker.lock.held()
        assert ids(reader, "smith") == [john.id]
    finally:
        worker.stop()
