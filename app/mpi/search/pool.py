"""The postings pool of a segment being written: a field's postings sorted by term alone.

A whoosh segment writer gathers every posting of the new segment, (field, term, docnum,
weight, value), in a pool, sorts them and writes them out at the commit. When the pool
outgrows ``limitmb`` it sorts what it holds and writes it to a temporary "run" file; the
commit then merges the runs. A rebuild writes ~58 postings per record, so sorting them
and spilling them is a large part of its work.

:class:`FieldPostingPool` keeps whoosh's pool's interface and its memory bound (spilling
past ``limitmb``, by an estimate of each posting's size) and changes how it sorts and
stores:

- postings are held per field, as ``(term, docnum, weight, value)``, a document's
  postings of a field added at once (:meth:`FieldPostingPool.add_many`);
- documents are added in docnum order, so a field's postings of one term are added in
  docnum order, and a *stable* sort on the term alone (``itemgetter(0)``: one ``bytes``
  comparison per step) gives the order whoosh's full sort gives, in ~40 % of its time
  (15 against 40 µs a record on the search bench's records). A field that ever receives a
  smaller docnum than one it holds (whoosh adding another segment's postings, term by
  term) is sorted on the whole posting instead;
- a run holds each field's sorted postings in turn, as ``marshal``-ed blocks of
  :data:`BLOCK` postings after their length in bytes (one C call per block each way; a
  run is read only by the process that wrote it, with the same Python); the runs are
  merged a field at a time, a slice at a time (:func:`merge_blocks`).

:meth:`FieldPostingPool.by_field` gives each field's sorted postings in field order, for
:class:`mpi.search.codec.InliningCodec`'s field writer; :meth:`iter_postings` gives
whoosh's stream of whole postings, for any other. Memory: one block per run being merged
(at most :data:`MAX_RUNS` runs at once).
"""

from __future__ import annotations

import marshal
import struct
from bisect import bisect_right
from collections.abc import Iterable, Iterator
from itertools import islice
from operator import itemgetter
from typing import Any

from whoosh.util import random_name

#: Postings per marshalled block of a run (a posting is ~200 bytes in memory).
BLOCK = 4096
#: Runs merged at once; more are first merged into fewer (as whoosh's ``maxfiles``).
MAX_RUNS = 128
#: A posting's size in memory, as the pool counts it: a tuple of four, a term's bytes, a
#: float, a value's bytes (whoosh's pool estimates ~180-200 bytes for the same).
POSTING_SIZE = 200
_SIZE = struct.Struct("<Q")
_by_term = itemgetter(0)

Posting = tuple[Any, ...]  # (term bytes, docnum, weight, value bytes or None)


class FieldPostingPool:
    """The pool a whoosh ``SegmentWriter`` adds postings to and reads them back from,
    sorted, at its commit; spilling to runs in ``tempstore`` past ``limitmb``. Whoosh's
    ``PostingPool`` interface: ``add``, ``iter_postings``, ``save``, ``cleanup``,
    ``fieldnames``, ``runs``."""

    def __init__(self, tempstore: Any, segment: Any = None, limitmb: int = 128):
        self.tempstore = tempstore
        self.segment = segment
        self.limit = limitmb * 1024 * 1024
        self.currentsize = 0
        self.fieldnames: set[str] = set()
        self.runs: list[str] = []
        self._fields: dict[str, list[Posting]] = {}
        self._last: dict[str, int] = {}  # each field's highest docnum so far
        self._unordered: set[str] = set()  # fields given a docnum below one they hold

    # --- adding ----------------------------------------------------------------------------

    def add(self, item: tuple[Any, ...]) -> None:
        """Add whoosh's posting ``(field, term bytes, docnum, weight, value)``."""
        self.add_many(item[0], item[2], [item[1:]])

    def add_many(self, fieldname: str, docnum: int, items: list[Posting]) -> None:
        """Add postings of one field and one document (``docnum``), each ``(term bytes,
        docnum, weight, value)``; spill to a run once the pool holds more than
        ``limitmb`` (as whoosh's pool, by an estimate of the postings' size in memory:
        :data:`POSTING_SIZE` each)."""
        if not items:
            return
        held = self._fields.get(fieldname)
        if held is None:
            held = self._fields[fieldname] = []
            self.fieldnames.add(fieldname)
        last = self._last.get(fieldname, -1)
        if docnum < last:
            self._unordered.add(fieldname)
        else:
            self._last[fieldname] = docnum
        held.extend(items)
        self.currentsize += POSTING_SIZE * len(items)
        if self.currentsize > self.limit:
            self.save()

    # --- reading back ----------------------------------------------------------------------

    def by_field(self) -> Iterator[tuple[str, Iterable[Posting]]]:
        """Each field (in order) with its postings sorted by term, then docnum."""
        if not self.runs:
            for fieldname in sorted(self._fields):
                yield fieldname, self._sorted(fieldname)
            self._fields = {}
            return
        self.save()
        while len(self.runs) > MAX_RUNS:
            self._reduce(MAX_RUNS)
        runs, self.runs = self.runs, []
        readers = [_RunReader(self, path) for path in runs]
        try:
            for fieldname in sorted(self.fieldnames):
                yield fieldname, merge_blocks([r.blocks(fieldname) for r in readers])
        finally:
            for reader in readers:
                reader.close()

    def iter_postings(self) -> Iterator[tuple[Any, ...]]:
        """Whoosh's stream: every posting, ``(field, term, docnum, weight, value)``, sorted."""
        for fieldname, postings in self.by_field():
            for posting in postings:
                yield (fieldname, *posting)

    def items(self) -> Iterator[tuple[Any, ...]]:
        return self.iter_postings()

    # --- runs ------------------------------------------------------------------------------

    def save(self) -> None:
        """Write what the pool holds to a new run, each field's postings sorted."""
        if not self._fields:
            return
        path, f = self._new_run()
        try:
            for fieldname in sorted(self._fields):
                _write_field(f, fieldname, self._sorted(fieldname))
        finally:
            f.close()
        self.runs.append(path)
        self._fields = {}
        self.currentsize = 0

    def cleanup(self) -> None:
        for path in self.runs:
            self._remove_run(path)
        self.runs = []

    def _sorted(self, fieldname: str) -> list[Posting]:
        postings = self._fields[fieldname]
        if fieldname in self._unordered:
            postings.sort()
        else:  # stable: a term's postings stay in the docnum order they were added in
            postings.sort(key=_by_term)
        return postings

    def _reduce(self, count: int) -> None:
        """Merge the first ``count`` runs into one."""
        merging, self.runs = self.runs[:count], self.runs[count:]
        readers = [_RunReader(self, path) for path in merging]
        path, f = self._new_run()
        try:
            for fieldname in sorted(self.fieldnames):
                _write_field(f, fieldname,
                             merge_blocks([r.blocks(fieldname) for r in readers]))
        finally:
            f.close()
            for reader in readers:
                reader.close()
        self.runs.insert(0, path)

    def _new_run(self) -> tuple[str, Any]:
        path = f"{random_name()}.run"
        return path, self.tempstore.create_file(path).raw_file()

    def _open_run(self, path: str) -> Any:
        return self.tempstore.open_file(path).raw_file()

    def _remove_run(self, path: str) -> None:
        if self.tempstore.file_exists(path):
            self.tempstore.delete_file(path)


class _RunReader:
    """A run read back field by field (its fields are in order, each in blocks)."""

    def __init__(self, pool: FieldPostingPool, path: str):
        self._pool, self._path = pool, path
        self._file = pool._open_run(path)
        self._next: tuple[str, list[Posting]] | None = self._read()

    def _read(self) -> tuple[str, list[Posting]] | None:
        head = self._file.read(_SIZE.size)
        if not head:
            return None
        (size,) = _SIZE.unpack(head)
        data = self._file.read(size)
        if len(data) != size:
            raise EOFError(f"run {self._path} ends inside a block")
        # Our own run, written by this process moments ago in the index's own temporary
        # directory (never /tmp): not foreign data.
        fieldname, block = marshal.loads(data)  # noqa: S302
        return fieldname, block

    def blocks(self, fieldname: str) -> Iterator[list[Posting]]:
        """The run's blocks of ``fieldname`` (none if the run holds none of it)."""
        while self._next is not None and self._next[0] == fieldname:
            block = self._next[1]
            self._next = self._read()
            yield block

    def close(self) -> None:
        self._file.close()
        self._pool._remove_run(self._path)


def _write_field(f: Any, fieldname: str, postings: Iterable[Posting]) -> None:
    """A field's sorted postings into a run, :data:`BLOCK` at a time."""
    remaining = iter(postings)
    while block := list(islice(remaining, BLOCK)):
        _write_block(f, fieldname, block)


def _write_block(f: Any, fieldname: str, block: list[Posting]) -> None:
    # marshal.load(file) reads a file a few bytes at a time, through Python-level calls:
    # each block is its size, then its bytes, read back with one read and one loads.
    data = marshal.dumps((fieldname, block))
    f.write(_SIZE.pack(len(data)))
    f.write(data)


def merge_blocks(runs: list[Iterator[list[Any]]]) -> Iterator[Any]:
    """The items of ``runs`` (each a sorted sequence of sorted, non-empty blocks) in one
    sorted stream, as ``heapq.merge`` of the runs' items would give it for unique items."""
    heads: list[list[Any]] = []  # [block, position in it, the run's other blocks]
    for run in runs:
        first = next(run, None)
        if first is not None:
            heads.append([first, 0, run])
    if len(heads) == 1:  # one run: its blocks in turn
        yield from heads[0][0]
        for block in heads[0][2]:
            yield from block
        return
    while heads:
        # Nothing in any run sorts before the smallest of the current blocks' last
        # items that is not in the current blocks: take everything up to it.
        bound = min(head[0][-1] for head in heads)
        taken: list[Any] = []
        for head in heads:
            block, position = head[0], head[1]
            end = bisect_right(block, bound, position)
            taken += block[position:end]
            head[1] = end
        taken.sort()
        yield from taken
        # At least the run whose block ended at the bound is through its block.
        still: list[list[Any]] = []
        for head in heads:
            if head[1] == len(head[0]):
                following = next(head[2], None)
                if following is None:
                    continue
                head[0], head[1] = following, 0
            still.append(head)
        heads = still
