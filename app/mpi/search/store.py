"""The index directory: generations, the ``CURRENT`` pointer, the writer lock.

    SEARCH_INDEX_PATH/
        CURRENT            name of the generation readers and the writer use
        writer.lock        flock()ed by the one process that writes this directory
        gen-<id>/          a complete whoosh index (documents + the change-log cursor)
        building-<id>/     a generation being built; renamed to gen-<id> when complete
        merging-<gen>-…/   a segment being merged beside the indexer (mpi.search.merging)

A rebuild writes a new generation beside the current one and then replaces
``CURRENT`` atomically (write a temporary file, ``os.replace``): readers keep
answering from the old generation until they see the new pointer. Whoosh's own
temporary files go inside the generation's directory, never to ``/tmp``.

Durability: every file whoosh writes into a generation is fsynced when whoosh closes
it, and a rename in it (whoosh publishes its table of contents by renaming a
temporary file) is followed by an fsync of the directory; a built generation's
directory is fsynced before ``CURRENT`` names it. So after a power cut ``CURRENT``
never names a generation whose segments are still in the page cache only, and an
incremental commit is either whole or absent.
"""

from __future__ import annotations

import contextlib
import enum
import fcntl
import functools
import heapq
import logging
import os
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import groupby
from operator import itemgetter
from pathlib import Path
from typing import Any

from whoosh.codec.whoosh3 import LENGTHS_COLUMN, _lenfield
from whoosh.filedb.filestore import FileStorage, OverlayStorage
from whoosh.filedb.structfile import StructFile
from whoosh.util.numeric import byte_to_length
from whoosh.writing import SegmentWriter

from mpi.search.codec import InliningCodec, segment_terms
from mpi.search.pool import FieldPostingPool
from mpi.search.schema import INDEX_NAME, META_ID, SCHEMA, SCHEMA_VERSION

log = logging.getLogger("mpi.search")

CURRENT = "CURRENT"
LOCK = "writer.lock"
PREFERRED = "writer.preferred"
GEN_PREFIX = "gen-"
BUILD_PREFIX = "building-"
MERGE_PREFIX = "merging-"


class IndexState(enum.Enum):
    OK = "ok"
    MISSING = "missing"
    CORRUPT = "corrupt"
    OLD_SCHEMA = "old-schema"


@dataclass(frozen=True)
class Opened:
    """An index generation that opened cleanly, with the cursor it has reached."""

    path: Path
    index: Any  # whoosh.index.FileIndex
    cursor: int


@dataclass(frozen=True)
class Checked:
    state: IndexState
    opened: Opened | None = None
    reason: str = ""


class IndexDirectory:
    def __init__(self, root: Path):
        self.root = Path(root)

    # --- the pointer ---------------------------------------------------------------------

    def current_name(self) -> str | None:
        try:
            name = (self.root / CURRENT).read_text(encoding="ascii").strip()
        except (FileNotFoundError, NotADirectoryError):
            return None
        except (OSError, UnicodeDecodeError):
            return None
        return name if name.startswith(GEN_PREFIX) and "/" not in name else None

    def current_path(self) -> Path | None:
        name = self.current_name()
        return self.root / name if name else None

    def check(self) -> Checked:
        """Open the current generation and say whether it can be used as it is."""
        path = self.current_path()
        if path is None or not path.is_dir():
            return Checked(IndexState.MISSING, reason="no current generation")
        try:
            ix = storage_at(path).open_index(INDEX_NAME)
            with ix.searcher() as searcher:
                meta = searcher.document(id=META_ID)
            stored_fields = set(ix.schema.names())
        except Exception as exc:  # any failure to read it means: rebuild
            return Checked(IndexState.CORRUPT, reason=type(exc).__name__)
        if meta is None:
            return Checked(IndexState.CORRUPT, reason="no cursor document")
        if meta.get("schema_version") != SCHEMA_VERSION or stored_fields != set(SCHEMA.names()):
            return Checked(IndexState.OLD_SCHEMA,
                           reason=f"schema version {meta.get('schema_version')}")
        return Checked(IndexState.OK, Opened(path, ix, int(meta.get("cursor") or 0)))

    # --- building and publishing -------------------------------------------------------

    def new_build(self) -> Path:
        """An empty directory for a generation being built."""
        self.root.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        name = f"{stamp}-{os.getpid()}-{time.monotonic_ns()}"
        path = self.root / f"{BUILD_PREFIX}{name}"
        path.mkdir()
        return path

    @staticmethod
    def create_index(path: Path) -> Any:
        """An empty whoosh index at ``path`` (a generation being built, a merge's staging)."""
        return storage_at(path).create_index(SCHEMA, indexname=INDEX_NAME)

    @staticmethod
    def open_index(path: Path) -> Any:
        """The whoosh index of a generation (built or being built) at ``path``."""
        return storage_at(path).open_index(INDEX_NAME)

    def publish(self, built: Path) -> Path:
        """Make a fully built generation current; remove all but it and the one it replaces."""
        final = self.root / (GEN_PREFIX + built.name.removeprefix(BUILD_PREFIX))
        fsync_dir(built)  # its files were fsynced as whoosh closed them (_DurableStorage)
        os.replace(built, final)
        fsync_dir(self.root)
        previous = self.current_name()
        tmp = self.root / f"{CURRENT}.{os.getpid()}.{time.monotonic_ns()}.tmp"
        with open(tmp, "w", encoding="ascii") as fh:
            fh.write(final.name + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.root / CURRENT)
        fsync_dir(self.root)
        keep = {final.name, previous}
        for child in self.root.iterdir():
            if child.name.startswith(GEN_PREFIX) and child.name not in keep:
                shutil.rmtree(child, ignore_errors=True)
        return final

    def discard_stale_builds(self, older_than_s: float = 3600) -> None:
        """Remove half-built generations left by a crash (old enough not to be in progress)."""
        self._discard(BUILD_PREFIX, older_than_s)

    def discard_stale_merges(self) -> None:
        """Remove the staging directories of merges no process runs any more (call it
        holding the writer lock, with no merge of one's own running)."""
        self._discard(MERGE_PREFIX, older_than_s=None)

    def _discard(self, prefix: str, older_than_s: float | None) -> None:
        if not self.root.is_dir():
            return
        now = time.time()
        for child in self.root.iterdir():
            if child.name.startswith(prefix):
                with contextlib.suppress(OSError):
                    if older_than_s is None or now - child.stat().st_mtime > older_than_s:
                        shutil.rmtree(child, ignore_errors=True)


def segment_writer(index: Any, *, limitmb: int, locked: bool = True,
                   timeout: float = 0.0) -> Any:
    """A whoosh segment writer for a bulk build or an indexer's step
    (:class:`_BulkSegmentWriter`), waiting up to ``timeout`` seconds for the index's lock;
    ``locked=False`` for a child process writing one of several segments whose parent
    holds the lock."""
    return _BulkSegmentWriter(index, limitmb=limitmb, _lk=locked, timeout=timeout,
                              codec=InliningCodec())


class _BulkSegmentWriter(SegmentWriter):  # type: ignore[misc]
    """Whoosh's segment writer, with the new segment's field lengths read whole, once, a
    postings pool that sorts each field's postings apart (:mod:`mpi.search.pool`), handed
    to the codec's field writer field by field, and a term that one document holds
    written into the term's entry (:mod:`mpi.search.codec`).

    When whoosh writes a segment's postings, it looks up the document's field length for
    EVERY posting (``W3PerDocReader.doc_field_length``): a seek and a one-byte read of the
    lengths column, and for a field without lengths (an ID field) a ``stat`` of the column
    file, each time. At 500,000 records that was 11 % of a build process's time (py-spy).
    Here each field's lengths column is read into memory whole the first time it is asked
    for (one byte per document), and the lengths are the same bytes, decoded as whoosh does.
    """

    def __init__(self, index: Any, *, limitmb: int, **kwargs: Any):
        super().__init__(index, limitmb=limitmb, **kwargs)
        # Whoosh's pool (nothing in it yet), replaced by one holding each field's postings
        # apart, sorted on the term alone (mpi.search.pool).
        self.pool = FieldPostingPool(self._tempstorage, self.newsegment, limitmb=limitmb)
        # Segments added by add_reader whose terms are copied at the flush, and whether
        # anything went through the pool instead.
        self._copies: list[_Copy] = []
        self._pooled = False

    def per_document_reader(self) -> Any:
        return _WholeLengths(super().per_document_reader())

    def add_reader(self, reader: Any) -> None:
        """Whoosh's ``add_reader`` (a merge: the reader's live documents appended), with
        the segment's terms copied a term at a time when the segment is written (see
        :func:`mpi.search.codec.segment_terms`) instead of each posting going through
        the pool; the segment is the same (tests/search/test_codec.py). A writer that
        also adds documents, or a reader of another kind, goes whoosh's way."""
        if self._pooled or not hasattr(self.fieldwriter, "add_field_terms") \
                or segment_terms(reader) is None:
            self._pool_copies()
            super().add_reader(reader)
            self._pooled = True
            return
        from whoosh.reading import SegmentReader

        self._check_state()
        start = self.docnum
        names = {n for n in reader.indexed_field_names() if n in self.schema}
        docmap = self.write_per_doc(set(self.schema.names()) | names, reader)
        # A reader of its own, open until the flush (the caller closes its reader, and a
        # merge commit deletes the merged segments' files only after the flush).
        storage = reader.storage()
        if isinstance(storage, OverlayStorage):  # a compound segment's: (its file, the index's)
            storage = storage.b
        own = SegmentReader(storage, self.schema, reader.segment())
        self._copies.append(_Copy(own, start, docmap))
        self._added = True

    def write_per_doc(self, fieldnames: Any, reader: Any) -> Any:
        """Whoosh's ``write_per_doc`` (a merge copying a segment's stored fields, field
        lengths and columns), each field's lengths read whole: whoosh reads them a
        document and a field at a time, a seek and a read each, and a ``stat`` for a field
        without lengths (an ID field)."""
        if not hasattr(getattr(reader, "_perdoc", None), "column_reader"):
            return super().write_per_doc(fieldnames, reader)
        return super().write_per_doc(fieldnames, _LengthsReadWhole(reader))

    def add_document(self, **fields: Any) -> None:
        if not self._pooled:
            self._pool_copies()
            self._pooled = True
        self._add_document(**fields)

    def _pool_copies(self) -> None:
        """Put the postings of the segments added so far into the pool (whoosh's way)."""
        copies, self._copies = self._copies, []
        for copy in copies:
            try:
                self.add_postings_to_pool(copy.reader, copy.start, copy.docmap)
            finally:
                copy.reader.close()

    def _copied_fields(self) -> Iterator[tuple[str, Iterator[list[tuple[Any, ...]]]]]:
        """The copied segments' terms, field by field, each term's postings of every
        segment together, renumbered, deleted documents left out."""
        streams = [copy.terms(self.schema) for copy in self._copies]
        # heapq.merge keeps equal keys in the order of the streams (the segments' order),
        # and each segment's documents are numbered after the previous one's.
        merged = heapq.merge(*streams, key=_field_and_term)
        for fieldname, terms in groupby(merged, key=_FIELD):
            yield fieldname, (
                [posting for item in same for posting in item[2]]
                for _, same in groupby(terms, key=_TERM))

    def _flush_segment(self) -> None:
        # SegmentWriter._flush_segment, handing InliningCodec's field writer the pool's
        # postings field by field (each field's sorted apart: mpi.search.pool), or the
        # copied segments' terms
        self.perdocwriter.close()
        lengths = self.per_document_reader() if self.codec.length_stats else None
        try:
            if self._copies:
                self.fieldwriter.add_field_terms(self.schema, lengths, self._copied_fields())
            elif hasattr(self.fieldwriter, "add_field_postings"):
                self.fieldwriter.add_field_postings(self.schema, lengths,
                                                    self.pool.by_field())
            else:
                self.fieldwriter.add_postings(self.schema, lengths,
                                              self.pool.iter_postings())
        finally:
            self._close_copies()
        self.fieldwriter.close()
        if lengths is not None:
            lengths.close()

    def _close_copies(self) -> None:
        copies, self._copies = self._copies, []
        for copy in copies:
            copy.reader.close()

    def cancel(self) -> None:
        self._close_copies()
        super().cancel()

    def _add_document(self, **fields: Any) -> None:
        """Whoosh's ``SegmentWriter.add_document`` for the service's documents, with what
        it asks of each field (indexed? scored? stored? a column?) asked once per writer
        and a field's postings added to the pool together; a document with boosts or
        ``_stored_`` values, or a field with spelling words or vectors, goes through
        whoosh's own. The segment is the same (tests/search/test_codec.py)."""
        plan = self._plan
        if any(name[0] == "_" or plan.get(name) is None for name in fields):
            super().add_document(**fields)
            return
        self._check_state()
        perdoc, docnum, pool = self.perdocwriter, self.docnum, self.pool
        perdoc.start_doc(docnum)
        try:
            for name in sorted(fields):
                value = fields[name]
                if value is None:
                    continue
                planned = plan[name]
                assert planned is not None  # (checked above)
                field, indexed, scorable, stored, column = planned
                length = 0
                if indexed:
                    postings = list(field.index(value))
                    if scorable:
                        length = sum(posting[1] for posting in postings)
                    # (the weight times the field's boost in the document, 1.0, as whoosh
                    # multiplies it: a float)
                    pool.add_many(name, docnum, [(tbytes, docnum, weight * 1.0, vbytes)
                                                 for tbytes, _, weight, vbytes in postings])
                perdoc.add_field(name, field, value if stored else None, length)
                if column is not None:
                    perdoc.add_column_value(name, column, field.to_column_value(value))
        except BaseException:
            perdoc.cancel_doc()
            raise
        perdoc.finish_doc()
        self._added = True
        self.docnum += 1

    @functools.cached_property
    def _plan(self) -> dict[str, tuple[Any, bool, bool, bool, Any] | None]:
        """Per field: (field, indexed, scorable, stored, column type); None for a field
        whoosh's own ``add_document`` must add (spelling words, vectors)."""
        plan: dict[str, tuple[Any, bool, bool, bool, Any] | None] = {}
        for name, field in self.schema.items():
            special = field.separate_spelling() or field.vector
            plan[name] = None if special else (field, bool(field.indexed),
                                               bool(field.scorable), bool(field.stored),
                                               field.column_type or None)
        return plan


_FIELD = itemgetter(0)
_TERM = itemgetter(1)
_field_and_term = itemgetter(0, 1)


@dataclass
class _Copy:
    """A segment added by ``add_reader`` whose terms are copied at the flush: its reader,
    the number its first document gets, and whoosh's map of its live documents' numbers
    (None: it has no deleted documents)."""

    reader: Any
    start: int
    docmap: dict[int, int] | None

    def terms(self, schema: Any) -> Iterator[tuple[str, bytes, list[tuple[Any, ...]]]]:
        """``(field, term, postings)``, the postings renumbered, as whoosh's
        ``_process_posts`` renumbers them (fields not in ``schema`` left out)."""
        start, docmap = self.start, self.docmap
        for fieldname, btext, ids, weights, values in segment_terms(self.reader) or ():
            if fieldname not in schema:
                continue
            if docmap is None:
                postings = [(btext, start + d, w, v)
                            for d, w, v in zip(ids, weights, values, strict=True)]
            else:
                postings = [(btext, docmap[d], w, v)
                            for d, w, v in zip(ids, weights, values, strict=True)
                            if d in docmap]
            if postings:
                yield fieldname, btext, postings


class _LengthsReadWhole:
    """A segment reader whose documents' field lengths come from the columns read whole
    (:class:`_WholeLengths`); anything else is the reader's."""

    def __init__(self, reader: Any):
        self._reader = reader
        self._lengths = _WholeLengths(reader._perdoc)

    def doc_field_length(self, docnum: int, fieldname: str, default: int = 0) -> int | None:
        return self._lengths.doc_field_length(docnum, fieldname, default)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reader, name)


class _WholeLengths:
    def __init__(self, reader: Any):
        self._reader = reader
        self._columns: dict[str, bytes | None] = {}

    def length_bytes(self, fieldname: str) -> bytes | None:
        """The field's lengths column, one byte per document (None: the field has none)."""
        if fieldname in self._columns:
            return self._columns[fieldname]
        column = self._columns[fieldname] = self._whole(fieldname)
        return column

    def doc_field_length(self, docnum: int, fieldname: str, default: int = 0) -> int | None:
        column = self.length_bytes(fieldname)
        if column is None:
            return default
        lbyte = column[docnum] if docnum < len(column) else 0
        return byte_to_length(lbyte) if lbyte else None  # as W3PerDocReader answers

    def _whole(self, fieldname: str) -> bytes | None:
        name = _lenfield(fieldname)
        if not self._reader.has_column(name):
            return None
        column = self._reader.column_reader(name, LENGTHS_COLUMN)
        # A fixed-width column of one byte per document, up to the last one with a length.
        return bytes(column._dbfile.get(column._basepos, column._count * column._fixedlen))

    def close(self) -> None:
        self._reader.close()


def storage_at(path: Path) -> Any:
    """The whoosh storage for a generation: plain file reads, no ``mmap``.

    With ``mmap`` (whoosh's default, what ``open_dir``/``create_in`` use), a segment in
    a compound file is mapped and whoosh 2.7 opens its terms and postings files as
    ``BufferFile``s, whose ``BytesIO(buffer)`` COPIES the whole mapped range into memory
    (``whoosh.filedb.compound.CompoundStorage.open_file`` -> ``structfile.BufferFile``).
    Every ``index.searcher()`` paid that copy for every segment: at 100,000 patients
    ~100 ms and ~160 MB (the terms and postings) per open, nearly all of it in
    ``BufferFile.__init__`` (cProfile), in each worker after each commit and in the
    indexer on each step. With ``supports_mmap=False`` (a documented ``FileStorage``
    option), whoosh reads the compound file through ``SubFile`` views of one ordinary
    file (``CompoundStorage``'s fallback): opening costs ~1 ms, and a search reads only
    the pages it needs (from the page cache). The
    views share one file position (seek, then read), so one searcher must not be used
    by two threads at once; the reader and the indexer each hold a lock or use theirs
    from one thread.
    """
    return _DurableStorage(str(path), supports_mmap=False)


class _DurableStorage(FileStorage):  # type: ignore[misc]
    """Whoosh's file storage, with each written file fsynced as it is closed and each
    rename (the table of contents being published) followed by an fsync of the directory.
    Whoosh itself never fsyncs."""

    def create_file(self, name: str, excl: bool = False, mode: str = "wb",
                    **kwargs: Any) -> Any:
        plain = super().create_file(name, excl=excl, mode=mode, **kwargs)
        created = PositionedFile(plain.file, name=name, onclose=plain.onclose)
        then = created.onclose

        def durable(structfile: Any) -> None:
            if then is not None:
                then(structfile)
            structfile.file.flush()
            os.fsync(structfile.file.fileno())

        created.onclose = durable
        return created

    def rename_file(self, frm: str, to: str, safe: bool = False) -> None:
        super().rename_file(frm, to, safe=safe)
        fsync_dir(Path(self.folder))


class PositionedFile(StructFile):  # type: ignore[misc]
    """Whoosh's structured file over a file being written, counting its own position.

    Whoosh asks the file it writes where it is three times per term (the offset of the
    term's postings, its entry in the term table's hash, the table's index), and a
    buffered file answers ``tell()`` with a system call (``lseek``) each time: 17 % of a
    one-process rebuild's time (py-spy, 50,000 records). Here the position is the file's
    as last asked plus the bytes written since; it is asked of the file again after a
    seek, a truncation or a write that does not go through :meth:`write` (a pickle or
    an array written to the file itself), and always once the raw file was handed out
    (whoosh's pool writes its runs through it). A file opened for reading too is not
    tracked: whoosh's reading methods seek and read the file itself."""

    def __init__(self, fileobj: Any, name: str | None = None, onclose: Any = None):
        super().__init__(fileobj, name=name, onclose=onclose)
        self._position: int | None = None
        # (whoosh's readers of a file seek and read it directly: only a file opened for
        # writing alone is tracked)
        self._tracked = not fileobj.readable()

    def write(self, data: Any) -> int:
        written: int = self.file.write(data)
        if self._position is not None:
            self._position += written
        return written

    def tell(self) -> int:
        if self._position is None or not self._tracked:
            position: int = self.file.tell()
            self._position = position if self._tracked else None
            return position
        return self._position

    def seek(self, *args: Any) -> Any:
        self._position = None
        return self.file.seek(*args)

    def truncate(self, *args: Any) -> Any:
        self._position = None
        return self.file.truncate(*args)

    def write_pickle(self, obj: Any, protocol: int = -1) -> None:
        super().write_pickle(obj, protocol)  # into the file itself, not through write()
        self._position = None

    def write_array(self, arry: Any) -> None:
        super().write_array(arry)  # (array.tofile)
        self._position = None

    def raw_file(self) -> Any:
        self._tracked = False
        self._position = None
        return self.file


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class WriterLock:
    """An exclusive ``flock`` on ``writer.lock``: one writing process per index directory.

    ``flock`` locks belong to the open file, so they also exclude two writers in
    one process. If the directory is deleted under a running writer, the lock
    file it holds is no longer the one at the path: :meth:`held` says so, and
    the writer takes the lock on the new file (or leaves it to whoever did).
    """

    def __init__(self, root: Path):
        self.path = Path(root) / LOCK
        self._fd: int | None = None
        self._id: tuple[int, int] | None = None
        # One release closes the descriptor, whichever threads release at once.
        self._releasing = threading.Lock()

    def acquire(self) -> bool:
        """Take the lock if it is free; True when this object holds it (now or already)."""
        if self._fd is not None:
            if self.held():
                return True
            self.release()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        st = os.fstat(fd)
        self._fd, self._id = fd, (st.st_dev, st.st_ino)
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        return True

    def held(self) -> bool:
        """True while this object holds the lock on the file that is at the path."""
        if self._fd is None:
            return False
        try:
            st = os.stat(self.path)
        except OSError:
            return False
        return (st.st_dev, st.st_ino) == self._id

    def release(self) -> None:
        with self._releasing:
            fd, self._fd, self._id = self._fd, None, None
        if fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


def detach_forked_child(root: Path) -> None:
    """First thing in a child process forked by the writer of the index directory ``root``
    (a rebuild's share, a merge): stop when told to, and leave the writer lock to the parent.

    The parent's signal handlers came with the fork (the indexer process's SIGTERM only
    asks its loop to stop, so ``terminate()`` would not end the child). So did the lock's
    descriptor: an ``flock`` belongs to the open file, so a copy left open here would keep
    the lock after the parent died, and no other process could take over the index until
    this child ended.
    """
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)
    lock = os.path.realpath(Path(root) / LOCK)
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError, ValueError):
            if os.readlink(f"/proc/self/fd/{name}") == lock:
                os.close(int(name))


class PreferredWriter:
    """Which process should write the index when it is alive: the indexer process ``mpi
    serve`` forks (and forks again if it dies). A worker's standby indexer thread writes
    only while no such process lives, and hands the lock back when one does again.

    The file holds the process's pid and its start time (``/proc/<pid>/stat``), so a pid
    reused by another process after a crash is not taken for the indexer.
    """

    def __init__(self, root: Path):
        self.path = Path(root) / PREFERRED

    def claim(self) -> None:
        """Name this process (the indexer process, at its start)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_suffix(".tmp")
        temporary.write_text(f"{os.getpid()} {_started(os.getpid())}\n")
        os.replace(temporary, self.path)

    def alive_elsewhere(self) -> bool:
        """True when the named process runs, and is not this one."""
        try:
            pid_text, started = self.path.read_text().split()
            pid = int(pid_text)
        except (OSError, ValueError):
            return False
        return pid != os.getpid() and _started(pid) == started


def _started(pid: int) -> str | None:
    """The process's start time in clock ticks since boot; None if it is gone (or a
    zombie)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] == "Z" else fields[19]
