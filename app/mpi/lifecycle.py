"""Processes that outlive their parent: notice it, and go.

When the gunicorn master is killed without running its exit hooks (``kill -9``, the OOM
killer), its children are re-parented and nothing tells them. A sync worker would notice
only when its wait for a connection times out (half of REQUEST_TIMEOUT: 15 s by default),
serving and holding the port all that while, so an immediate restart could not bind it.
Each child (the workers, the indexer process) watches its parent from a thread instead,
and acts within ``every_s`` of the parent going.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable

WATCH_EVERY_S = 0.25


def when_orphaned(action: Callable[[], None], every_s: float = WATCH_EVERY_S) -> None:
    """Run ``action`` (once, in a daemon thread) as soon as this process's parent is gone."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(every_s)
        action()

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()
