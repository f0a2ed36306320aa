"""Segment merges beside the indexer, not in its way.

Whoosh merges segments inside a writer, holding the index's write lock, at about 250 to
1,000 documents a second: a merge of 19,000 documents after a 12-process rebuild held
the indexer for 76 s, and every record created meanwhile waited that long before search
found it (the clerk who does not find a patient registers a duplicate). The service's
writer merges faster (it copies the segments' terms a term at a time:
``mpi.search.store._BulkSegmentWriter.add_reader``, ~190 µs of CPU a document), but a
merge of 50,000 documents still takes seconds. Whoosh has no concurrent merging, so this
module does it outside the lock:

1. The indexer picks the segments (as they are named in the table of contents now) and
   forks a child process, at the lowest CPU priority, which reads them and writes their
   live documents into ONE new segment in a staging directory beside the generation
   (``merging-<generation>-...``). Nothing in the generation is written, so the
   indexer's own commits go on meanwhile; whoosh's clean-up after a commit deletes any
   segment file the table of contents does not name, which is why the new segment is
   written elsewhere.
2. When the child is done, the indexer (between two steps, holding the write lock) checks
   that every merged segment is still in the index, carries over the documents deleted
   from them since the merge began (an update deletes the record's old document) onto
   the new segment, moves its file into the generation and commits a table of contents
   that names it instead of them. A merged segment gone meanwhile (merged by a step, or
   the generation rebuilt) discards the merge.

The new segment holds the merged segments' live documents in order (each segment's
documents in document-number order, as whoosh's ``add_reader`` copies them), so a
document's number there follows from its old number and the documents deleted before
it: :func:`merged_number`.
"""

from __future__ import annotations

import bisect
import contextlib
import logging
import multiprocessing
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mpi.lifecycle import when_orphaned
from mpi.search.schema import SCHEMA
from mpi.search.store import (
    MERGE_PREFIX,
    IndexDirectory,
    detach_forked_child,
    fsync_dir,
    segment_writer,
    storage_at,
)

log = logging.getLogger("mpi.search")

#: Memory (MB) whoosh's posting pool holds before it spills to a temporary file.
LIMIT_MB = 128


class MergeFailed(RuntimeError):
    """The merge process ended without its segment (the reason names a type only)."""


def merged_number(deleted: Sequence[int], documents_before: int, docnum: int) -> int:
    """The number in the merged segment of a merged segment's live document ``docnum``:
    ``documents_before`` (the live documents of the segments merged before it) plus its
    rank among its own segment's live documents (``deleted``: that segment's deleted
    document numbers when the merge began, sorted)."""
    return documents_before + docnum - bisect.bisect_left(deleted, docnum)


class BackgroundMerge:
    """One merge of ``segments`` (whoosh Segment objects from the generation's table of
    contents) in a child process; :meth:`install` puts its result in the index."""

    def __init__(self, generation: Path, segments: Sequence[Any]):
        self.generation = Path(generation)
        self.segments = tuple(segments)
        self.ids = frozenset(s.segment_id() for s in self.segments)
        # Each segment's deleted documents when the merge began, sorted.
        self.deleted = tuple(sorted(s.deleted_docs()) for s in self.segments)
        self.documents = sum(s.doc_count() for s in self.segments)
        self.staging = self.generation.parent / (
            f"{MERGE_PREFIX}{self.generation.name}-{os.getpid()}-{time.monotonic_ns()}")
        self.started = time.monotonic()
        self._process: Any = None
        self._receive: Any = None
        self._outcome: tuple[str, Any] | None = None

    def start(self) -> BackgroundMerge:
        self.staging.mkdir()
        context = multiprocessing.get_context("fork")
        receive, send = context.Pipe(duplex=False)
        self._process = context.Process(
            target=_merge_segments, name="search-index-merge", daemon=True,
            args=(self.generation, self.staging, self.segments, send))
        self._process.start()
        send.close()
        self._receive = receive
        return self

    def done(self) -> bool:
        """True once the child has sent its segment, or failed (never blocks)."""
        if self._outcome is None and self._receive is not None:
            try:
                if self._receive.poll():
                    self._outcome = self._receive.recv()
                elif not self._process.is_alive():
                    self._outcome = ("error", f"exit code {self._process.exitcode}")
            except (EOFError, OSError):
                self._outcome = ("error", "no answer")
        return self._outcome is not None

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until :meth:`done` (tests, and a compaction asked to finish)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.done():
            if deadline is not None and time.monotonic() > deadline:
                return False
            time.sleep(0.02)
        return True

    def install(self, index: Any) -> bool:
        """Replace the merged segments by the new one in ``index`` (the generation's whoosh
        index; the caller holds the directory's writer lock). False when the merge failed
        or a merged segment is gone (nothing changes then). The staging directory goes
        either way."""
        try:
            kind, value = self._outcome or ("error", "not done")
            if kind != "done":
                raise MergeFailed(str(value))
            merged: Any = value
            writer = index.writer(timeout=10)
            try:
                current = {s.segment_id(): s for s in writer.segments}
                if not self.ids <= current.keys():
                    writer.cancel()
                    log.info("search index: a merge of %d segments discarded (merged or "
                             "rebuilt meanwhile)", len(self.ids),
                             extra={"segments": len(self.ids)})
                    return False
                before = 0
                for segment, deleted in zip(self.segments, self.deleted, strict=True):
                    gone = set(deleted)
                    for docnum in current[segment.segment_id()].deleted_docs():
                        if docnum not in gone:
                            merged.delete_document(merged_number(deleted, before, docnum))
                    before += segment.doc_count_all() - len(deleted)
                if before != merged.doc_count_all():
                    raise MergeFailed(f"{merged.doc_count_all()} documents for {before}")
                for name in merged.list_files(storage_at(self.staging)):
                    os.replace(self.staging / name, self.generation / name)
                fsync_dir(self.generation)
                ids = self.ids
                writer.commit(mergetype=lambda _writer, segments: [
                    *(s for s in segments if s.segment_id() not in ids), merged])
            except BaseException:
                with contextlib.suppress(Exception):
                    writer.cancel()
                raise
            log.info("search index: %d segments (%d documents) merged beside the indexer "
                     "in %.1f s", len(self.ids), self.documents,
                     time.monotonic() - self.started,
                     extra={"segments": len(self.ids), "documents": self.documents,
                            "seconds": round(time.monotonic() - self.started, 1)})
            return True
        finally:
            self.discard()

    def discard(self) -> None:
        """Stop the child if it still runs and remove the staging directory."""
        if self._process is not None:
            if self._process.is_alive():
                self._process.terminate()
            self._process.join(5)
            if self._process.is_alive():  # pragma: no cover - it resets SIGTERM first
                self._process.kill()
                self._process.join()
        if self._receive is not None:
            self._receive.close()
            self._receive = None
        shutil.rmtree(self.staging, ignore_errors=True)


def _merge_segments(generation: Path, staging: Path, segments: Sequence[Any], send: Any
                    ) -> None:
    """The child's body: the live documents of ``segments`` into one new segment in
    ``staging``; sends ("done", segment) or ("error", type) and exits."""
    from whoosh.reading import SegmentReader

    try:
        detach_forked_child(generation.parent)
        when_orphaned(lambda: os._exit(1))
        os.nice(19 - os.nice(0))
        source = storage_at(generation)
        target = IndexDirectory.create_index(staging)
        writer = segment_writer(target, limitmb=LIMIT_MB, locked=False)
        for segment in segments:
            reader = SegmentReader(source, SCHEMA, segment)
            try:
                writer.add_reader(reader)
            finally:
                reader.close()
        merged = writer._finalize_segment()
        writer._finish()
        send.send(("done", merged))
    except BaseException as exc:
        with contextlib.suppress(Exception):
            send.send(("error", type(exc).__name__))
        raise SystemExit(1) from None
    finally:
        send.close()
