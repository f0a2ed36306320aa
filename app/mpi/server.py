"""``mpi serve``: gunicorn, run in-process from the package.

On SIGTERM gunicorn stops accepting, lets in-flight requests finish (up to
GRACEFUL_TIMEOUT) and exits 0. Workers build their own app, and so their own
connection pool, after the fork.

With HL7_MLLP_PORT set, the master also forks the HL7 v2 MLLP listener
(``mpi.hl7.listener``), supervised the same way.

The search index is written by a process of its own (``mpi.search.process``),
forked by the master once it is ready and before the workers; the master stops
it on exit, and forks another if it dies (from its loop, about a second later). The
workers' indexer threads stand by meanwhile and hand the index back, and each
worker lowers its own priority (SEARCH_WORKER_NICENESS) so that when requests
fill the CPU the indexer still gets it.

With an OTLP endpoint in the standard ``OTEL_*`` variables, each worker traces its
requests (``mpi.tracing``), set up after the fork.

Every process keeps its Prometheus metrics in a directory of this start under a tmpfs
(``mpi.metrics``), which any worker's ``GET /metrics`` reads whole; the master removes it
on exit.

If the master is killed outright (``kill -9``), its workers and the indexer process see
it within a quarter of a second (``mpi.lifecycle``) and stop, freeing the port for the
restart.
"""

from __future__ import annotations

import sys
from typing import Any

from gunicorn.app.base import BaseApplication
from gunicorn.glogging import Logger

from mpi import heap
from mpi.config import Settings
from mpi.lifecycle import lower_priority, when_orphaned


def gunicorn_options(settings: Settings) -> dict[str, Any]:
    from mpi.logs import logging_config

    tls = ({"certfile": str(settings.tls_cert_file), "keyfile": str(settings.tls_key_file)}
           if settings.tls_cert_file and settings.tls_key_file else {})
    return {
        **tls,
        "bind": [f"{_bind_host(settings.server_host)}:{settings.server_port}"],
        "workers": settings.workers,
        # Requests are read whole by each worker's event loop before a thread takes them,
        # so slow clients cost no thread (mpi.worker says why not sync, gthread, gevent).
        "worker_class": "mpi.worker.BufferingThreadWorker",
        "threads": settings.threads,
        "timeout": settings.request_timeout,
        "graceful_timeout": settings.graceful_timeout,
        "keepalive": 5,
        "accesslog": None,
        "logger_class": "mpi.server.NoAccessLogger",
        "errorlog": "-",
        "loglevel": settings.log_level.lower(),
        "logconfig_dict": logging_config(settings),
        "proc_name": "mpi",
        # Heartbeat files in memory, so a read-only root filesystem works.
        "worker_tmp_dir": SHM if _writable(SHM) else None,
        # X-Forwarded-Proto (https behind a TLS proxy: the pages' redirect URI and cookies)
        # is believed from loopback and from TRUSTED_PROXIES only.
        "forwarded_allow_ips": ",".join(["127.0.0.1", "::1",
                                         *(str(n) for n in settings.trusted_proxies)]),
        "control_socket_disable": True,
    }


class NoAccessLogger(Logger):
    """gunicorn's logger with its access log off for good: the service writes its own
    (``mpi.api.middleware.RequestContext``: the route template, never the path or query).
    gunicorn counts its access log as on whenever a ``logconfig_dict`` is given, and then
    built every request's log atoms (the environ and headers, a dict each) only for the
    ``gunicorn.access`` logger to drop them: 4 % of a read's CPU."""

    @property
    def access_log_enabled(self) -> bool:  # read by Logger.access before it builds atoms
        return False


SHM = "/dev/shm"  # noqa: S108 - gunicorn's documented heartbeat location, not a temp file


def _bind_host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def _writable(path: str) -> bool:
    import os

    return os.path.isdir(path) and os.access(path, os.W_OK)


class MPIServer(BaseApplication):  # type: ignore[misc]
    def __init__(self, settings: Settings):
        # The whole application's modules are imported here, in the master, once: the
        # indexer process and every worker are forked from it and start with them loaded
        # (about 0.7 s of imports each otherwise), sharing their pages until written.
        # Nothing is built here: no connection, no index, no app instance.
        import mpi.api.app  # noqa: F401
        from mpi import metrics, wiring
        from mpi.search.process import IndexerProcess

        self._settings = settings
        self._services: wiring.Services | None = None  # a worker's, once it loaded the app
        # Before any child exists: the directory every process keeps its metrics in.
        self.metrics_dir = metrics.start_multiprocess(SHM if _writable(SHM) else None)
        self.indexer = IndexerProcess(lambda: wiring.build(settings))
        # HL7_MLLP_PORT: the MLLP listener, HL7_MLLP_PROCESSES more children of the master
        # taking connections from one socket; it is bound here so that a port in use stops
        # the start, as SERVER_PORT's does.
        self.listeners: list[Any] = []
        self.mllp_socket = None
        if settings.hl7_mllp_port is not None:
            from mpi.hl7.listener import AcceptShare, ListenerProcess, bind

            self.mllp_socket = bind(settings)
            count = settings.hl7_mllp_processes
            share = AcceptShare(count) if count > 1 else None
            self.listeners = [
                ListenerProcess(settings, lambda: wiring.build(settings), self.mllp_socket,
                                name=f"HL7 MLLP listener {n + 1}/{count}" if count > 1
                                else "HL7 MLLP listener",
                                share=share.slot(n) if share is not None else None)
                for n in range(count)]
        # Last before the children are forked: what the master holds, out of their
        # collections (mpi.heap).
        heap.freeze_imported()
        super().__init__()

    def load_config(self) -> None:
        for key, value in gunicorn_options(self._settings).items():
            if value is not None and key in self.cfg.settings:
                self.cfg.set(key, value)
        self.cfg.set("when_ready", self._when_ready)
        self.cfg.set("post_fork", self._post_fork)
        self.cfg.set("on_exit", self._on_exit)
        self.cfg.set("child_exit", self._child_exit)
        self.cfg.set("worker_exit", self._worker_exit)

    def _when_ready(self, arbiter: Any) -> None:
        # Before the workers exist: the indexer process takes the writer lock first.
        http = tuple(s.fileno() for s in arbiter.LISTENERS)
        mllp = (self.mllp_socket.fileno(),) if self.mllp_socket is not None else ()
        self.indexer.start(close_fds=http + mllp)
        for listener in self.listeners:
            listener.start(close_fds=http)

    def _post_fork(self, arbiter: Any, worker: Any) -> None:
        # In each new worker: yield the CPU to the indexer process (no privilege needed).
        lower_priority(self._settings.search_worker_niceness)
        # The matching engine's cache of prepared records out of full collections.
        heap.hold_long_lived()
        if self.mllp_socket is not None:  # the MLLP socket is the listener processes' alone
            self.mllp_socket.close()
        when_orphaned(lambda: leave(self._settings.graceful_timeout))
        # OTEL_EXPORTER_OTLP_ENDPOINT: trace this worker's requests (set up after the fork,
        # before the worker builds its app).
        from mpi import tracing, version

        tracing.start(version())

    def _worker_exit(self, arbiter: Any, worker: Any) -> None:
        from mpi import tracing

        # After the worker's last request (SIGTERM, a restart): the reads' audit rows
        # that wait are written (AUDIT_READ_WINDOW).
        if self._services is not None:
            self._services.work.close()
        tracing.stop()  # export what the worker still holds

    def _child_exit(self, arbiter: Any, worker: Any) -> None:
        from mpi import metrics

        metrics.process_died(worker.pid)  # its gauges stop counting; its counters stay

    def _on_exit(self, arbiter: Any) -> None:
        from mpi import metrics

        self.indexer.stop()
        for listener in self.listeners:
            listener.stop()
        metrics.stop_multiprocess(self.metrics_dir)

    def run(self) -> None:
        """gunicorn's master loop, which also forks a new indexer process if it died."""
        from gunicorn.arbiter import Arbiter

        children = [self.indexer, *self.listeners]

        from mpi.worker import signals_held

        class MPIArbiter(Arbiter):  # type: ignore[misc]
            def spawn_worker(self) -> Any:
                with signals_held():
                    return super().spawn_worker()

            def manage_workers(self) -> None:
                super().manage_workers()
                for child in children:
                    child.revive()

        try:
            MPIArbiter(self).run()
        except RuntimeError as exc:  # as gunicorn's BaseApplication.run reports it
            print(f"\nError: {exc}\n", file=sys.stderr)
            sys.exit(1)

    def load(self) -> Any:
        from mpi import wiring
        from mpi.api.app import create_app

        # Each worker also runs an indexer thread: it stands by while the indexer process
        # holds the index's lock, and takes over if that process dies.
        self._services = wiring.build(self._settings)
        return create_app(self._services, run_indexer=True)


def leave(graceful_timeout: float) -> None:
    """A worker whose master is gone: stop as the master would have stopped it (SIGTERM:
    stop accepting, finish the request in hand, exit), and if that takes longer than
    GRACEFUL_TIMEOUT, exit at once, as the master would have made it."""
    import os
    import signal
    import time

    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(graceful_timeout)
    os._exit(1)


def serve(settings: Settings) -> None:
    MPIServer(settings).run()
