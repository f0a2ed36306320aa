"""Read-audit rows written behind the reads, in batches (``AUDIT_READ_WINDOW``).

Written one by one, a record read's audit row was a round trip of its own and a
transaction of its own (an INSERT and its commit) after the read: 23 % of a read's time
under load (``GET /patients/{id}``, 4 clients: 1,500 req/s with it, 1,950 without it).
With a window, :meth:`ReadAudits.add` keeps the read's rows in this process and returns at
once; a thread of the process writes every row waiting, in ONE transaction, at most
``window`` seconds after the oldest arrived (sooner once :data:`BATCH` rows wait).

What is promised:

- **A clean shutdown loses nothing.** :meth:`ReadAudits.close` (``mpi serve``'s workers
  as they exit: SIGTERM, a worker restarted by gunicorn; a command's services as it
  ends) writes every waiting row before the process goes. No acknowledged read goes
  unaudited.
- **A crash loses at most the window.** A process killed outright (SIGKILL, the kernel's
  OOM killer, the machine's power) loses the rows of the reads it answered in the last
  ``window`` seconds.
- **A database that cannot take the rows stops the reads, not the audit.** Rows that
  could not be written wait and are tried again each window (nothing is dropped); once
  :data:`LIMIT` rows wait, :meth:`add` refuses more, and a read writes its own row before
  it answers, as without a window, so it fails with the database (503) instead of being
  answered unaudited.
- **The trail is complete for its reader's own process**: :meth:`flush` writes what
  waits before the audit trail is read (:mod:`mpi.audit.trail`); another process's reads
  show in the trail within the window.

Rows keep the time each read happened (``occurred_at``); their ids follow the order
they were written, so rows of two processes within one window may interleave out of
time order.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

log = logging.getLogger(__name__)

#: The waiting rows are written at once when this many wait (a burst of reads).
BATCH = 500
#: More waiting rows than this (the database failing to take them) and reads write their
#: own rows again (the module docstring).
LIMIT = 10_000
#: At shutdown, how often writing what waits is tried, and the pause between tries.
CLOSE_ATTEMPTS = 3
CLOSE_PAUSE_S = 1.0


class ReadAudits:
    """This process's read units whose audit rows wait to be written (module docstring).

    ``write(units)`` writes the rows of ``units`` (each a read's
    :class:`~mpi.storage.work.Transaction`) in one transaction, or raises.
    """

    def __init__(self, write: Callable[[Sequence[Any]], None], *, window: float,
                 batch: int = BATCH, limit: int = LIMIT):
        if window <= 0:
            raise ValueError("window must be > 0 seconds")
        self.window = window
        self._write = write
        self._batch = batch
        self._limit = limit
        self._waiting: list[Any] = []
        self._oldest = 0.0  # monotonic time the oldest waiting unit arrived
        self._changed = threading.Condition()
        self._writing = threading.Lock()  # one write at a time, so rows go in order
        self._thread: threading.Thread | None = None
        self._pid = 0
        self._closed = False

    def add(self, unit: Any) -> bool:
        """Keep ``unit``'s rows for the next write; False if :data:`LIMIT` rows already
        wait (or this is closed), and the caller must write them itself."""
        with self._changed:
            if self._closed or len(self._waiting) >= self._limit:
                return False
            if not self._waiting:
                self._oldest = time.monotonic()
            self._waiting.append(unit)
            if len(self._waiting) == 1 or len(self._waiting) >= self._batch:
                self._changed.notify()
            self._start()
        return True

    @property
    def waiting(self) -> int:
        """How many read units wait to be written."""
        return len(self._waiting)

    def flush(self) -> None:
        """Write every waiting unit now; raises what the write raised (they wait on)."""
        with self._writing:
            with self._changed:
                units, oldest, self._waiting = self._waiting, self._oldest, []
            if not units:
                return
            try:
                self._write(units)
            except BaseException:
                with self._changed:
                    if self._waiting:
                        oldest = min(oldest, self._oldest)
                    self._waiting[:0] = units
                    self._oldest = oldest
                raise

    def close(self) -> None:
        """Stop the writing thread and write what waits (tried :data:`CLOSE_ATTEMPTS`
        times); afterwards :meth:`add` refuses. A count, never a row, is logged if rows
        could not be written."""
        with self._changed:
            self._closed = True
            self._changed.notify()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()
        for attempt in range(1, CLOSE_ATTEMPTS + 1):
            try:
                self.flush()
                return
            except Exception as exc:
                if attempt == CLOSE_ATTEMPTS:
                    log.error("the audit rows of %d read(s) could not be written at "
                              "shutdown (%s)", len(self._waiting), type(exc).__name__)
                    return
                time.sleep(CLOSE_PAUSE_S)

    def _start(self) -> None:
        """The writing thread, started with the first row (in this process: after a fork
        the parent's thread is not here)."""
        if self._thread is not None and self._pid == os.getpid():
            return
        self._pid = os.getpid()
        self._thread = threading.Thread(target=self._run, name="mpi-read-audit", daemon=True)
        self._thread.start()

    def _due(self) -> bool:
        return bool(self._waiting) and (
            len(self._waiting) >= self._batch
            or time.monotonic() >= self._oldest + self.window)

    def _run(self) -> None:
        while True:
            with self._changed:
                while not self._closed and not self._due():
                    timeout = (self._oldest + self.window - time.monotonic()
                               if self._waiting else None)
                    self._changed.wait(timeout)
                if self._closed:
                    return  # close() writes what waits
            try:
                self.flush()
            except Exception as exc:
                # The database's message can carry the rows' values: its class only.
                log.warning("read-audit rows not written yet (%s); %d wait, tried again in "
                            "%.1f s", type(exc).__name__, len(self._waiting), self.window)
                with self._changed:
                    if not self._closed:
                        self._changed.wait(self.window)
