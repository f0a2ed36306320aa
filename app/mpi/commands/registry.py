"""``mpi import | export``: load a CSV through the online linking path; write the clusters.

Also the registry as ``mpi train``'s default record source (:func:`database_records`).

``import`` reads the standard CSV columns (see ``mpi.matching.csvio``), turns each row
into a patient record (source = the row's ``source`` or ``--source``, source_id = its
``record_id``) and registers it exactly as ``POST /api/v1/patients`` would, record by
record, committing every ``--batch`` records; on PostgreSQL two worker processes do it
(``--workers``), one inserting a batch's records while the other links the batch
before, each batch linked only once the one before is committed. A record whose
(source, record_id) is already live is skipped, so an interrupted import is resumed by
running it again.
Rows that are not valid records are reported by line and field (never by value) and
skipped; the exit status is then 1.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mpi.domain.patient import PatientInput
    from mpi.matching.csvio import BadValues
    from mpi.matching.record import MatchRecord

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_INPUT = 2
#: ``mpi import`` analyzes the tables it loads once this many records are in, then each
#: time the registry doubles past what the statistics know, and at its end: the planner
#: never works without statistics.
ANALYZE_FIRST = 1000
SSN_SYSTEM = "urn:oid:2.16.840.1.113883.4.1"


def register(commands: Any) -> None:
    imp = commands.add_parser("import", help="load a CSV through the online linking path")
    imp.add_argument("file", help="CSV with the standard columns (record_id, source, "
                                  "given_name, ..., ssn)")
    imp.add_argument("--map", help="column mapping for other layouts, e.g. "
                                   "given_name=first,family_name=surname")
    imp.add_argument("--source", default=None,
                     help="source for rows without a source column/value")
    imp.add_argument("--batch", type=int, default=200,
                     help="records per transaction (default 200)")
    imp.add_argument("--user", default="mpi-import", help="actor recorded in the audit log")
    imp.add_argument("--workers", type=int, default=None, metavar="N",
                     help="processes that insert and link batches, one batch's records "
                          "inserted while the batch before it is linked; each batch is "
                          "linked only once the one before it is committed, so the "
                          "decisions are those of one process (default: 2 on PostgreSQL, "
                          "1 on SQLite, which has one writer)")
    imp.add_argument("--no-progress", action="store_true", help="no progress bar")
    imp.add_argument("--metrics-port", type=int, default=None, metavar="PORT",
                     help="serve this import's Prometheus metrics (mpi_import_records_total, "
                          "records/s as its rate) on 127.0.0.1:PORT while it runs")
    imp.set_defaults(run=cmd_import)

    rekey = commands.add_parser(
        "rekey", help="recompute stored records' blocking keys with the current rules "
                      "(after an upgrade that changes them); resumable")
    _resumable(rekey, batch=1000)
    rekey.set_defaults(run=cmd_rekey)

    relink = commands.add_parser(
        "relink", help="decide stored records' persons again with the current model and "
                       "rules (after an upgrade or a new model); --dry-run first; resumable")
    relink.add_argument("--dry-run", action="store_true",
                        help="report what would change (counts and a sample), write nothing")
    relink.add_argument("--sample", type=int, default=10, metavar="N",
                        help="changes to list (default 10; 0: none)")
    _resumable(relink, batch=200)
    relink.set_defaults(run=cmd_relink)

    exp = commands.add_parser("export", help="write (source, record_id, person_id) of every "
                                             "live record")
    exp.add_argument("--clusters", required=True, metavar="FILE.csv", help="output file")
    exp.set_defaults(run=cmd_export)

    train = commands.choices.get("train")  # ``mpi train`` without --from-csv: the registry
    if train is not None:
        train.set_defaults(database_records=database_records)


def _resumable(parser: argparse.ArgumentParser, *, batch: int) -> None:
    """The options of a command that walks the stored records page by page (``_paged``)."""
    parser.add_argument("--batch", type=int, default=batch,
                        help=f"records per transaction (default {batch})")
    parser.add_argument("--after", type=int, default=0, metavar="PK",
                        help="resume after this record (the last one a run reported)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def database_records() -> Iterator[MatchRecord]:
    """Every live record of the registry (DATABASE_URL) in the matcher's form."""
    from mpi import config, wiring
    from mpi.identity.engine import to_match_record

    with wiring.connected(config.load()) as services:
        rows = services.persons.matching_forms()
    for patient_id, data in rows:
        if data:  # records linked before matching existed have no matching form yet
            yield to_match_record({**data, "record_id": str(patient_id)})


def to_patient_input(record: MatchRecord, *, default_source: str | None,
                     today: Any) -> PatientInput:
    """A CSV row's record as the API's input (validated like a POST body)."""
    from mpi.domain.patient import PatientInput

    given = [g for g in (record.given_name, record.middle_name) if g]
    body: dict[str, Any] = {
        "source": record.source or default_source,
        "source_id": record.record_id,
        "names": [{"use": "official", "family": record.family_name, "given": given}]
        if (record.family_name or given) else [],
    }
    if record.birth_date:
        body["birth_date"] = record.birth_date.isoformat()
    sex = (record.sex or "").strip().lower()
    if sex:
        body["gender"] = {"m": "male", "f": "female", "male": "male", "female": "female",
                          "o": "other", "other": "other", "u": "unknown"}.get(sex, "unknown")
    if any((record.address_line, record.city, record.state, record.postal_code)):
        body["addresses"] = [{k: v for k, v in (
            ("line", [record.address_line] if record.address_line else []),
            ("city", record.city), ("state", record.state),
            ("postal_code", record.postal_code)) if v}]
    if record.phone:
        body["telecom"] = [{"system": "phone", "value": record.phone}]
    idents = [{"system": s, "value": v} for s, v in record.identifiers]
    if record.ssn:
        idents.insert(0, {"system": SSN_SYSTEM, "value": record.ssn, "type": "SS"})
    if idents:
        body["identifiers"] = idents
    # Through JSON, exactly as an API body is validated (strict mode reads ISO dates there).
    return PatientInput.model_validate_json(json.dumps(body), context={"today": today})


Batch = tuple[list["PatientInput"], int, int, list[str], "BadValues"]

# Where a problem the API's validation finds in a CSV row's record comes from: dropping
# these CSV fields drops the bad value and keeps the record. (Names, source and record_id
# cannot be dropped: without them there is no record.)
_FROM_CSV: dict[str, tuple[str, ...]] = {
    "birth_date": ("birth_date",),
    "gender": ("sex",),
    "addresses": ("address_line", "city", "state", "postal_code"),
    "telecom": ("phone",),
    "identifiers": ("ssn",),
}


def salvage(record: MatchRecord, *, default_source: str | None, today: Any,
            bad: BadValues, line: int) -> PatientInput:
    """The record as the API's input, without the values the API refuses (each counted in
    ``bad``); raises ValidationError when what is wrong cannot be dropped."""
    import dataclasses

    from pydantic import ValidationError

    from mpi.domain.patient import problems_from

    try:
        return to_patient_input(record, default_source=default_source, today=today)
    except ValidationError as exc:
        problems = problems_from(exc)
        keys = {_top(p.field) for p in problems}
        if not keys <= set(_FROM_CSV):
            raise
        for p in problems:
            bad.drop(_top(p.field), line, p.reason)
        cleared: dict[str, Any] = {f: None for key in keys for f in _FROM_CSV[key]}
        return to_patient_input(dataclasses.replace(record, **cleared),
                                default_source=default_source, today=today)


def _top(field: str) -> str:
    """``addresses[0].postal_code`` -> ``addresses``."""
    return field.split(".", 1)[0].split("[", 1)[0]


def read_batches(path: str, mapping: str | None, default_source: str | None, today: Any,
                 size: int) -> Iterator[Batch]:
    """(valid records, rows read, rows rejected, problems, values dropped) per ``size``
    rows of the CSV. A bad value costs the record that value, not the record."""
    from pydantic import ValidationError

    from mpi.domain.patient import problems_from
    from mpi.matching.csvio import BadValues, parse_mapping, read_records

    batch: list[PatientInput] = []
    problems: list[str] = []
    bad = BadValues()
    rows = rejected = 0
    for n, record in enumerate(read_records(path, parse_mapping(mapping), bad=bad,
                                            today=today), start=2):
        rows += 1
        try:
            batch.append(salvage(record, default_source=default_source, today=today,
                                 bad=bad, line=n))
        except ValidationError as exc:
            rejected += 1
            problems += [f"{path}: line {n}: {p.field}: {p.reason}" for p in problems_from(exc)]
        if rows >= size:
            yield batch, rows, rejected, problems, bad
            batch, problems, rows, rejected, bad = [], [], 0, 0, BadValues()
    if rows:
        yield batch, rows, rejected, problems, bad


def _reader(queue: Any, *args: Any) -> None:
    """The reader process: batches into ``queue``, then None; or the input error."""
    from mpi.matching.csvio import CsvError

    try:
        for item in read_batches(*args):
            queue.put(item)
    except CsvError as exc:
        queue.put(exc)
        return
    except OSError as exc:  # the file cannot be opened or read: as the other commands say it
        why = "no such file" if isinstance(exc, FileNotFoundError) else exc.strerror
        queue.put(CsvError(f"error: {exc.filename or args[0]}: {why}"))
        return
    queue.put(None)


class BatchReader:
    """The CSV read and validated in a process of its own, a couple of batches ahead.

    A thread would share the GIL with the writing thread: each database answer and each
    system call there (a fresh UUID) would wait for the reader to let go of it, which cost
    more than the reading saved. A process reads on the other core and hands over the
    validated records (pickled)."""

    def __init__(self, *args: Any, ahead: int = 2) -> None:
        import multiprocessing

        context = multiprocessing.get_context("fork")
        self._queue = context.Queue(maxsize=ahead)
        self._process = context.Process(target=_reader, args=(self._queue, *args),
                                        name="mpi-import-reader", daemon=True)

    def __enter__(self) -> BatchReader:
        self._process.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._process.is_alive():
            self._process.terminate()
        self._process.join()
        self._queue.close()

    def __iter__(self) -> Iterator[Batch]:
        import queue

        while True:
            try:
                item = self._queue.get(timeout=1.0)
            except queue.Empty:
                if not self._process.is_alive() and self._queue.empty():
                    raise RuntimeError("the CSV reader process ended unexpectedly "
                                       f"(exit code {self._process.exitcode})") from None
                continue
            if item is None:
                return
            if isinstance(item, Exception):
                raise item
            yield item


def cmd_import(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from mpi import config, heap, logs, metrics, wiring
    from mpi.domain.audit import Actor
    from mpi.matching.csvio import BadValues, CsvError

    if args.batch < 1:
        print("--batch must be at least 1", file=sys.stderr)
        return EXIT_INPUT
    settings = config.load()
    logs.configure(settings)
    postgres = settings.database.kind == "postgresql"
    workers = args.workers if args.workers is not None else (2 if postgres else 1)
    if workers < 1 or (workers > 1 and not postgres):
        print("--workers must be at least 1, and 1 on SQLite (one writer at a time)",
              file=sys.stderr)
        return EXIT_INPUT
    if args.metrics_port is not None:
        import prometheus_client

        prometheus_client.start_http_server(args.metrics_port, addr="127.0.0.1")
    wiring.prepare(settings)
    actor = Actor(user_id=args.user, user_agent="mpi import")
    done = skipped = rejected = 0
    dropped = BadValues()
    started = time.perf_counter()
    # Workers are forked before this process opens a connection (they open their own).
    linker: _Linker = (_Workers(settings, actor, workers) if workers > 1
                       else _InProcess(settings, actor))
    try:
        with BatchReader(args.file, args.map, args.source, linker.today, args.batch
                         ) as reader, linker, tqdm(desc="import", unit="rec", file=sys.stderr,
                                                   disable=args.no_progress) as bar:
            def count(finished: list[tuple[int, int, int]]) -> None:
                nonlocal done, skipped
                for created, present, rows in finished:
                    done += created
                    skipped += present
                    metrics.IMPORTED.labels("created").inc(created)
                    metrics.IMPORTED.labels("skipped").inc(present)
                    bar.update(rows)

            for batch, rows, bad, problems, values in reader:
                for line in problems:
                    print(line, file=sys.stderr)
                rejected += bad
                metrics.IMPORTED.labels("rejected").inc(bad)
                dropped.merge(values)
                count(linker.submit(batch, rows))
            count(linker.finish())
    except CsvError as exc:
        print(exc, file=sys.stderr)
        return EXIT_INPUT
    except _WorkerFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        heap.thaw()  # (the import's freezing ends with it: a caller goes on)
    elapsed = time.perf_counter() - started
    rate = done / elapsed if elapsed > 0 else 0.0
    for line in dropped.summary(args.file):
        print(line, file=sys.stderr)
    print(f"imported {done} record(s), skipped {skipped} already present, rejected "
          f"{rejected}, in {elapsed:.1f} s ({rate:.0f} records/s)")
    return EXIT_FAILED if rejected else EXIT_OK


@dataclass(frozen=True)
class _Tally:
    """What an import's schedule of statistics goes by, passed from batch to batch: the
    live records before it, those it created, those the planner's statistics know of,
    and how many times the matching's value counts were taken since it began."""

    registry: int
    done: int = 0
    known: int = 0
    epoch: int = 0
    #: The value counts of this epoch, carried until every worker has them (``hops``
    #: more workers): counted again by each, the later ones would count later batches.
    counts: tuple[int, dict[str, dict[str, float]]] | None = None
    hops: int = 0


class _Batches:
    """One process's side of an import: its services, and the statistics' schedule.

    Matching weighs values by how common they are in the registry, as the service does
    (MATCHING_FREQUENCIES_REFRESH): counted at the start, and again each time the
    statistics are taken. Those are taken when the registry holds twice the rows the
    planner's statistics know of (none: at ANALYZE_FIRST), before the first batch too
    (rows loaded in bulk without statistics), and at the end. Counting the doubling from
    this run's records alone analyzed a 300,000-record registry five times in a
    10,000-record import: 6 of its 33 s."""

    def __init__(self, settings: Any, *, workers: int = 1) -> None:
        from mpi import wiring

        self.services = wiring.build(settings)
        self.workers = workers

    def start(self) -> _Tally:
        """The tally before the first batch (statistics taken if due)."""
        from mpi.storage.db import planned_rows
        from mpi.storage.identity import IdentityRepository

        db = self.services.db
        registry = (self.services.upkeep.refresh()
                    or IdentityRepository(db).live_linked_count())
        return self.analyzed_if_due(_Tally(registry, 0, planned_rows(db, "patient_link"),
                                           counts=self.services.upkeep.counted,
                                           hops=self.workers - 1))

    def analyzed_if_due(self, tally: _Tally) -> _Tally:
        """Outside a transaction (VACUUM runs in none)."""
        from mpi.storage.db import analyze
        from mpi.storage.models import LOOKUP_TABLES, REGISTRY_TABLES

        if tally.registry + tally.done < max(ANALYZE_FIRST, 2 * tally.known):
            return tally
        # later batches plan with statistics and read the look-up's indexes alone
        analyze(self.services.db, REGISTRY_TABLES, vacuum=LOOKUP_TABLES)
        if not tally.done:
            return replace(tally, known=tally.registry)
        self.services.upkeep.refresh()
        return replace(tally, known=tally.registry + tally.done, epoch=tally.epoch + 1,
                       counts=self.services.upkeep.counted, hops=self.workers - 1)

    def finish(self, tally: _Tally | None) -> None:
        """The statistics at the end (also of an interrupted import: it leaves rows too)."""
        from mpi.storage.db import analyze, connection
        from mpi.storage.models import LOOKUP_TABLES, REGISTRY_TABLES

        if tally is not None and tally.registry + tally.done > tally.known:
            with contextlib.suppress(Exception), connection(self.services.db):
                analyze(self.services.db, REGISTRY_TABLES, vacuum=LOOKUP_TABLES)

    def import_batch(self, batch: list[PatientInput], actor: Any,
                     before_linking: Callable[[], None] | None = None) -> tuple[int, int]:
        """(created, skipped) of one batch, in one transaction (the caller settles the
        heap after it: :func:`mpi.heap.settle`)."""
        results = self.services.patients.import_batch(batch, actor,
                                                      before_linking=before_linking)
        created = sum(r is not None for r in results)
        return created, len(results) - created


class _Linker:
    """Where ``mpi import`` sends its batches: (created, skipped, rows) of those finished."""

    today: Any

    def __enter__(self) -> _Linker:
        return self

    def __exit__(self, kind: type[BaseException] | None, *exc: object) -> None: ...

    def submit(self, batch: list[PatientInput], rows: int) -> list[tuple[int, int, int]]:
        raise NotImplementedError

    def finish(self) -> list[tuple[int, int, int]]:
        return []


class _InProcess(_Linker):
    """Batches inserted and linked in this process, one after the other."""

    def __init__(self, settings: Any, actor: Any) -> None:
        self._batches = _Batches(settings)
        self._actor = actor
        self.today = self._batches.services.patients.today()
        self._tally: _Tally | None = None
        self._connected: Any = None

    def __enter__(self) -> _InProcess:
        from mpi.storage.db import connection

        self._connected = connection(self._batches.services.db)
        self._connected.__enter__()
        try:
            self._tally = self._batches.start()
        except BaseException:
            self.__exit__(None)
            raise
        return self

    def submit(self, batch: list[PatientInput], rows: int) -> list[tuple[int, int, int]]:
        from mpi import heap

        assert self._tally is not None
        created = skipped = 0
        if batch:
            created, skipped = self._batches.import_batch(batch, self._actor)
            heap.settle()
        self._tally = self._batches.analyzed_if_due(
            replace(self._tally, done=self._tally.done + created))
        return [(created, skipped, rows)]

    def __exit__(self, kind: type[BaseException] | None, *exc: object) -> None:
        try:
            if self._connected is not None:
                self._connected.__exit__(None, None, None)
            self._batches.finish(self._tally)
        finally:
            self._batches.services.close()


def _import_worker(settings: Any, actor: Any, me: int, inbox: Any, turns: list[Any],
                   results: Any) -> None:
    """An import worker (``mpi import --workers``): batches ``(k, records)`` from ``inbox``
    until None, each in one transaction (:class:`_Turns`). What it did goes to
    ``results``; on a failure, the error's type alone (a message can quote patient
    data)."""
    from mpi.storage.db import connection

    try:
        turns_here = _Turns(_Batches(settings, workers=len(turns)), me, turns)
        with connection(turns_here.batches.services.db):
            while (job := inbox.get()) is not None:
                k, batch = job
                created, skipped, tally = turns_here.run(k, batch, actor)
                results.put(("done", k, created, skipped, tally))
    except BaseException as exc:
        results.put(("error", me, type(exc).__name__, None, None))
        raise SystemExit(1) from None
    finally:
        # The turn this worker passed last may be read by nobody (the import is over):
        # exiting must not wait to write it (a recount's value counts fill the pipe).
        for turn in turns:
            turn.cancel_join_thread()
        results.close()
        results.join_thread()


class _Turns:
    """One worker's batches. Its records are inserted at once; the batch is linked once
    this worker holds the turn, which the worker of the batch before passes on (with the
    tally) after committing that batch; it passes it to the next worker in turn after
    committing its own. So every batch is linked against everything before it, as in one
    process, while the next batch's records are being inserted."""

    def __init__(self, batches: _Batches, me: int, turns: list[Any]) -> None:
        self.batches = batches
        self._me, self._turns = me, turns
        self._epoch = -1  # the value counts' epoch this worker's engine has
        self._tally: _Tally | None = None  # the turn, while held

    def take(self) -> None:
        """Wait for the turn (once per batch; again when the unit of work is retried)."""
        if self._tally is None:
            self._tally = self._turns[self._me].get()
        if self._tally is not None and self._tally.epoch != self._epoch:
            # counted again since this worker's last batch: those counts, as one process
            # would have them
            upkeep = self.batches.services.upkeep
            if self._tally.counts is not None:
                upkeep.adopt(*self._tally.counts)
            else:  # (counting disabled, MATCHING_FREQUENCIES_REFRESH=0)
                upkeep.refresh()
            self._epoch = self._tally.epoch

    def run(self, k: int, batch: list[PatientInput], actor: Any) -> tuple[int, int, _Tally]:
        from mpi import heap

        if k == 0:  # the import's first batch: the counts and statistics before it
            self._turns[self._me].get()
            self._tally = self.batches.start()
            self._epoch = self._tally.epoch
        created, skipped = self.batches.import_batch(batch, actor, self.take)
        self.take()  # (held already, unless the batch reached no linking)
        assert self._tally is not None
        tally = self.batches.analyzed_if_due(replace(self._tally,
                                                     done=self._tally.done + created))
        if tally.epoch != self._tally.epoch:  # this worker counted them again
            self._epoch = tally.epoch
        elif tally.hops:
            tally = replace(tally, hops=tally.hops - 1)
        else:
            tally = replace(tally, counts=None)
        self._tally = None
        self._turns[(self._me + 1) % len(self._turns)].put(tally)
        heap.settle()  # (once the next batch may go on)
        return created, skipped, replace(tally, counts=None)


class _WorkerFailed(RuntimeError):
    """An import worker failed or died."""

    @classmethod
    def of(cls, worker: int, error: str) -> _WorkerFailed:
        return cls(f"import worker {worker} failed ({error}); batches committed before "
                   "stay, and a new run skips them")


class _Workers(_Linker):
    """Batches inserted and linked by ``count`` forked workers (:func:`_import_worker`),
    batch ``k`` by worker ``k % count``; this process reads, counts and reports."""

    def __init__(self, settings: Any, actor: Any, count: int) -> None:
        import multiprocessing

        context = multiprocessing.get_context("fork")
        # This process's services open no connection before the workers are forked: the
        # date of the service's clock now, the statistics at the end.
        self._batches = _Batches(settings)
        self.today = self._batches.services.patients.today()
        self._inboxes = [context.Queue(maxsize=1) for _ in range(count)]
        self._turns = [context.Queue() for _ in range(count)]
        self._results = context.Queue()
        self._processes = [context.Process(
            target=_import_worker, name=f"mpi-import-{n}", daemon=True,
            args=(settings, actor, n, self._inboxes[n], self._turns, self._results))
            for n in range(count)]
        self._rows: dict[int, int] = {}
        self._sent = 0
        self._tally: _Tally | None = None

    def __enter__(self) -> _Workers:
        for process in self._processes:
            process.start()
        self._turns[0].put(None)  # the first batch's turn
        return self

    def submit(self, batch: list[PatientInput], rows: int) -> list[tuple[int, int, int]]:
        if not batch:
            return [(0, 0, rows)]
        k, self._sent = self._sent, self._sent + 1
        self._rows[k] = rows
        finished = self._put(k % len(self._inboxes), (k, batch))
        return finished + self._collect(wait=False)

    def _put(self, worker: int, item: Any) -> list[tuple[int, int, int]]:
        """``item`` into the worker's inbox once it has room (what finishes meanwhile)."""
        import queue

        finished: list[tuple[int, int, int]] = []
        while True:
            try:
                self._inboxes[worker].put(item, timeout=0.5)
                return finished
            except queue.Full:
                finished += self._collect(wait=False)
                self._check_alive()

    def finish(self) -> list[tuple[int, int, int]]:
        finished: list[tuple[int, int, int]] = []
        for worker in range(len(self._inboxes)):
            finished += self._put(worker, None)
        while self._rows:
            finished += self._collect(wait=True)
        for process in self._processes:
            process.join()
        return finished

    def _collect(self, *, wait: bool) -> list[tuple[int, int, int]]:
        import queue

        finished: list[tuple[int, int, int]] = []
        while True:
            try:
                kind, k, created, skipped, tally = self._results.get(timeout=0.5 if wait
                                                                     else 0.0001)
            except queue.Empty:
                if not wait or finished:
                    return finished
                self._check_alive()
                continue
            if kind == "error":
                raise _WorkerFailed.of(k, created)
            finished.append((created, skipped, self._rows.pop(k)))
            if self._tally is None or tally.done >= self._tally.done:
                self._tally = tally

    def _check_alive(self) -> None:
        for process in self._processes:
            if process.exitcode not in (None, 0):
                self._collect_errors()
                raise _WorkerFailed(f"{process.name} exited {process.exitcode}")

    def _collect_errors(self) -> None:
        import queue

        with contextlib.suppress(queue.Empty):
            while True:
                kind, k, name, _, _ = self._results.get(timeout=0.1)
                if kind == "error":
                    raise _WorkerFailed.of(k, name)

    def __exit__(self, kind: type[BaseException] | None, *exc: object) -> None:
        if kind is not None and not issubclass(kind, (KeyboardInterrupt, _WorkerFailed)):
            # A malformed line further on: the batches before it are committed, as one
            # process commits them before it reads on.
            with contextlib.suppress(Exception):
                self.finish()
        for process in self._processes:
            if process.is_alive():
                process.terminate()
            process.join()
        for channel in [*self._inboxes, *self._turns, self._results]:
            channel.cancel_join_thread()  # (what no worker will read is dropped)
            channel.close()
        try:
            self._batches.finish(self._tally)
        finally:
            self._batches.services.close()


def _paged(command: str, total: int, fetch: Callable[[int], Any], *, after: int,
           no_progress: bool, each: Callable[[Any], None]) -> bool:
    """Run a resumable command page by page (``fetch(after)`` returns a page with
    ``last_pk`` and ``checked``; ``each`` sees every page) with a progress bar; False when
    interrupted, having printed where to resume."""
    from tqdm import tqdm

    last = after
    try:
        with tqdm(desc=command, unit="rec", total=total, file=sys.stderr,
                  disable=no_progress) as bar:
            while True:
                page = fetch(last)
                if page.last_pk is None:
                    return True
                each(page)
                last = page.last_pk
                bar.update(page.checked)
    except KeyboardInterrupt:
        print(f"interrupted: resume with mpi {command} --after {last}", file=sys.stderr)
        return False


def cmd_rekey(args: argparse.Namespace) -> int:
    from mpi import config, logs, wiring
    from mpi.domain.audit import Actor
    from mpi.identity.rekey import RekeyPage
    from mpi.storage.db import analyze
    from mpi.storage.models import BlockingKeyRow

    if args.batch < 1 or args.after < 0:
        print("--batch must be at least 1 and --after at least 0", file=sys.stderr)
        return EXIT_INPUT
    settings = config.load()
    logs.configure(settings)
    actor = Actor(user_id="mpi-rekey", user_agent="mpi rekey")
    counts = {"checked": 0, "changed": 0}
    started = time.perf_counter()

    def count(page: RekeyPage) -> None:
        counts["checked"] += page.checked
        counts["changed"] += page.changed

    with wiring.connected(settings) as services:
        rekeying = services.rekeying
        try:
            done = _paged("rekey", rekeying.total(),
                          lambda after: rekeying.page(after, args.batch, actor),
                          after=args.after, no_progress=args.no_progress, each=count)
        finally:
            if counts["changed"]:  # the blocking keys were rewritten
                with contextlib.suppress(Exception):
                    analyze(services.db, [BlockingKeyRow._meta.table_name])
    if not done:
        return EXIT_FAILED
    print(f"checked {counts['checked']} record(s), new keys for {counts['changed']}, in "
          f"{time.perf_counter() - started:.1f} s")
    return EXIT_OK


def cmd_relink(args: argparse.Namespace) -> int:
    from collections import Counter

    from mpi import config, logs, wiring
    from mpi.domain.audit import Actor
    from mpi.identity.relink import RelinkChange, RelinkPage

    if args.batch < 1 or args.after < 0 or args.sample < 0:
        print("--batch must be at least 1, --after and --sample at least 0", file=sys.stderr)
        return EXIT_INPUT
    settings = config.load()
    logs.configure(settings)
    actor = Actor(user_id="mpi-relink", user_agent="mpi relink")
    counts: Counter[str] = Counter()
    sample: list[RelinkChange] = []
    started = time.perf_counter()

    def count(page: RelinkPage) -> None:
        counts["checked"] += page.checked
        counts["kept"] += page.kept
        for change in page.changes:
            counts[change.how] += 1
            counts["merged"] += len(change.merged)
        sample.extend(page.changes[:max(args.sample - len(sample), 0)])

    with wiring.connected(settings) as services:
        services.upkeep.refresh()  # decided with the registry's frequencies, as online
        relinking = services.relinking
        if not _paged("relink", relinking.total(),
                      lambda after: relinking.page(after, args.batch, actor,
                                                   dry_run=args.dry_run),
                      after=args.after, no_progress=args.no_progress, each=count):
            return EXIT_FAILED
    checked, kept = counts["checked"], counts["kept"]
    verb = "would move" if args.dry_run else "moved"
    print(f"checked {checked} record(s) ({kept} placed by a steward, left as they are): "
          f"{verb} {counts['auto']} to another person, {counts['new']} to a person of "
          f"their own; {'would merge' if args.dry_run else 'merged'} {counts['merged']} "
          f"person(s); in {time.perf_counter() - started:.1f} s"
          + (" (dry run: nothing written)" if args.dry_run else ""))
    for c in sample:  # ids and scores only: nothing of the record
        score = f" p={c.probability:.4f}" if c.probability is not None else ""
        merged = f", merging {', '.join(c.merged)}" if c.merged else ""
        print(f"  {c.patient_id}: {c.from_person} -> {c.to_person} ({c.how}{score}{merged})")
    return EXIT_OK


def cmd_export(args: argparse.Namespace) -> int:
    from mpi import config, wiring
    from mpi.matching.csvio import write_rows

    with wiring.connected(config.load()) as services:
        out = services.persons.clusters()
    write_rows(args.clusters, ("source", "record_id", "person_id"), out)
    print(f"wrote {len(out)} record(s) in {len({p for _, _, p in out})} person(s) to "
          f"{args.clusters}")
    return EXIT_OK
