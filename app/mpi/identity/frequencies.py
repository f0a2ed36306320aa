"""How common each name, city, state and postal code is in the registry, kept current.

The shipped, untrained model assumes a diverse registry: two records sharing a postal
code is strong evidence there. In a one-town registry everybody shares the city, state
and postal code, and a common family name is weak evidence anywhere. The engine lowers
an agreement's weight by the value's share of the registry's live records
(``mpi.matching.scoring``: registry frequencies only ever lower a weight), so the service
needs the current counts: :class:`RegistryFrequencies` reads them with one aggregate
statement (over at most 50,000 records: a larger registry is counted on a fixed spread of
its records and scaled up, so a count costs the same at a million) and hands them to the
engine, at start and then every
``MATCHING_FREQUENCIES_REFRESH`` seconds in a background thread of each serving process
(0: never; the model's weights alone), and ``mpi import`` refreshes them as the registry
grows. Decisions made before the first count (the first seconds after a start) use the
model's weights alone.
"""

from __future__ import annotations

import logging
import threading
import time

import peewee

from mpi.identity.engine import Engine
from mpi.storage.db import connection
from mpi.storage.identity import IdentityRepository
from mpi.storage.work import UnitOfWork

log = logging.getLogger(__name__)


class RegistryFrequencies:
    def __init__(self, work: UnitOfWork, db: peewee.Database, repo: IdentityRepository,
                 engine: Engine, *, interval: float):
        self._work = work
        self._db = db
        self._repo = repo
        self._engine = engine
        self.interval = interval
        self.refreshed_at: float | None = None  # time.monotonic() of the last count
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
        with connection(self._db), self._work.reading():
            total, counts = self._repo.value_counts(self._engine.frequency_fields)
        self._engine.use_frequencies(total, counts)
        self.refreshed_at = time.monotonic()
        log.info("registry frequencies counted over %d record(s) in %.2f s", total,
                 time.perf_counter() - started, extra={"records": total})
        return total

    def start(self) -> RegistryFrequencies:
        """Refresh now and every ``interval`` seconds, in a daemon thread."""
        if self.enabled and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="registry-frequencies",
                                            daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 5) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _run(self) -> None:
        wait = 0.0
        while not self._stop.wait(wait):
            try:
                self.refresh()
                wait = self.interval
            except Exception as exc:  # the database is away: the last counts stay
                wait = min(self.interval, 30.0)
                log.warning("registry frequencies not counted (%s); trying again in %.0f s",
                            type(exc).__name__, wait)
