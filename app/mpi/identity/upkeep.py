"""Keeping a serving process's matching current: the registry's value frequencies, and the
model file once it is retrained.

**How common each value is.** The shipped, untrained model assumes a diverse registry:
two records sharing a postal code is strong evidence there. In a one-town registry
everybody shares the city, state and postal code, and a common family name is weak
evidence anywhere. The engine lowers an agreement's weight by the value's share of the
registry's live records (``mpi.matching.scoring``: registry frequencies only ever lower a
weight), so the service needs the current counts: :meth:`MatchingUpkeep.refresh` reads
them with one aggregate statement (over at most 50,000 records: a larger registry is
counted on a fixed spread of its records and scaled up, so a count costs the same at a
million) and hands them to the engine, 5 to 10 s after start (not during it: counting in
every worker at once made ``mpi serve`` ready 0.24 s later at 20,000 records; each
process waits a random part of those seconds, so they do not count together) and then
every ``MATCHING_FREQUENCIES_REFRESH`` seconds (0: never; the model's weights alone).
``mpi import`` refreshes them as the registry grows. Decisions made before the first
count use the model's weights alone.

**A retrained model.** ``mpi train`` against the registry, run on a schedule (a systemd
timer, a Kubernetes CronJob: DEPLOY.md), writes a new model file in one rename; with
``MATCHING_MODEL_PATH`` naming that file, each serving process checks it every
``MODEL_CHECK_SECONDS`` and uses the new model from its next decision (its version is
recorded on every decision, as always). A file that does not load leaves the model in use
as it is, and says so in the log.

Both run in one background thread of each serving process (worker, MLLP listener).

**One count per instance.** Under ``mpi serve`` the processes share the counts through
a file in the instance's private run-time directory (``share``: the one its metrics are
kept in, made afresh at each start, readable by the service's user only). The first
process whose turn comes counts, under a lock on that file; the others wait for it and
read what it wrote, until the counts are half an interval old. Every process counting
for itself cost PostgreSQL 1.2 s each at 1,300,000 records (parsing 50,000 matching
forms), seven of them at once 5 to 10 s after each start and again every interval:
the first requests after a start waited behind them (match p99 250 ms).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import random
import tempfile
import threading
import time
from pathlib import Path

import peewee

from mpi.identity.engine import Engine
from mpi.storage.db import connection
from mpi.storage.identity import IdentityRepository
from mpi.storage.work import UnitOfWork

log = logging.getLogger(__name__)

#: How often a serving process looks at MATCHING_MODEL_PATH for a retrained model.
MODEL_CHECK_SECONDS = 30.0
#: How soon counting is tried again after the database did not answer.
RETRY_SECONDS = 30.0
#: When a serving process first counts: this long after it starts, plus up to as long again.
FIRST_COUNT_SECONDS = 5.0
#: The file an instance's processes share their counts in (in ``share``).
FREQUENCIES_FILE = "registry-frequencies.json"


class MatchingUpkeep:
    def __init__(self, work: UnitOfWork, db: peewee.Database, repo: IdentityRepository,
                 engine: Engine, *, interval: float,
                 model_check: float = MODEL_CHECK_SECONDS,
                 first_count: float | None = None, share: Path | None = None):
        self._work = work
        self.share = share  # a directory the instance's processes share (None: count alone)
        self._db = db
        self._repo = repo
        self._engine = engine
        self.interval = interval  # between counts; 0: never
        self.model_check = model_check
        self.first_count = (first_count if first_count is not None
                            else FIRST_COUNT_SECONDS * (1 + random.random()))
        self.refreshed_at: float | None = None  # time.monotonic() of the last count
        # The last counts given to the engine (total, counts): another process can adopt
        # them (``mpi import --workers``: every worker decides with the same counts).
        self.counted: tuple[int, dict[str, dict[str, float]]] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def enabled(self) -> bool:
        return self.interval > 0

    def refresh(self) -> int:
        """Count the values now and give them to the engine; the live records counted."""
        if not self.enabled:
            return 0
        started = time.perf_counter()
        if self.share is None:
            total, counts = self._count()
            how = "counted"
        else:
            total, counts, how = self._shared()
        self.adopt(total, counts)
        log.info("registry frequencies %s over %d record(s) in %.2f s", how, total,
                 time.perf_counter() - started, extra={"records": total})
        return total

    def adopt(self, total: int, counts: dict[str, dict[str, float]]) -> None:
        """Give the engine counts taken here or by another process (:attr:`counted`)."""
        self._engine.use_frequencies(total, counts)
        self.counted = (total, counts)
        self.refreshed_at = time.monotonic()

    def _count(self) -> tuple[int, dict[str, dict[str, float]]]:
        with connection(self._db), self._work.reading():
            return self._repo.value_counts(self._engine.frequency_fields)

    def _shared(self) -> tuple[int, dict[str, dict[str, float]], str]:
        """The counts another process of the instance made less than half an interval ago,
        or new ones, counted here and left for the others (under the file's lock: a
        process whose turn comes while one counts waits for its counts)."""
        assert self.share is not None
        path = self.share / FREQUENCIES_FILE
        try:
            lock = open(self.share / f"{FREQUENCIES_FILE}.lock", "a")  # noqa: SIM115
        except OSError:  # the directory is gone or not writable: count alone
            total, counts = self._count()
            return total, counts, "counted"
        with lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                kept = _read(path)
                if kept is not None and time.time() - kept[0] < self.interval / 2:
                    return kept[1], kept[2], "read (counted by another process)"
                total, counts = self._count()
                with contextlib.suppress(OSError):  # not kept: the others count themselves
                    _write(path, total, counts)
                return total, counts, "counted"
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def reload_model(self) -> str | None:
        """Use the model file again if it changed; the new version, or None."""
        try:
            version = self._engine.reload_model()
        except Exception as exc:  # a half-written or wrong file: keep the model in use
            log.warning("the matching model file does not load (%s: %s); still using %s",
                        type(exc).__name__, exc, self._engine.model_version)
            return None
        if version is not None:
            log.info("matching model %s in use from now on", version,
                     extra={"model_version": version})
        return version

    def start(self) -> MatchingUpkeep:
        """Count now and every ``interval`` seconds, and look for a retrained model every
        ``model_check`` seconds, in a daemon thread (only if there is anything to do)."""
        if self._thread is None and (self.enabled or self._engine.model_file is not None):
            self._stop.clear()  # (started again after a stop)
            self._thread = threading.Thread(target=self._run, name="matching-upkeep",
                                            daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 5) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _run(self) -> None:
        now = time.monotonic()
        count_at = now + self.first_count if self.enabled else float("inf")
        check_at = now + self.model_check if self._engine.model_file is not None \
            else float("inf")
        while not self._stop.wait(max(0.0, min(count_at, check_at) - time.monotonic())):
            now = time.monotonic()
            if now >= check_at:
                self.reload_model()
                check_at = now + self.model_check
            if now >= count_at:
                try:
                    self.refresh()
                    count_at = now + self.interval
                except Exception as exc:  # the database is away: the last counts stay
                    count_at = now + min(self.interval, RETRY_SECONDS)
                    log.warning("registry frequencies not counted (%s); trying again in "
                                "%.0f s", type(exc).__name__, count_at - now)


def _read(path: Path) -> tuple[float, int, dict[str, dict[str, float]]] | None:
    """(when counted, total, counts) from a file :func:`_write` wrote; None if there is
    none (or it does not read: it is counted again)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return float(data["counted_at"]), int(data["total"]), dict(data["counts"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write(path: Path, total: int, counts: dict[str, dict[str, float]]) -> None:
    """Whole or not at all (a rename), readable by the service's user only."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".frequencies-")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump({"counted_at": time.time(), "total": total, "counts": counts}, out)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
