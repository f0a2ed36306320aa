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
import signal
from collections.abc import Callable
from typing import Protocol

from mpi.lifecycle import ChildProcess, when_orphaned
from mpi.search.indexer import Indexer

log = logging.getLogger("mpi.search")


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


class IndexerProcess(ChildProcess):
    """Forks :func:`_follow` from the calling process (the gunicorn master) and stops it;
    ready once it holds the index's writer lock. ``build`` runs in the child and gives it
    its services (``mpi.wiring.build`` for the settings)."""

    def __init__(self, build: Callable[[], IndexerServices]):
        super().__init__(lambda ready: _follow(build, ready), "search indexer",
                         ready_words=("writes the index",
                                      "does not hold the lock yet (a worker may)"))
