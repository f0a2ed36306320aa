"""``mpi serve``: gunicorn, run in-process from the package.

On SIGTERM gunicorn stops accepting, lets in-flight requests finish (up to
GRACEFUL_TIMEOUT) and exits 0. Workers build their own app, and so their own
connection pool, after the fork.
"""

from __future__ import annotations

from typing import Any

from gunicorn.app.base import BaseApplication

from mpi.config import Settings


def gunicorn_options(settings: Settings) -> dict[str, Any]:
    from mpi.logs import logging_config

    return {
        "bind": [f"{_bind_host(settings.server_host)}:{settings.server_port}"],
        "workers": settings.workers,
        "threads": settings.threads,
        "timeout": settings.request_timeout,
        "graceful_timeout": settings.graceful_timeout,
        "keepalive": 5,
        "accesslog": None,
        "errorlog": "-",
        "loglevel": settings.log_level.lower(),
        "logconfig_dict": logging_config(settings),
        "proc_name": "mpi",
        # Heartbeat files in memory, so a read-only root filesystem works.
        "worker_tmp_dir": SHM if _writable(SHM) else None,
        "forwarded_allow_ips": "127.0.0.1,::1",
        "control_socket_disable": True,
    }


SHM = "/dev/shm"  # noqa: S108 - gunicorn's documented heartbeat location, not a temp file


def _bind_host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def _writable(path: str) -> bool:
    import os

    return os.path.isdir(path) and os.access(path, os.W_OK)


class MPIServer(BaseApplication):  # type: ignore[misc]
    def __init__(self, settings: Settings):
        self._settings = settings
        super().__init__()

    def load_config(self) -> None:
        for key, value in gunicorn_options(self._settings).items():
            if value is not None and key in self.cfg.settings:
                self.cfg.set(key, value)

    def load(self) -> Any:
        from mpi.api.app import create_app

        # Each worker runs an indexer thread; the one holding the index's lock writes.
        return create_app(self._settings, run_indexer=True)


def serve(settings: Settings) -> None:
    MPIServer(settings).run()
