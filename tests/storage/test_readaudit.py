"""Reads' audit rows written behind the reads: within the window, in order, all of them at
a clean shutdown, kept while the database cannot take them, and never more than the limit
answered unaudited."""

from __future__ import annotations

import threading
import time

import pytest

from mpi.storage import readaudit
from mpi.storage.readaudit import ReadAudits


class Writer:
    """Records each write (a list of units); fails while ``failing`` is set."""

    def __init__(self) -> None:
        self.writes: list[list[object]] = []
        self.failing: Exception | None = None
        self.written = threading.Event()

    def __call__(self, units):
        if self.failing is not None:
            raise self.failing
        self.writes.append(list(units))
        self.written.set()

    @property
    def units(self) -> list[object]:
        return [u for w in self.writes for u in w]


def _eventually(check, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "not within the time allowed"
        time.sleep(0.01)


def test_the_rows_of_a_window_go_in_one_write_once_the_oldest_waited_the_window():
    writer = Writer()
    audits = ReadAudits(writer, window=0.3)
    started = time.monotonic()
    for unit in ("r1", "r2", "r3"):
        assert audits.add(unit)
    assert writer.writes == [] and audits.waiting == 3
    assert writer.written.wait(5)
    waited = time.monotonic() - started
    assert writer.writes == [["r1", "r2", "r3"]] and audits.waiting == 0
    assert waited >= 0.3
    audits.close()


def test_a_full_batch_is_written_without_waiting_for_the_window():
    writer = Writer()
    audits = ReadAudits(writer, window=60, batch=4)
    for unit in range(4):
        audits.add(unit)
    assert writer.written.wait(5)
    assert writer.units == [0, 1, 2, 3]
    audits.close()


def test_flush_writes_what_waits_now_and_close_writes_the_rest_then_refuses():
    writer = Writer()
    audits = ReadAudits(writer, window=60)
    audits.add("a")
    audits.flush()
    assert writer.writes == [["a"]]
    audits.add("b")
    audits.add("c")
    audits.close()
    assert writer.writes == [["a"], ["b", "c"]]
    assert audits.add("d") is False  # closed: the caller writes its own rows
    assert writer.units == ["a", "b", "c"]


def test_rows_the_database_did_not_take_wait_in_order_and_are_written_later(caplog):
    writer = Writer()
    writer.failing = ConnectionError("the database went away with row 'secret-value'")
    audits = ReadAudits(writer, window=0.05)
    audits.add("r1")
    audits.add("r2")
    _eventually(lambda: "not written yet" in caplog.text)
    audits.add("r3")
    assert audits.waiting == 3
    writer.failing = None
    _eventually(lambda: audits.waiting == 0)
    assert writer.units == ["r1", "r2", "r3"]  # each once, in the order read
    assert "secret-value" not in caplog.text  # the error's class, never its message
    audits.close()


def test_once_the_limit_waits_reads_must_write_their_own_rows():
    writer = Writer()
    writer.failing = ConnectionError("down")
    audits = ReadAudits(writer, window=60, batch=100, limit=3)
    assert [audits.add(n) for n in range(4)] == [True, True, True, False]
    writer.failing = None
    audits.flush()
    assert writer.units == [0, 1, 2]
    assert audits.add(4) is True
    audits.close()


def test_a_shutdown_that_cannot_write_logs_a_count_and_no_row(caplog, monkeypatch):
    monkeypatch.setattr(readaudit, "CLOSE_PAUSE_S", 0.0)
    writer = Writer()
    writer.failing = ConnectionError("down, holding 'secret-value'")
    audits = ReadAudits(writer, window=60)
    audits.add("secret-value")
    audits.add("other")
    audits.close()
    assert "the audit rows of 2 read(s) could not be written at shutdown" in caplog.text
    assert "secret-value" not in caplog.text


def test_a_window_of_zero_is_not_a_window():
    with pytest.raises(ValueError, match="window"):
        ReadAudits(Writer(), window=0)


def test_concurrent_readers_lose_no_row_and_write_each_once():
    writer = Writer()
    audits = ReadAudits(writer, window=0.01, batch=7)

    def reader(n: int) -> None:
        for i in range(200):
            assert audits.add((n, i))

    threads = [threading.Thread(target=reader, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    audits.close()
    units = [unit for unit in writer.units if isinstance(unit, tuple)]
    assert len(units) == len(writer.units)
    assert sorted(units) == [(n, i) for n in range(4) for i in range(200)]
    for n in range(4):  # each reader's rows in the order it read
        assert [i for m, i in units if m == n] == list(range(200))
