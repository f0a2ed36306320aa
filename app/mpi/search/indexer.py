"""The indexer: keeps one index directory current by following the change log.

One process per index directory writes (``WriterLock``); under ``mpi serve`` that is
the indexer process the gunicorn master forks (``mpi.search.process``), and the
workers' indexer threads stand by to take over if it dies. Each step reads the events after the
index's cursor, turns them into index changes and commits the documents and
the new cursor in ONE whoosh commit, so the index never claims to have seen an
event whose change it does not hold.

What an event means for the index is decided by :data:`HANDLERS`, keyed by
:class:`~mpi.domain.events.EventType` and covering every type: created/updated
events carry the full record, deleted events remove it, a link event
(``PatientLinked``/``PatientUnlinked``) carries the patient's new person, a merge
names the patients it moved (re-read), and review events change no document. A
type with no handler (written by a newer release, say) is an error in a strict
indexer (the tests') and otherwise logged as an error, its patient re-read.

The events of one step are coalesced into one change per patient before the
index is touched: a record created (or updated) and linked in one transaction
is one document built from the created event's payload with the link's person,
not a document plus a re-read. Only a link whose record is not in the same
step, and events that carry no record, re-read patients: all of a step's
re-reads in one snapshot, one query per table.

A missing, corrupt or old-schema index is rebuilt from the database: a new
generation is built beside the current one from a consistent snapshot (the
snapshot's last event id becomes its cursor), then published; following the
log from that cursor brings it up to date.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import queue
import random
import re
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal

import peewee
from whoosh import query as wq

from mpi import heap, metrics
from mpi.domain.events import ChangeEvent, EventType
from mpi.search.merging import BackgroundMerge, MergeFailed
from mpi.search.schema import SCHEMA, document, meta_document
from mpi.search.store import (
    IndexDirectory,
    IndexState,
    Opened,
    PreferredWriter,
    WriterLock,
    detach_forked_child,
    segment_writer,
)
from mpi.storage.changes import ChangeRepository
from mpi.storage.db import connection, is_postgres, unwrapped
from mpi.storage.patients import PatientRepository

log = logging.getLogger("mpi.search")

BATCH_SIZE = 500
#: Behind (a step read a full batch, or an index opened with more events than that after
#: its cursor), each step reads this many events; caught up, BATCH_SIZE again (the first
#: events of a burst searchable after a small step). Every step writes a segment, and
#: every record's look-up (is it indexed already?) and every search pays for each
#: segment: in steps of 500 events, an instance restarted 424,000-481,000 events behind
#: at 1,000,000 records caught up at 290-525 events a second, slowing as its segments
#: piled up (100 of them within minutes).
CATCH_UP_EVENTS = 32_000
#: A step's postings pool (and its child's) spills to disk past this many megabytes (as
#: whoosh counts them). A step of 32,000 events held 75 MB more than one of 16,000 with
#: 128 MB (the pool never spilled); with 32 it held the same as 16,000 did and caught up
#: 6 % faster than 16,000 (larger segments, fewer of them: 100,000 records behind 300,000,
#: 35.1 -> 33.0 s, 182 -> 184 MB at most).
STEP_POOL_MB = 32
#: A step with this many new records (a backlog) has some of them written into a segment
#: of their own by a child process, beside the indexer (SEARCH_REBUILD_PROCESSES > 1).
CATCH_UP_SHARE_FROM = 2_000
REBUILD_PAGE = 1000
#: A rebuild shares the records out between processes from this many (fewer are indexed
#: faster than the processes start).
PARALLEL_FROM = 20_000
#: Segments merge MERGE_FACTOR at a time, those of about the same size together: a
#: segment's level is the number of digits of its document count less one (1-9
#: documents: level 0, 10-99: 1, ...), and once a level holds MERGE_FACTOR segments, a
#: step merges its smallest MERGE_FACTOR into one of the next level (in a commit of its
#: own after the step's documents are committed, so they are searchable before the
#: merge). Every commit writes a segment, and every search pays for each segment: at
#: 1,300,000 records, 42 small segments beside the two large ones made a name + birth
#: year search 1.7 times as slow as the same documents in 3 segments. A document is
#: merged about once per level it climbs (log10 of the merged size over the commits').
MERGE_FACTOR = 10
#: At most this many documents are merged by a step. Levels whose merge would be larger
#: are left to :meth:`Indexer.compact`.
STEP_MERGE_DOCS = 50_000
#: A step merges up to this many documents itself, in a commit of its own (a fraction of
#: a second); a larger merge runs beside the indexer (:mod:`mpi.search.merging`): whoosh
#: merged 250-1,000 documents a second (the service's writer ~5,000 a second of CPU), and a
#: merge in the indexer's way holds every change that arrives meanwhile out of search
#: (76 s for 19,000 documents with whoosh's).
INLINE_MERGE_DOCS = 1_000
#: When the log is quiet and the index has this many segments, the smallest of them (at
#: most MERGE_FACTOR, and COMPACT_MERGE_DOCS documents) are merged beside the indexer,
#: whatever their level, until fewer are left or none can be.
COMPACT_AT_SEGMENTS = MERGE_FACTOR + 2
COMPACT_MERGE_DOCS = 100_000
#: Once no change has arrived for this long, the index's small segments (each holding less
#: than SMALL_SEGMENT_SHARE of its documents) are merged into one beside the indexer,
#: however few they are. A burst of writes leaves several next to a rebuild's large ones
#: (a level holds up to MERGE_FACTOR - 1 unmerged), and every search pays for every segment:
#: at 1,000,000 records, the six that 3,500 creates left (1 to 1,813 documents) cost a
#: fuzzy surname search 2.5 ms of the server's CPU (10.3 ms a search with them, 7.8 ms with
#: them merged; 150 searches a second instead of 190 with 4 clients).
QUIET_COMPACT_S = 30.0
SMALL_SEGMENT_SHARE = 0.01
#: After a merge beside the indexer failed, none is started again for this long.
MERGE_RETRY_S = 60.0
# While idle, the writer verifies the index this often: its document count against the
# database's live records, and a sample of records read back through the index (each
# found by its id and by its names, its stored version current). A damaged index
# (zeroed, truncated or overwritten segments) is rebuilt, instead of answering "no
# matches" or 503 until the next write happens to notice.
VERIFY_EVERY_S = 10.0
VERIFY_SAMPLE = 20


@dataclass(frozen=True)
class Change:
    """What to do to one patient's document.

    ``relink`` sets the patient's person (``person_id``) and keeps the rest of
    the record; it only survives :func:`changes_for` as an upsert (after an
    event that carried the record) or as a refetch.

    An upsert's ``record`` is the event's payload, or its JSON text as stored (the
    indexer reads records' events undecoded: each record is decoded where its document
    is written, in a child process for the child's share of a backlog, and a step holds
    the text: 40,000 events took 45 MB so, 180 MB decoded); its ``person_id``, when set,
    replaces the record's (a link in the same step). :meth:`document_record` gives both
    as one dict.
    """

    action: Literal["upsert", "delete", "refetch", "relink"]
    record: dict[str, Any] | str | None = None
    person_id: str | None = None

    def after(self, previous: Change | None) -> Change:
        """This change applied on top of ``previous`` (the net change so far in the step)."""
        if self.action != "relink":
            return self
        if previous is not None and previous.action == "upsert" and previous.record:
            return Change("upsert", previous.record, self.person_id)
        return Change("refetch")  # the rest of the record is not in this step: re-read it

    def document_record(self) -> dict[str, Any] | None:
        """An upsert's record, with its person; None when its JSON text holds no record
        (then the patient is re-read)."""
        record = self.record
        if isinstance(record, str):
            record = json.loads(record)
            if not _is_record(record):
                return None
        if record is not None and self.person_id is not None:
            record = {**record, "person_id": self.person_id}
        return record


Handler = Callable[[ChangeEvent], Iterable[tuple[str, Change]]]


#: The event types whose payload is the record; the indexer reads them undecoded (Change).
RECORD_EVENTS = frozenset({EventType.PATIENT_CREATED, EventType.PATIENT_UPDATED})


def _is_record(payload: Any) -> bool:
    return isinstance(payload, dict) and bool(payload.get("id")) and "names" in payload


def _from_payload(event: ChangeEvent) -> Iterator[tuple[str, Change]]:
    payload = event.payload
    # JSON text: every writer's payload is the record (PatientService); one that is not
    # is found when the text is decoded (Change.document_record) and re-read then.
    if _is_record(payload) or (isinstance(payload, str) and payload.startswith("{")):
        yield event.entity_id, Change("upsert", payload)
    else:
        yield event.entity_id, Change("refetch")


def _deleted(event: ChangeEvent) -> Iterator[tuple[str, Change]]:
    yield event.entity_id, Change("delete")


def _relinked(event: ChangeEvent) -> Iterator[tuple[str, Change]]:
    payload = event.payload if isinstance(event.payload, dict) else {}
    person = payload.get("person_id")
    yield event.entity_id, (Change("relink", person_id=str(person)) if person
                            else Change("refetch"))


def refetch_patient(event: ChangeEvent) -> Iterator[tuple[str, Change]]:
    """Re-read the patient the event is about from the database."""
    if event.entity_type == "patient":
        yield event.entity_id, Change("refetch")


def no_document_change(event: ChangeEvent) -> Iterator[tuple[str, Change]]:
    """Events that change no patient's document (the review queue)."""
    return iter(())


def patients_listed_in(*keys: str) -> Handler:
    """For events about another entity (a person) that name the patients they changed."""

    def handler(event: ChangeEvent) -> Iterator[tuple[str, Change]]:
        payload = event.payload if isinstance(event.payload, dict) else {}
        for key in keys:
            for patient_id in payload.get(key) or []:
                yield str(patient_id), Change("refetch")

    return handler


HANDLERS: dict[str, Handler] = {
    EventType.PATIENT_CREATED: _from_payload,
    EventType.PATIENT_UPDATED: _from_payload,
    EventType.PATIENT_DELETED: _deleted,
    # Identity: a (un)link names the patient's new person; after the record's own event
    # in the same step it only sets person_id, otherwise the patient is re-read.
    EventType.PATIENT_LINKED: _relinked,
    EventType.PATIENT_UNLINKED: _relinked,
    # A merge and its undo move records between persons and name them.
    EventType.PERSONS_MERGED: patients_listed_in("moved_patient_ids"),
    EventType.MERGE_UNDONE: patients_listed_in("returned_patient_ids", "moved_patient_ids"),
    # Reviews change no record.
    EventType.REVIEW_OPENED: no_document_change,
    EventType.REVIEW_RESOLVED: no_document_change,
}


class UnknownEventType(LookupError):
    """The change log holds an event type the indexer has no handler for."""


def changes_for(events: Iterable[ChangeEvent], handlers: dict[str, Handler] | None = None,
                *, strict: bool = False) -> dict[str, Change]:
    """The net change per patient id for a batch of events: one per patient, never "relink".

    The last change wins, except that a relink amends the record an earlier event of
    the batch carried (see :meth:`Change.after`). An event type without a handler raises
    :class:`UnknownEventType` when ``strict``; otherwise it is logged as an error and
    its patient (if it is about one) re-read.
    """
    handlers = HANDLERS if handlers is None else handlers
    net: dict[str, Change] = {}
    for event in events:
        handler = handlers.get(event.event_type)
        if handler is None:
            if strict:
                raise UnknownEventType(f"no search-index handler for event type "
                                       f"{event.event_type!r} (event {event.id})")
            log.error("search index: no handler for event type %s; re-reading its patient",
                      event.event_type, extra={"event_type": event.event_type})
            handler = refetch_patient
        for patient_id, change in handler(event):
            previous = net.pop(patient_id, None)  # keep insertion order = order of the last
            net[patient_id] = change.after(previous)
    return net


def _level(documents: int) -> int:
    return len(str(max(documents, 1))) - 1


def merge_plan(sizes: Sequence[int], max_documents: int | None = None) -> list[int]:
    """The segments (indices into their document counts, ``sizes``) a step merges: the
    MERGE_FACTOR smallest of the lowest level that holds MERGE_FACTOR, unless they hold
    more than ``max_documents`` (STEP_MERGE_DOCS) in all; none when no level is full."""
    limit = STEP_MERGE_DOCS if max_documents is None else max_documents
    levels: dict[int, list[int]] = {}
    for i, documents in enumerate(sizes):
        levels.setdefault(_level(documents), []).append(i)
    for level in sorted(levels):
        if len(levels[level]) >= MERGE_FACTOR:
            chosen = sorted(levels[level], key=lambda i: sizes[i])[:MERGE_FACTOR]
            return chosen if sum(sizes[i] for i in chosen) <= limit else []
    return []


def compaction_plan(sizes: Sequence[int], *, quiet: bool = False) -> list[int]:
    """The segments an idle index merges: when it has COMPACT_AT_SEGMENTS or more, its
    smallest (at most MERGE_FACTOR of them, COMPACT_MERGE_DOCS documents in all); none
    when fewer than two would be. ``quiet`` (no change for QUIET_COMPACT_S): otherwise its
    small segments (:func:`small_segments_plan`)."""
    if len(sizes) < COMPACT_AT_SEGMENTS:
        return small_segments_plan(sizes) if quiet else []
    chosen: list[int] = []
    total = 0
    for i in sorted(range(len(sizes)), key=lambda i: sizes[i])[:MERGE_FACTOR]:
        if total + sizes[i] > COMPACT_MERGE_DOCS:
            break
        chosen.append(i)
        total += sizes[i]
    return chosen if len(chosen) > 1 else []


def small_segments_plan(sizes: Sequence[int]) -> list[int]:
    """The segments a quiet index merges into one: those holding less than
    SMALL_SEGMENT_SHARE of its documents, COMPACT_MERGE_DOCS in all; none when fewer than
    two. The largest of them is left out while it holds more than MERGE_FACTOR times the
    others together: a record written now and then, a quiet spell after each, would
    otherwise have it rewritten for every record. The small ones first merge among
    themselves until they weigh a tenth of it, so a document is rewritten a few times over,
    as by the levels of :func:`merge_plan`."""
    limit = SMALL_SEGMENT_SHARE * sum(sizes)
    small = sorted((i for i, n in enumerate(sizes) if n < limit), key=lambda i: sizes[i])
    while len(small) >= 2 and sizes[small[-1]] > MERGE_FACTOR * sum(sizes[i]
                                                                     for i in small[:-1]):
        small.pop()
    if len(small) < 2 or sum(sizes[i] for i in small) > COMPACT_MERGE_DOCS:
        return []
    return small


def _policy(plan: Callable[[Sequence[int]], list[int]], busy: frozenset[str] = frozenset()
            ) -> Callable[[Any, list[Any]], list[Any]]:
    """A whoosh merge policy (``commit(mergetype=...)``) that merges what ``plan`` picks
    from the document counts of the segments not in ``busy`` (ids of segments a merge
    beside the indexer is reading); returns the segments kept as they are."""
    def merge(writer: Any, segments: list[Any]) -> list[Any]:
        chosen = _picked(plan, segments, busy)
        return _merge(writer, segments, chosen) if chosen else segments
    return merge


def _picked(plan: Callable[[Sequence[int]], list[int]], segments: Sequence[Any],
            busy: frozenset[str] = frozenset()) -> list[Any]:
    """The segments ``plan`` picks among ``segments`` not in ``busy``."""
    free = [s for s in segments if s.segment_id() not in busy]
    return [free[i] for i in plan([s.doc_count_all() for s in free])]


def _commit_merge(index: Any, mergetype: Callable[..., Any]) -> None:
    """A commit of nothing but a merge, chosen by ``mergetype`` (whoosh's merge policy),
    by the service's writer (its merge copies terms: :mod:`mpi.search.store`)."""
    writer = segment_writer(index, limitmb=STEP_POOL_MB, timeout=10)
    try:
        writer.commit(mergetype=mergetype)
    except BaseException:
        writer.cancel()
        raise


def _merge(writer: Any, segments: list[Any], chosen: list[Any]) -> list[Any]:
    from whoosh.reading import SegmentReader

    for segment in chosen:
        reader = SegmentReader(writer.storage, writer.schema, segment)
        writer.add_reader(reader)
        reader.close()
    return [s for s in segments if s not in chosen]


def snapshot(db: peewee.Database) -> Any:
    """A read transaction that sees one consistent state of the whole database."""
    if is_postgres(db):
        return db.atomic(isolation_level="REPEATABLE READ")
    return db.atomic()  # SQLite in WAL mode: a deferred transaction reads one snapshot


def live_records(db: peewee.Database, ids: Iterable[str]) -> dict[str, dict[str, Any] | None]:
    """The current record of each id, or None when it is deleted or unknown.

    One snapshot, one query per table for all ids (not one look-up per patient)."""
    wanted = list(dict.fromkeys(ids))
    if not wanted:
        return {}
    with snapshot(db):
        live = PatientRepository().get_live_many(wanted)
    return {patient_id: (live[patient_id].to_dict() if patient_id in live else None)
            for patient_id in wanted}


def build_generation(db: peewee.Database, directory: IndexDirectory, *,
                     progress: Callable[[int, int], None] | None = None,
                     processes: int = 1) -> tuple[Path, int, int]:
    """Build a complete generation from the database and publish it.

    Returns (path, patients indexed, cursor). ``progress(done, total)`` is called
    after each page. Readers keep using the current generation until the end.

    On PostgreSQL, with ``processes`` > 1 and at least :data:`PARALLEL_FROM` records, the
    records are shared out between that many child processes (:func:`_index_in_processes`).
    """
    started = time.monotonic()
    built = directory.new_build()
    try:
        ix = directory.create_index(built)
        with connection(db), snapshot(db):
            cursor = ChangeRepository().last_id()
            total = _count(db)
            if processes > 1 and is_postgres(db) and total >= PARALLEL_FROM:
                count = _index_in_processes(db, ix, built, cursor, total, processes, progress)
            else:
                count = _index_here(ix, cursor, total, progress)
        ix.close()
        final = directory.publish(built)
    except BaseException:
        shutil.rmtree(built, ignore_errors=True)
        raise
    elapsed = time.monotonic() - started
    log.info("search index rebuilt: %d patients through event %d in %.1f s (%d processes)",
             count, cursor, elapsed, processes if total >= PARALLEL_FROM else 1,
             extra={"patients": count, "cursor": cursor, "seconds": round(elapsed, 1)})
    return final, count, cursor


def _index_here(ix: Any, cursor: int, total: int,
                progress: Callable[[int, int], None] | None) -> int:
    """Index every live record in this process, inside the caller's snapshot."""
    repository = PatientRepository()
    count = 0
    writer = segment_writer(ix, limitmb=256)
    try:
        try:
            after: int | None = None
            while True:
                records, after = repository.search_page(after=after, limit=REBUILD_PAGE)
                for record in records:
                    writer.add_document(**document(record))
                count += len(records)
                heap.settle()  # the segment's postings out of every later collection
                if progress is not None:
                    progress(count, total)
                if after is None:
                    break
            writer.add_document(**meta_document(cursor))
        except BaseException:
            writer.cancel()
            raise
        writer.commit()
    finally:
        heap.thaw()
    return count


class IndexBuildFailed(RuntimeError):
    """A process building a share of a new generation failed (its error type is named)."""


def _index_in_processes(db: peewee.Database, ix: Any, path: Path, cursor: int, total: int,
                        processes: int, progress: Callable[[int, int], None] | None) -> int:
    """Index the live records in ``processes`` forked children, each a share of the keys
    into a whoosh segment of its own, all reading the caller's snapshot; then commit one
    table of contents naming every segment (and the cursor document). Whoosh is pure
    Python, so one process indexes on one core: at 1,000,000 records it read and indexed
    ~1,400 a second and left the other core idle.

    The children read in a transaction that imports the caller's exported snapshot
    (``pg_export_snapshot``), so the generation is exactly as consistent as a one-process
    build: the caller's transaction stays open until they are done. They run at the lowest
    CPU priority (niceness 19), below the request workers, so a rebuild takes the CPU the
    service leaves idle rather than the service's latency.
    """
    from whoosh.writing import SegmentWriter

    exported = str(unwrapped(db).execute_sql("SELECT pg_export_snapshot()").fetchone()[0])
    shares = _shares(total, processes)
    context = multiprocessing.get_context("fork")
    messages: Any = context.Queue()
    children = [context.Process(target=_index_share, name=f"search-index-build-{i}",
                                args=(db, path, exported, after, through, i, messages),
                                daemon=True)
                for i, (after, through) in enumerate(shares)]
    segments: dict[int, Any] = {}
    count = 0
    try:
        for child in children:
            child.start()
        while len(segments) < len(children):
            try:
                kind, share, value = messages.get(timeout=1.0)
            except queue.Empty:
                failed = [c.name for c in children if c.exitcode not in (None, 0)]
                if failed:
                    raise IndexBuildFailed(f"{', '.join(failed)} exited without its segment") \
                        from None
                continue
            if kind == "error":
                raise IndexBuildFailed(f"share {share} failed: {value}")
            if kind == "progress":
                count += value
                if progress is not None:
                    progress(count, total)
            else:
                segments[share] = value
    finally:
        for child in children:
            if child.is_alive():
                child.terminate()
            child.join()
        messages.close()
    writer = SegmentWriter(ix, limitmb=16)  # takes the build directory's whoosh lock
    try:
        writer.add_document(**meta_document(cursor))
        # As whoosh's own multi-process writer commits (whoosh.multiproc.MpWriter): the
        # children's finished segments and this one in one table of contents.
        done = [segments[i] for i in sorted(segments) if segments[i] is not None]
        writer._commit_toc([*done, writer._finalize_segment()])
    except BaseException:
        writer.cancel()
        raise
    writer._finish()
    return count


def _shares(total: int, processes: int) -> list[tuple[int | None, int | None]]:
    """``processes`` key ranges (after, through] of about equal numbers of live records
    (in the caller's snapshot); the first starts at the beginning, the last runs to the end."""
    from mpi.storage.models import PatientRow

    cuts: list[int | None] = [None]
    # The last key of each share but the last: the (total * k / processes)-th live record.
    for position in sorted({total * k // processes for k in range(1, processes)} - {0}):
        row = (PatientRow.select(PatientRow.pk).where(PatientRow.deleted_at.is_null())
               .order_by(PatientRow.pk).offset(position - 1).limit(1).first())
        if row is not None:
            cuts.append(row.pk)
    return [(cuts[i], cuts[i + 1] if i + 1 < len(cuts) else None) for i in range(len(cuts))]


_SNAPSHOT_ID = re.compile(r"[0-9A-F]+-[0-9A-F]+(-[0-9]+)?")


def _index_share(db: peewee.Database, path: Path, exported: str, after: int | None,
                 through: int | None, share: int, messages: Any) -> None:
    """A child's body: index the live records with keys in (after, through] into one new
    segment, reading the snapshot ``exported``; put ("progress", n) after each page and
    ("done", segment) at the end, or ("error", type) and exit 1."""
    from mpi.storage.db import reopened
    from mpi.storage.models import ALL_MODELS

    try:
        detach_forked_child(path.parent)
        os.nice(19 - os.nice(0))
        fresh = reopened(db)
        if not _SNAPSHOT_ID.fullmatch(exported):
            raise ValueError("not a snapshot id")
        ix = IndexDirectory.open_index(path)
        writer = segment_writer(ix, limitmb=128, locked=False)
        repository = PatientRepository()
        added = 0
        # The models read through the child's own database, never the parent's (the
        # composition root alone binds the shared proxy).
        with (fresh.bind_ctx(ALL_MODELS), connection(fresh),
              fresh.atomic(isolation_level="REPEATABLE READ")):
            # Must come first in the transaction; a utility statement takes no parameters.
            fresh.execute_sql(f"SET TRANSACTION SNAPSHOT '{exported}'")
            while True:
                records, after = repository.search_page(after=after, limit=REBUILD_PAGE,
                                                        through=through)
                for record in records:
                    writer.add_document(**document(record))
                added += len(records)
                heap.settle(process_exits=True)
                messages.put(("progress", share, len(records)))
                if after is None:
                    break
        # Not cancel() or _finish(): they remove the index's temporary directory, which
        # every writer of the index shares (the parent's writer removes it at the end).
        segment = writer._finalize_segment() if added else writer._close_segment()
        messages.put(("done", share, segment))
    except BaseException as exc:
        # The type only: a database error message can quote patient data.
        messages.put(("error", share, type(exc).__name__))
        raise SystemExit(1) from None
    finally:
        messages.close()
        messages.join_thread()


def _count(db: peewee.Database) -> int:
    from mpi.storage.models import PatientRow

    return int(PatientRow.select().where(PatientRow.deleted_at.is_null()).count())


def _reads_back(searcher: Any, doc: dict[str, Any]) -> str | None:
    """Whether the index finds ``doc`` (a live record's document) as it should: by id with
    its current version, and by the first term of each of its name fields."""
    stored = searcher.document(id=doc["id"])
    if stored is None:
        return "a live record is not in the index"
    if int(stored.get("version") or 0) != doc["version"]:
        return "a record's indexed version is not its current one"
    for field in ("family", "given"):
        terms = list(SCHEMA[field].process_text(doc[field])) if doc.get(field) else []
        if terms and not searcher.search(wq.And([wq.Term("id", doc["id"]),
                                                 wq.Term(field, terms[0])]), limit=1):
            return f"a record is not found by its {field} name"
    return None


class ShareSizes:
    """How many of a backlog step's new records its child gets: as many as make the child
    and the indexer (its share, the step's other changes and the look-ups they need)
    finish together, from what each took per record in the last shared step; half the
    step's changes (at most its new records) until one was measured."""

    def __init__(self) -> None:
        self.own_s: float | None = None  # the indexer's time per change it wrote
        self.child_s: float | None = None  # the child's time per record

    def learn(self, own: int, own_seconds: float, child: int, child_seconds: float) -> None:
        if own > 0 and child > 0 and own_seconds > 0 and child_seconds > 0:
            self.own_s, self.child_s = own_seconds / own, child_seconds / child

    def child_count(self, changes: int, fresh: int) -> int:
        share = 0.5
        if self.own_s is not None and self.child_s is not None:
            share = self.own_s / (self.own_s + self.child_s)
        # Never all of them (the indexer's own segment is written meanwhile) nor few.
        return max(1, min(fresh, round(changes * min(max(share, 0.25), 0.75))))


class NotARecord(ValueError):
    """A record event's payload held no record (the indexer re-reads such a patient)."""


class SharedSegment:
    """New records' documents written into one segment of the generation at ``path`` by a
    forked child (the indexer holds the index's lock; the child writes unlocked, as a
    rebuild's share does), for the indexer to name in its own commit. ``seconds``: what
    the child took, once its segment is in."""

    def __init__(self, path: Path, changes: Sequence[tuple[str, Change]]):
        self.path = path
        self.ids = frozenset(patient_id for patient_id, _ in changes)
        self.started = self.seconds = 0.0
        context = multiprocessing.get_context("fork")
        self._messages: Any = context.Queue()
        self._child = context.Process(target=_write_share, name="search-index-catch-up",
                                      args=(path, [c for _, c in changes], self._messages),
                                      daemon=True)

    def start(self) -> SharedSegment:
        self.started = time.perf_counter()
        self._child.start()
        return self

    def segments(self) -> list[Any]:
        """The child's segment (none if it had nothing to write); IndexBuildFailed when it
        failed or died."""
        try:
            while True:
                try:
                    kind, seconds, value = self._messages.get(timeout=1.0)
                except queue.Empty:
                    if self._child.exitcode not in (None, 0):
                        raise IndexBuildFailed(f"{self._child.name} exited "
                                               f"{self._child.exitcode} without its segment"
                                               ) from None
                    continue
                if kind == "error":
                    raise IndexBuildFailed(f"{self._child.name} failed: {value}")
                self.seconds = seconds
                return [value] if value is not None else []
        finally:
            self.stop()

    def stop(self) -> None:
        if self._child.is_alive():
            self._child.terminate()
        self._child.join()
        self._messages.close()


def _write_share(path: Path, changes: list[Change], messages: Any) -> None:
    """A child's body: the documents of ``changes``' records into one new segment;
    ("done", seconds taken, segment) or ("error", 0, type) and exit 1 (NotARecord when an
    event's text held no record: the indexer then does the step alone, re-reading it)."""
    started = time.perf_counter()
    try:
        detach_forked_child(path.parent)
        writer = segment_writer(IndexDirectory.open_index(path), limitmb=STEP_POOL_MB,
                                locked=False)
        for done, change in enumerate(changes, 1):
            record = change.document_record()
            if record is None:
                raise NotARecord
            writer.add_document(**document(record))
            if done % REBUILD_PAGE == 0:
                heap.settle(process_exits=True)
        # Not cancel() or _finish(): as in a rebuild's share (_index_share).
        segment = writer._finalize_segment() if changes else writer._close_segment()
        messages.put(("done", time.perf_counter() - started, segment))
    except BaseException as exc:
        # The type only: a message can quote patient data.
        messages.put(("error", 0, type(exc).__name__))
        raise SystemExit(1) from None
    finally:
        messages.close()
        messages.join_thread()


class Indexer:
    """Follows the change log into the index directory at ``root`` (when it holds the lock)."""

    def __init__(self, db: peewee.Database, root: Path, *, poll_interval: float = 0.2,
                 commit_interval: float | None = None, batch_size: int = BATCH_SIZE,
                 handlers: dict[str, Handler] | None = None, strict: bool = False,
                 standby: bool = False, rebuild_processes: int = 1,
                 catch_up_events: int = CATCH_UP_EVENTS):
        self._db = db
        self.directory = IndexDirectory(root)
        self.lock = WriterLock(root)
        # A worker's thread under mpi serve: writes only while no indexer process lives.
        self.standby = standby
        self.preferred = PreferredWriter(root)
        self.poll_interval = poll_interval
        # While records keep arriving: the shortest time from one commit's step to the next
        # (SEARCH_COMMIT_INTERVAL; None: the poll interval).
        self.commit_interval = poll_interval if commit_interval is None else commit_interval
        self.batch_size = batch_size
        self.catch_up_events = catch_up_events
        self._step_events = 0  # behind: the next step's events (growing to catch_up_events)
        # Processes a rebuild shares the records out to (PostgreSQL; see build_generation).
        self.rebuild_processes = rebuild_processes
        self.handlers = HANDLERS if handlers is None else handlers
        self.strict = strict  # an unknown event type is an error (tests), not a re-read
        self._opened: Opened | None = None
        self._rebuild_reason = IndexState.MISSING.value
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._merging: BackgroundMerge | None = None  # a merge beside the indexer
        self._merge_failed_at = float("-inf")
        self._share_failed_at = float("-inf")  # a step's child failed (then none for a while)
        self._shares = ShareSizes()
        self._backlog_unknown = True  # an index just opened: how far behind is it?
        self._changed_at = time.monotonic()  # the last step that applied changes (or start)

    @property
    def cursor(self) -> int | None:
        return self._opened.cursor if self._opened else None

    # --- one step ------------------------------------------------------------------------

    def step(self) -> int:
        """Do one unit of work if this object holds the writer lock.

        Returns the number of events applied (or patients indexed by a rebuild);
        0 when there was nothing to do or another process writes.
        """
        if self.standby and self.preferred.alive_elsewhere():
            if self.lock.held():  # the indexer process is back: hand the index over to it
                log.info("search indexer: handing the index back to the indexer process")
                self._close()
                self.lock.release()
            return 0
        if not self.lock.acquire():
            self._close()
            return 0
        opened = self._current()
        if opened is None:
            metrics.INDEX_REBUILDS.labels(self._rebuild_reason).inc()
            _, count, _ = build_generation(self._db, self.directory,
                                           processes=self.rebuild_processes)
            self._close()
            return max(count, 1)
        self._finish_merge(opened)
        with connection(self._db):
            if self._backlog_unknown:
                # An index opened far behind (a restart) starts with a backlog's step, not
                # a batch's: the first step of 500 events cost as much as 4,000 shared.
                self._backlog_unknown = False
                if ChangeRepository().backlog(opened.cursor)[0] > self.batch_size:
                    self._step_events = self.catch_up_events
            limit = max(self._step_events, self.batch_size)
            # Records' payloads as their JSON text: see Change.
            events = ChangeRepository().read(after=opened.cursor, limit=limit,
                                             undecoded=RECORD_EVENTS)
            if not events:
                self._step_events = 0
                return 0
            try:
                self._apply(opened, events, limit)
                self._changed_at = time.monotonic()
            except Exception:
                self._close()  # the next step checks the index again (and rebuilds it if bad)
                raise
        return len(events)

    def rebuild(self, *, progress: Callable[[int, int], None] | None = None
                ) -> tuple[Path, int, int]:
        """Build a new generation from the database beside the current one and publish it
        (``mpi reindex``); see :func:`build_generation`."""
        return build_generation(self._db, self.directory, progress=progress,
                                processes=self.rebuild_processes)

    def catch_up(self, max_steps: int = 10_000) -> None:
        """Step until the index has every committed event (tests and tools)."""
        for _ in range(max_steps):
            if self.step() == 0:
                return

    def _current(self) -> Opened | None:
        """The current generation, opened; None when it must be (re)built."""
        path = self.directory.current_path()
        if self._opened is not None and path == self._opened.path and path.is_dir():
            return self._opened
        self._close()
        checked = self.directory.check()
        if checked.state is not IndexState.OK:
            self._rebuild_reason = checked.state.value
            log.warning("search index %s (%s): rebuilding from the database",
                        checked.state.value, checked.reason,
                        extra={"index_state": checked.state.value})
            return None
        self._opened = checked.opened
        self._backlog_unknown = True
        return self._opened

    def _apply(self, opened: Opened, events: list[ChangeEvent], limit: int) -> None:
        started = time.perf_counter()
        net = changes_for(events, self.handlers, strict=self.strict)
        refetched = live_records(self._db, [pid for pid, c in net.items()
                                            if c.action == "refetch"])
        # A record created by an event of this step has no document yet: the index holds
        # what the events up to its cursor made (a rebuild: the records of a snapshot that
        # held every event up to its cursor and no later one, each record created in one
        # transaction with its event). Its look-up, one per segment, is skipped: a restarted
        # instance catching up on an import meets little else, and the look-ups were half
        # of its time at 1,000,000 records.
        new = {e.entity_id for e in events if e.event_type == EventType.PATIENT_CREATED}
        read = time.perf_counter()
        # The bulk build's writer: a step of a backlog writes thousands of documents, and
        # whoosh's own looked each posting's field length up in the lengths file.
        writer = segment_writer(opened.index, limitmb=STEP_POOL_MB, timeout=10)
        beside: SharedSegment | None = None
        try:
            beside = self._share_beside(opened, net, new)
            with writer.searcher() as searcher:
                for done, (patient_id, change) in enumerate(net.items(), 1):
                    if done % REBUILD_PAGE == 0:  # a backlog's step: as a rebuild's page
                        heap.settle()
                    if beside is not None and patient_id in beside.ids:
                        continue
                    record = None
                    if change.action == "refetch":
                        record = refetched.get(patient_id)
                    elif change.action == "upsert":
                        record = change.document_record()
                        if record is None:  # its event's text held no record: re-read it
                            record = live_records(self._db, [patient_id])[patient_id]
                    if record is None:
                        if patient_id not in new:
                            writer.delete_by_term("id", patient_id)
                        continue
                    if patient_id in new:
                        writer.add_document(**document(record))
                        continue
                    # One look-up of the record's document, then delete and add: whoosh's
                    # update_document would look it up again (and open a searcher to do
                    # so), which was 7 % of the indexer's time under a stream of creates.
                    docnum = searcher.document_number(id=patient_id)
                    if docnum is not None:
                        indexed = searcher.stored_fields(docnum)
                        if (change.action == "upsert"
                                and int(indexed.get("version") or 0)
                                > int(record.get("version") or 0)):
                            continue  # the index holds a newer version (after a rebuild)
                        writer.delete_document(docnum)
                    writer.add_document(**document(record))
            cursor = events[-1].id
            writer.update_document(**meta_document(cursor))
            own, extra, child_wait = None, [], 0.0
            if beside is not None:
                # This writer's segment is written while the child still writes its own
                # (after the child's, it was a third of a backlog step's time).
                own = writer._finalize_segment()
                waited = time.perf_counter()
                try:
                    extra = beside.segments()
                except IndexBuildFailed:
                    self._share_failed_at = time.monotonic()  # the next steps: alone
                    raise
                child_wait = time.perf_counter() - waited
                self._shares.learn(len(net) - len(beside.ids), waited - beside.started,
                                   len(beside.ids), beside.seconds)
        except BaseException:
            writer.cancel()
            if beside is not None:
                beside.stop()
            heap.thaw()  # (nothing to end unless this step settled)
            raise
        built = time.perf_counter()
        segments = len(getattr(writer, "segments", ())) + 1 + len(extra)
        try:
            if own is not None:
                # As whoosh's own multi-process writer commits (whoosh.multiproc.MpWriter):
                # the index's segments, the child's and this writer's in one table of
                # contents.
                writer._commit_toc([*writer._merge_segments(None, False, False), *extra, own])
                writer._finish()
            else:
                writer.commit(merge=False)  # searchable now; merging is the next commit's
        finally:
            heap.thaw()
        committed = time.perf_counter()
        self._opened = Opened(opened.path, opened.index, cursor)
        metrics.INDEX_APPLIED.inc(len(events))
        # Behind (a full batch: more events wait), the next step reads catch_up_events.
        # Doubling from BATCH_SIZE instead cost a backlog of 20,000 records (40,002 events)
        # four small steps, three of them too small to share, and a fifth of its time.
        behind = len(events) >= limit
        self._step_events = max(self.catch_up_events, self.batch_size) if behind else 0
        if segments >= MERGE_FACTOR:
            # Behind, only beside the indexer: a merge here would hold the backlog.
            self._merge_step(opened, inline=not behind)
        merged = time.perf_counter()
        lag_ms = None
        occurred = events[-1].occurred_at
        if occurred is not None:
            from datetime import UTC, datetime

            lag_ms = round((datetime.now(UTC).replace(tzinfo=None) - occurred)
                           .total_seconds() * 1000, 1)
        timings = {"patients": len(net), "refetched": len(refetched), "segments": segments,
                   "read_ms": round((read - started) * 1000, 1),
                   "documents_ms": round((built - read) * 1000, 1),
                   # of which waiting for the child's segment (a shared step)
                   "child_wait_ms": round(child_wait * 1000, 1),
                   "commit_ms": round((committed - built) * 1000, 1),
                   "merge_ms": round((merged - committed) * 1000, 1)}
        log.debug("search index: %d events through %d (%s)", len(events), cursor,
                  " ".join(f"{k}={v}" for k, v in timings.items()),
                  extra={"events": len(events), "cursor": cursor, "lag_ms": lag_ms, **timings})

    def _share_beside(self, opened: Opened, net: dict[str, Change], new: set[str]
                      ) -> SharedSegment | None:
        """Some of the step's new records written into a segment by a child process, when
        the step has CATCH_UP_SHARE_FROM or more of them (a backlog) and rebuilds run in
        several processes: whoosh is pure Python, and one process catching up left the
        other core idle. The child gets the records whose event carried them (it decodes
        them), as many as keep both processes busy to the end (:class:`ShareSizes`). A
        worker's standby thread never forks (its process serves requests); after a child
        failed, steps run in this process alone for MERGE_RETRY_S."""
        if (self.standby or self.rebuild_processes < 2
                or time.monotonic() - self._share_failed_at < MERGE_RETRY_S):
            return None
        fresh = [(patient_id, change) for patient_id, change in net.items()
                 if patient_id in new and change.action == "upsert"]
        if len(fresh) < CATCH_UP_SHARE_FROM:
            return None
        count = self._shares.child_count(len(net), len(fresh))
        return SharedSegment(opened.path, fresh[len(fresh) - count:]).start()

    def compact(self, *, wait: bool = False) -> bool:
        """Start merging segments beside the indexer when there are COMPACT_AT_SEGMENTS or
        more, or small ones once no change has come for QUIET_COMPACT_S
        (:func:`compaction_plan`; call it when idle); ``wait``: also wait for the merge and
        put it in the index.

        A step merges at most STEP_MERGE_DOCS documents, so under steady writes segments
        of the levels above pile up; this brings their number down. True when it started
        a merge (False while one runs).
        """
        opened = self._opened
        if opened is None or not self.lock.held() or self._merging is not None:
            return False
        quiet = time.monotonic() - self._changed_at >= QUIET_COMPACT_S
        chosen = _picked(partial(compaction_plan, quiet=quiet), opened.index._segments())
        if not chosen or not self._start_merge(opened, chosen):
            return False
        if wait and self._merging is not None:
            self._merging.wait()
            self._finish_merge(opened)
        return True

    def _merge_step(self, opened: Opened, *, inline: bool = True) -> None:
        """After a commit: merge a full level of segments (:func:`merge_plan`), here if it
        is small (INLINE_MERGE_DOCS) and ``inline``, else beside the indexer (one such
        merge at a time)."""
        busy = self._merging.ids if self._merging is not None else frozenset()
        chosen = _picked(merge_plan, opened.index._segments(), busy)
        if not chosen:
            return
        if sum(s.doc_count_all() for s in chosen) <= INLINE_MERGE_DOCS:
            if inline:
                _commit_merge(opened.index, _policy(merge_plan, busy))
        elif self._merging is None:
            self._start_merge(opened, chosen)

    def _start_merge(self, opened: Opened, segments: list[Any]) -> bool:
        if time.monotonic() - self._merge_failed_at < MERGE_RETRY_S:
            return False
        self.directory.discard_stale_merges()  # none of ours runs: any staging is left over
        try:
            self._merging = BackgroundMerge(opened.path, segments).start()
        except Exception:
            self._merge_failed_at = time.monotonic()  # not again at every idle poll
            raise
        return True

    def _finish_merge(self, opened: Opened) -> None:
        """Put a finished merge beside the indexer into the index (holding the lock)."""
        merge = self._merging
        if merge is None or not merge.done():
            return
        self._merging = None
        if merge.generation != opened.path:
            merge.discard()
            return
        try:
            merge.install(opened.index)
        except Exception as exc:
            self._merge_failed_at = time.monotonic()
            # The type only (a MergeFailed says the child's error type or exit code).
            why = f"{type(exc).__name__}: {exc}" if isinstance(exc, MergeFailed) \
                else type(exc).__name__
            log.warning("search index merge failed: %s", why, extra={"error": why})

    # --- verification ---------------------------------------------------------------------

    def verify(self) -> str | None:
        """What is wrong with the current generation, or None when it reads back the
        database (also None when it cannot be judged now: not the writer, or behind)."""
        opened = self._opened
        if opened is None or not self.lock.held():
            return None
        with connection(self._db), snapshot(self._db):
            if ChangeRepository().last_id() != opened.cursor:
                return None  # changes to apply first; judged when caught up
            live = _count(self._db)
            repository = PatientRepository()
            sample = repository.get_live_many(
                repository.sample_live_ids(VERIFY_SAMPLE, random.randint))
        try:
            with opened.index.searcher() as searcher:
                indexed = searcher.doc_count() - 1  # less the cursor document
                if indexed != live:
                    return f"{indexed} documents for {live} live records"
                for patient in sample.values():
                    wrong = _reads_back(searcher, document(patient.to_dict()))
                    if wrong:
                        return wrong
        except Exception as exc:  # any failure to read it is damage
            return f"unreadable ({type(exc).__name__})"
        return None

    def verify_and_repair(self) -> bool:
        """:meth:`verify`, and rebuild when it finds damage; True when it rebuilt."""
        wrong = self.verify()
        if wrong is None:
            return False
        # The reason names counts and field names only, never a record's content.
        log.warning("search index damaged (%s): rebuilding from the database", wrong,
                    extra={"index_state": "damaged"})
        self._close()
        metrics.INDEX_REBUILDS.labels("damaged").inc()
        build_generation(self._db, self.directory, processes=self.rebuild_processes)
        return True

    def _close(self) -> None:
        if self._merging is not None:
            self._merging.discard()
            self._merging = None
        if self._opened is not None:
            self._opened.index.close()
            self._opened = None

    # --- the background thread -------------------------------------------------------------

    def start(self) -> Indexer:
        """Run :meth:`run` in a daemon thread (one per worker process)."""
        self._thread = threading.Thread(target=self.run, name="search-indexer", daemon=True)
        self._thread.start()
        return self

    def request_stop(self) -> None:
        """Make :meth:`run` return after its current step (safe from a signal handler)."""
        self._stop.set()

    def stop(self, timeout: float = 5) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                # Still in a step (a rebuild, a merge): the thread closes the index and
                # releases the lock itself when the step ends. Releasing here would let
                # another process write while this one still does, and close the lock's
                # file descriptor under the thread.
                log.warning("search indexer still busy after %.0f s; it stops after its "
                            "current step", timeout)
                return
        self._close()
        self.lock.release()

    def run(self) -> None:
        backoff = self.poll_interval
        was_writer = False
        verified = float("-inf")  # verify when first idle: it may be damaged at start
        self.directory.discard_stale_builds()
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                done = self.step()
                backoff = self.poll_interval
            except Exception as exc:
                # Types only: a database error message can quote patient data.
                log.warning("search indexer step failed: %s", type(exc).__name__,
                            extra={"error": type(exc).__name__})
                self._close()
                done = 0
                backoff = min(max(backoff * 2, 0.5), 5.0)
            if self.lock.held() != was_writer:
                was_writer = self.lock.held()
                log.info("search indexer: %s", "this process writes the index" if was_writer
                         else "another process writes the index",
                         extra={"writer": was_writer})
            if done >= self.batch_size:
                continue  # a backlog: no pause while catching up
            if done:
                # At most one commit per commit interval while records keep arriving: a
                # commit has a fixed cost (a new segment, merging small ones, readers
                # re-opened in every worker) that many small ones would pay over and over,
                # starving the service and the indexer alike. Measured under a stream of
                # creates on two cores: a commit every 0.2 s cost the indexer 8.3 ms of CPU
                # per record, one every second 2.2 ms. A write after a quiet spell is still
                # indexed at the next poll.
                pause = max(self.poll_interval, self.commit_interval)
                self._stop.wait(max(0.0, pause - (time.monotonic() - started)))
                continue
            if self.lock.held():
                try:
                    if self.compact():
                        continue
                except Exception as exc:
                    log.warning("search index compaction failed: %s", type(exc).__name__,
                                extra={"error": type(exc).__name__})
                if time.monotonic() - verified >= VERIFY_EVERY_S:
                    verified = time.monotonic()
                    try:
                        if self.verify_and_repair():
                            continue
                    except Exception as exc:
                        log.warning("search index verification failed: %s",
                                    type(exc).__name__, extra={"error": type(exc).__name__})
            self._stop.wait(backoff if self.lock.held() else max(backoff, 1.0))
        self._close()
        self.lock.release()
