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


def test_a_dead_indexer_process_is_forked_again_and_the_standby_hands_back(settings, db,
                                                                           patients, caplog):
    """The master's loop calls revive(): after the indexer process dies a new one is forked
    (after a pause that doubles for processes that die young), and the death is logged then,
    not when it is seen (a stop of the whole group ends the master within the pause). A
    worker's standby thread took the lock meanwhile; it hands it back once the new process
    lives."""
    import logging
    import os
    import signal

    from mpi import lifecycle as module

    process = IndexerProcess(lambda: build(settings))
    standby = Indexer(db, settings.search_index_path, standby=True)
    try:
        assert process.start() is True
        assert process.revive() is False  # alive: nothing to do
        first = process.pid
        assert first is not None
        os.kill(first, signal.SIGKILL)
        os.waitpid(first, 0)  # as gunicorn's reaping does
        assert standby.step() >= 0 and standby.lock.held()  # no indexer process: it writes
        caplog.set_level(logging.INFO, logger="mpi.server")
        assert process.revive() is False  # the pause (1 s) has not passed
        assert "died" not in caplog.text  # not yet: the master may be stopping
        time.sleep(module.REVIVE_FIRST_PAUSE_S + 0.1)
        assert process.revive() is True
        died = [r for r in caplog.records if "died" in r.getMessage()]
        assert len(died) == 1 and died[0].levelname == "WARNING"
        assert f"process {first} died" in died[0].getMessage()
        assert "starting another" in died[0].getMessage()
        second = process.pid
        assert second not in (None, first)
        _wait_for(lambda: standby.preferred.alive_elsewhere())
        standby.step()  # sees the indexer process again: hands the lock back
        assert not standby.lock.held()
        # (the lock file is emptied, then given the holder's pid: read until it has one)
        _wait_for(lambda: (settings.search_index_path / "writer.lock").read_text().split()[:1]
                  == [str(second)])
        assert process.revive() is False
    finally:
        process.stop()
        standby.stop()


def test_a_standby_writes_only_while_no_indexer_process_lives(settings, db, patients):
    from mpi.search.store import PreferredWriter

    standby = Indexer(db, settings.search_index_path, standby=True)
    try:
        PreferredWriter(settings.search_index_path).claim()  # this process, as if the indexer
        assert not standby.preferred.alive_elsewhere()  # itself does not count
        (settings.search_index_path / "writer.preferred").write_text("1 0\n")  # pid 1, not
        assert not standby.preferred.alive_elsewhere()  # started at tick 0: a reused pid
        standby.step()
        assert standby.lock.held()
    finally:
        standby.stop()
