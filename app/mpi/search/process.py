"""The indexer's own process under ``mpi serve``: it writes the index, workers only search.

An indexer thread inside a request-serving worker shares that worker's GIL: under
write load the requests starve the indexer (and the indexer slows that worker's
requests). So the gunicorn master forks one indexer process when it is ready,
before it forks the workers, and waits until that process holds the index
directory's writer lock; the workers' indexer threads then stand by, and take over
only while no indexer process lives. If it dies, the master forks another (``revive``,
from its loop) and the worker thread that took over hands the lock back to it. One
writer per directory is still the lock's job, not this module's.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import time
from collections.abc import Callable
from typing import Protocol

from mpi.lifecycle import when_orphaned
from mpi.search.indexer import Indexer

log = logging.getLogger("mpi.search")

READY_TIMEOUT_S = 10.0
#: Pause before forking a new indexer process after one died: doubled each time one dies
#: within REVIVE_MAX_PAUSE_S of its start, up to that.
REVIVE_FIRST_PAUSE_S = 1.0
REVIVE_MAX_PAUSE_S = 60.0
STOP_TIMEOUT_S = 10.0


class IndexerServices(Protocol):
    """What the process builds after the fork (``mpi.wiring.Services``)."""

    def indexer(self, *, standby: bool = False) -> Indexer: ...

    def close(self) -> None: ...


def _follow(build: Callable[[], IndexerServices], ready: Callable[[], None]) -> None:
    """The indexer process's body: take the writer lock, say so, follow the change log."""
    services = build()  # its own database pool, bound in this process
    indexer = services.indexer()
    # The master's handlers only queue signals for its own loop: stop on TERM/INT/QUIT,
    # and leave the rest (HUP reloads workers, TTIN/TTOU resize them) to the master.
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
        signal.signal(sig, lambda *_: indexer.request_stop())
    for sig in (signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2, signal.SIGTTIN, signal.SIGTTOU,
                signal.SIGWINCH, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_IGN if sig != signal.SIGCHLD else signal.SIG_DFL)
    when_orphaned(indexer.request_stop)  # the master killed without running on_exit
    indexer.preferred.claim()  # a worker's standby thread that took over hands back
    if indexer.lock.acquire():
        ready()
    try:
        indexer.run()
    finally:
        indexer.stop(timeout=0)
        with contextlib.suppress(Exception):
            services.close()


class IndexerProcess:
    """Forks :func:`_follow` from the calling process (the gunicorn master) and stops it.

    ``build`` runs in the child and gives it its services (``mpi.wiring.build`` for the
    settings). A bare ``os.fork``, not ``multiprocessing``: the workers the master forks
    later must not inherit a child registry that they would try to join at exit.
    """

    def __init__(self, build: Callable[[], IndexerServices]):
        self._build = build
        self.pid: int | None = None
        self._close_fds: tuple[int, ...] = ()
        self._started_at = 0.0
        self._pause = REVIVE_FIRST_PAUSE_S / 2  # doubled at the first death
        self._due = 0.0

    def revive(self) -> bool:
        """Called from the master's loop (about once a second): if the indexer process has
        died, fork another, without waiting for it (the master must not block). A process
        that dies young is revived after a pause that doubles, up to REVIVE_MAX_PAUSE_S.
        True when one was forked."""
        pid = self.pid
        if pid is None:
            return False  # not started, or stopped on purpose
        try:
            done, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:  # already reaped (gunicorn reaps every child)
            done, status = pid, None
        if not done:
            return False
        now = time.monotonic()
        if not self._due:
            lived = now - self._started_at
            self._pause = (REVIVE_FIRST_PAUSE_S if lived > REVIVE_MAX_PAUSE_S
                           else min(self._pause * 2, REVIVE_MAX_PAUSE_S))
            self._due = now + self._pause
            log.warning("search indexer process %d died (%s); another in %.0f s", pid,
                        "status unknown" if status is None else f"wait status {status}",
                        self._pause, extra={"indexer_pid": pid})
        if now < self._due:
            return False
        self._due = 0.0
        self.start(self._close_fds, wait=False)
        return True

    def start(self, close_fds: tuple[int, ...] = (), *, wait: bool = True) -> bool:
        """Fork the indexer; True when it holds the writer lock within READY_TIMEOUT_S
        (``wait=False``: do not wait, False)."""
        self._close_fds, self._started_at = close_fds, time.monotonic()
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: never returns
            code = 1
            try:
                os.close(read_end)
                for fd in close_fds:  # the master's listening sockets: it serves nothing
                    with contextlib.suppress(OSError):
                        os.close(fd)
                _follow(self._build, lambda: _signal_ready(write_end))
                code = 0
            except BaseException:
                log.exception("search indexer process failed")
            finally:
                os._exit(code)
        os.close(write_end)
        self.pid = pid
        if not wait:
            os.close(read_end)
            log.info("search indexer process %d started", pid, extra={"indexer_pid": pid})
            return False
        try:
            ready, _, _ = select.select([read_end], [], [], READY_TIMEOUT_S)
            held = bool(ready) and os.read(read_end, 1) == b"1"
        finally:
            os.close(read_end)
        log.info("search indexer process %d %s", pid,
                 "writes the index" if held else "does not hold the lock yet (a worker may)",
                 extra={"indexer_pid": pid, "writer": held})
        return held

    def stop(self) -> None:
        """SIGTERM, then wait for it (the master may already have reaped it)."""
        pid, self.pid = self.pid, None
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                return  # reaped elsewhere
            if done:
                return
            time.sleep(0.05)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)


def _signal_ready(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.write(fd, b"1")
        os.close(fd)
