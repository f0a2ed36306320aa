"""Merges beside the indexer (mpi.search.merging): the indexer keeps indexing while a child
process merges, and what changed meanwhile survives the merge."""

from __future__ import annotations

import logging
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

import mpi.search.indexer as indexer_module
import mpi.search.merging as merging
from mpi.search.indexer import Indexer, _commit_merge, _policy
from mpi.search.merging import MERGE_PREFIX, BackgroundMerge, merged_number
from mpi.search.store import IndexDirectory, WriterLock
from tests.search.conftest import ids


def test_merged_number_counts_the_live_documents_before():
    # Segment A had 5 documents, 1 and 3 deleted: its live 0, 2, 4 become 0, 1, 2.
    assert [merged_number([1, 3], 0, d) for d in (0, 2, 4)] == [0, 1, 2]
    # Segment B after A's 3 live documents, nothing deleted.
    assert [merged_number([], 3, d) for d in range(3)] == [3, 4, 5]
    assert merged_number([0, 1, 2], 10, 3) == 10


def _generation(index_root: Path) -> Path:
    path = IndexDirectory(index_root).current_path()
    assert path is not None
    return path


def _segments(index_root: Path) -> list[Any]:
    ix = IndexDirectory.open_index(_generation(index_root))
    try:
        return list(ix._segments())
    finally:
        ix.close()


def _many_segments(patients, indexer, count: int, family: str) -> list[Any]:
    """``count`` records, one commit (one segment) each, none merged by the steps."""
    made = []
    for n in range(count):
        made.append(patients.create(source_id=f"{family}-{n}", identifiers=[],
                                    names=[{"family": family, "given": [f"G{n}"]}]))
        indexer.catch_up()
    return made


def _until(condition: Any, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


@pytest.fixture
def no_step_merges(monkeypatch):
    monkeypatch.setattr(indexer_module, "STEP_MERGE_DOCS", 0)


def test_changes_made_during_a_merge_survive_it(db, patients, indexer, reader, index_root,
                                                no_step_merges):
    indexer.catch_up()
    made = _many_segments(patients, indexer, 6, "Mergeton")
    segments = _segments(index_root)
    merge = BackgroundMerge(_generation(index_root), segments).start()
    assert merge.wait(60) and merge.staging.is_dir()
    # While the merge ran: one record updated (its old document deleted from a merged
    # segment), one deleted, one created (a new segment, not merged).
    renamed = patients.update(made[1], names=[{"family": "Renamedby", "given": ["G1"]}])
    patients.delete(made[2])
    late = patients.create(source_id="late-1", identifiers=[],
                           names=[{"family": "Mergeton", "given": ["Late"]}])
    indexer.catch_up()
    opened = indexer._current()
    assert opened is not None
    assert merge.install(opened.index) is True
    assert not merge.staging.exists()
    after = _segments(index_root)
    assert not {s.segment_id() for s in segments} & {s.segment_id() for s in after}
    assert len(after) < len(segments)
    expected = {made[0].id, *(p.id for p in made[3:]), late.id}
    assert sorted(ids(reader, "mergeton")) == sorted(expected)
    assert ids(reader, "renamedby") == [renamed.id]
    assert indexer.verify() is None  # every live record once, read back as stored


def test_a_merge_whose_segments_were_merged_meanwhile_is_discarded(
        db, patients, indexer, reader, index_root, no_step_merges, caplog):
    indexer.catch_up()
    made = _many_segments(patients, indexer, 4, "Discardson")
    segments = _segments(index_root)
    merge = BackgroundMerge(_generation(index_root), segments).start()
    assert merge.wait(60)
    opened = indexer._current()
    assert opened is not None
    _commit_merge(opened.index, _policy(lambda sizes: list(range(len(sizes)))))
    merged_here = _segments(index_root)
    with caplog.at_level(logging.INFO, logger="mpi.search"):
        assert merge.install(opened.index) is False
    assert "discarded" in caplog.text
    assert [s.segment_id() for s in _segments(index_root)] == \
        [s.segment_id() for s in merged_here]
    assert not merge.staging.exists()
    assert sorted(ids(reader, "discardson")) == sorted(p.id for p in made)
    assert indexer.verify() is None


def _slow_child(monkeypatch, release: Path) -> None:
    """Merge children wait for ``release`` to exist before they write their segment."""
    real = merging.segment_writer

    def slow(*args: Any, **kwargs: Any) -> Any:
        release.with_suffix(".waiting").touch()
        while not release.exists():
            time.sleep(0.02)
        return real(*args, **kwargs)

    monkeypatch.setattr(merging, "segment_writer", slow)


def test_the_indexer_keeps_indexing_while_a_compaction_merges(
        db, patients, indexer, reader, index_root, tmp_path, monkeypatch, no_step_merges):
    monkeypatch.setattr(indexer_module, "COMPACT_AT_SEGMENTS", 4)
    indexer.catch_up()
    made = _many_segments(patients, indexer, 5, "Busyton")
    release = tmp_path / "release"
    _slow_child(monkeypatch, release)
    before = len(_segments(index_root))
    assert indexer.compact() is True
    assert indexer._merging is not None and not indexer._merging.done()
    assert indexer.compact() is False  # one merge at a time
    # A record created now is indexed and searchable while the merge still runs.
    new = patients.create(source_id="busy-new", identifiers=[],
                          names=[{"family": "Busyton", "given": ["New"]}])
    assert indexer.step() > 0  # the create's events
    assert new.id in ids(reader, "busyton")
    assert indexer._merging is not None and not indexer._merging.done()
    release.touch()
    assert indexer._merging.wait(60)
    indexer.step()  # puts the finished merge in the index
    assert indexer._merging is None
    assert len(_segments(index_root)) < before + 1
    assert sorted(ids(reader, "busyton")) == sorted([*(p.id for p in made), new.id])
    assert indexer.verify() is None


def test_a_merge_child_does_not_keep_the_writer_lock(db, patients, indexer, index_root,
                                                    tmp_path, monkeypatch, no_step_merges):
    monkeypatch.setattr(indexer_module, "COMPACT_AT_SEGMENTS", 3)
    indexer.catch_up()
    _many_segments(patients, indexer, 3, "Lockton")
    release = tmp_path / "release"
    _slow_child(monkeypatch, release)
    assert indexer.compact() is True
    merge = indexer._merging
    assert merge is not None and merge._process.is_alive()
    _until((tmp_path / "release.waiting").exists)  # the child is merging
    # The indexer process dies while its child runs: its descriptor closes, unreleased.
    assert indexer.lock._fd is not None
    os.close(indexer.lock._fd)
    indexer.lock._fd = None
    other = WriterLock(index_root)
    try:
        assert other.acquire() is True
    finally:
        other.release()
        release.touch()
        merge.discard()
        indexer._merging = None


def test_a_failed_merge_leaves_the_index_as_it_was_and_waits_before_the_next(
        db, patients, indexer, reader, index_root, monkeypatch, no_step_merges, caplog):
    monkeypatch.setattr(indexer_module, "COMPACT_AT_SEGMENTS", 3)
    indexer.catch_up()
    made = _many_segments(patients, indexer, 3, "Failson")
    before = [s.segment_id() for s in _segments(index_root)]

    def failing(*args: Any) -> None:
        args[3].send(("error", "OSError"))
        raise SystemExit(1)

    monkeypatch.setattr(merging, "_merge_segments", failing)
    with caplog.at_level(logging.WARNING, logger="mpi.search"):
        assert indexer.compact(wait=True) is True
    assert "search index merge failed: MergeFailed: OSError" in caplog.text
    assert [s.segment_id() for s in _segments(index_root)] == before
    assert not any(p.name.startswith(MERGE_PREFIX) for p in index_root.iterdir())
    assert indexer.compact() is False  # not again before MERGE_RETRY_S
    assert sorted(ids(reader, "failson")) == sorted(p.id for p in made)


def test_staging_left_by_a_dead_merge_is_removed_when_the_next_starts(
        db, patients, indexer, index_root, monkeypatch, no_step_merges):
    monkeypatch.setattr(indexer_module, "COMPACT_AT_SEGMENTS", 3)
    indexer.catch_up()
    _many_segments(patients, indexer, 3, "Staleson")
    stale = index_root / f"{MERGE_PREFIX}gen-old-1-2"
    stale.mkdir()
    (stale / "MAIN_x.seg").write_bytes(b"half a segment")
    assert indexer.compact(wait=True) is True
    assert not stale.exists()


def test_a_stopped_indexer_stops_its_merge(db, patients, index_root, tmp_path, monkeypatch,
                                          no_step_merges):
    monkeypatch.setattr(indexer_module, "COMPACT_AT_SEGMENTS", 3)
    running = Indexer(db, index_root, poll_interval=0.05, strict=True)
    running.catch_up()
    _many_segments(patients, running, 3, "Stopson")
    _slow_child(monkeypatch, tmp_path / "never")
    # The indexer process's own SIGTERM handler (stop after the step) comes with the fork.
    previous = signal.signal(signal.SIGTERM, lambda *_: running.request_stop())
    try:
        assert running.compact() is True
    finally:
        signal.signal(signal.SIGTERM, previous)
    merge = running._merging
    assert merge is not None and merge._process.is_alive()
    _until((tmp_path / "never.waiting").exists)
    started = time.monotonic()
    running.stop()
    assert time.monotonic() - started < 4
    assert not merge._process.is_alive()
    assert not merge.staging.exists()


def test_a_step_merge_too_large_to_make_inline_runs_beside_the_indexer(
        db, patients, indexer, reader, index_root, monkeypatch, caplog):
    monkeypatch.setattr(indexer_module, "INLINE_MERGE_DOCS", 0)
    started: list[int] = []
    real = indexer._start_merge

    def start(opened: Any, chosen: list[Any]) -> bool:
        started.append(len(chosen))
        return real(opened, chosen)

    monkeypatch.setattr(indexer, "_start_merge", start)
    indexer.catch_up()
    with caplog.at_level(logging.INFO, logger="mpi.search"):
        made = _many_segments(patients, indexer, indexer_module.MERGE_FACTOR + 1, "Stepson")
        if indexer._merging is not None:  # not put in the index by a step yet
            assert indexer._merging.wait(60)
            indexer.step()
    assert started == [indexer_module.MERGE_FACTOR]  # the commit that filled a level
    assert "merged beside the indexer" in caplog.text
    assert indexer._merging is None
    assert len(_segments(index_root)) < indexer_module.MERGE_FACTOR
    assert sorted(ids(reader, "stepson")) == sorted(p.id for p in made)
    assert indexer.verify() is None


def test_a_merge_that_cannot_start_is_not_tried_again_at_every_poll(
        db, patients, indexer, index_root, monkeypatch, no_step_merges):
    monkeypatch.setattr(indexer_module, "COMPACT_AT_SEGMENTS", 3)
    indexer.catch_up()
    _many_segments(patients, indexer, 3, "Forkless")

    def cannot_fork(self: BackgroundMerge) -> BackgroundMerge:
        raise OSError("no more processes")

    monkeypatch.setattr(BackgroundMerge, "start", cannot_fork)
    with pytest.raises(OSError):
        indexer.compact()  # the idle loop logs it (search index compaction failed)
    assert indexer._merging is None
    assert indexer.compact() is False  # not again before MERGE_RETRY_S


def test_a_quiet_index_merges_its_small_segments_beside_the_indexer(
        db, patients, indexer, reader, index_root, monkeypatch, no_step_merges):
    """Fewer segments than COMPACT_AT_SEGMENTS: nothing is merged while changes come; once
    none has come for QUIET_COMPACT_S, the small ones are merged into one (beside the
    indexer, as a compaction), every record still found."""
    indexer.catch_up()
    made = _many_segments(patients, indexer, 4, "Quietson")
    before = len(_segments(index_root))
    assert 4 <= before < indexer_module.COMPACT_AT_SEGMENTS
    monkeypatch.setattr(indexer_module, "SMALL_SEGMENT_SHARE", 1.0)  # a test-sized index
    assert indexer.compact() is False  # the last change was just now
    monkeypatch.setattr(indexer_module, "QUIET_COMPACT_S", 0.0)
    assert indexer.compact(wait=True) is True
    assert len(_segments(index_root)) < before
    assert sorted(ids(reader, "quietson")) == sorted(p.id for p in made)
    assert indexer.verify() is None
    while indexer.compact(wait=True):  # what the idle loop does: until nothing is left
        pass
    assert len(_segments(index_root)) <= 2
