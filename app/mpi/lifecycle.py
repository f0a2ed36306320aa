"""Processes that outlive their parent: notice it, and go.

When the gunicorn master is killed without running its exit hooks (``kill -9``, the OOM
killer), its children are re-parented and nothing tells them. A sync worker would notice
only when its wait for a connection times out (half of REQUEST_TIMEOUT: 15 s by default),
serving and holding the port all that while, so an immediate restart could not bind it.
Each child (the workers, the indexer process) watches its parent from a thread instead,
and acts within ``every_s`` of the parent going.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import threading
import time
from collections.abc import Callable

log = logging.getLogger("mpi.server")

WATCH_EVERY_S = 0.25
READY_TIMEOUT_S = 10.0
#: Pause before forking a new child process after one died: doubled each time one dies
#: within REVIVE_MAX_PAUSE_S of its start, up to that.
REVIVE_FIRST_PAUSE_S = 1.0
REVIVE_MAX_PAUSE_S = 60.0
STOP_TIMEOUT_S = 10.0


def lower_priority(niceness: int) -> None:
    """Add ``niceness`` to this process's (a request worker's, the MLLP listener's)
    niceness; 0 leaves it alone."""
    if niceness > 0:
        os.nice(niceness)


def when_orphaned(action: Callable[[], None], every_s: float = WATCH_EVERY_S) -> None:
    """Run ``action`` (once, in a daemon thread) as soon as this process's parent is gone."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(every_s)
        action()

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (a signal 0 reaches it, or would if we were allowed)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class ChildProcess:
    """A process the gunicorn master forks, stops, and forks again if it dies: the search
    indexer, the HL7 MLLP listener.

    ``body(ready)`` runs in the child (never returning until it should stop) and calls
    ``ready()`` once it serves. A bare ``os.fork``, not ``multiprocessing``: the workers the
    master forks later must not inherit a child registry that they would try to join at
    exit.
    """

    def __init__(self, body: Callable[[Callable[[], None]], None], name: str, *,
                 ready_words: tuple[str, str] = ("is ready", "is not ready yet")):
        self._body = body
        self.name = name
        self._ready_words = ready_words
        self.pid: int | None = None
        self._close_fds: tuple[int, ...] = ()
        self._started_at = 0.0
        self._pause = REVIVE_FIRST_PAUSE_S / 2  # doubled at the first death
        self._due = 0.0
        self._death = ""  # how the last one ended, for the log once it is replaced

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
            self._death = "status unknown" if status is None else f"wait status {status}"
        if now < self._due:
            return False
        # Said when the next one is forked, not when the death is seen: a stop that
        # signals the whole process group (Ctrl-C, a kill of the group) ends the children
        # a moment before the master, whose loop would otherwise report each as died and
        # about to be replaced while it is itself stopping.
        log.warning("%s process %d died (%s) %.0f s ago; starting another", self.name, pid,
                    self._death, now - self._due + self._pause, extra={"child_pid": pid})
        self._due = 0.0
        self.start(self._close_fds, wait=False)
        return True

    def start(self, close_fds: tuple[int, ...] = (), *, wait: bool = True) -> bool:
        """Fork the process; True when it is ready within READY_TIMEOUT_S (``wait=False``:
        do not wait, False)."""
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
                self._body(lambda: _signal_ready(write_end))
                code = 0
            except BaseException:
                log.exception("%s process failed", self.name)
            finally:
                os._exit(code)
        os.close(write_end)
        self.pid = pid
        if not wait:
            os.close(read_end)
            log.info("%s process %d started", self.name, pid, extra={"child_pid": pid})
            return False
        try:
            ready, _, _ = select.select([read_end], [], [], READY_TIMEOUT_S)
            held = bool(ready) and os.read(read_end, 1) == b"1"
        finally:
            os.close(read_end)
        log.info("%s process %d %s", self.name, pid, self._ready_words[0 if held else 1],
                 extra={"child_pid": pid, "ready": held})
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
