"""``mpi reindex``: rebuild the search index from the database, beside the live one, then swap.

Registered from ``mpi.cli`` with :func:`register`. Imports only the standard
library until the command runs (``mpi healthcheck`` shares the parser).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any


def register(commands: Any) -> None:
    """Add ``reindex`` to the ``mpi`` command's subparsers."""
    reindex = commands.add_parser(
        "reindex", help="rebuild the search index from the database (no downtime)",
        description="Build a new search index generation from the database beside the one "
                    "in use, then switch readers to it atomically. The running service keeps "
                    "answering searches from the old generation until the switch and then "
                    "follows the change log from the new one.")
    reindex.add_argument("--quiet", action="store_true", help="no progress bar")
    reindex.set_defaults(run=cmd_reindex)


def cmd_reindex(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from mpi import config, logs
    from mpi.search.indexer import build_generation
    from mpi.search.store import IndexDirectory
    from mpi.storage.bootstrap import prepare_database
    from mpi.storage.db import database_proxy, make_database

    settings = config.load()
    logs.configure(settings)
    prepare_database(settings)
    db = make_database(settings)
    database_proxy.initialize(db)
    bar = tqdm(unit=" patients", disable=args.quiet, file=sys.stderr, dynamic_ncols=True)

    def progress(done: int, total: int) -> None:
        if bar.total != total:
            bar.total = total
        bar.update(done - bar.n)

    try:
        path, count, cursor = build_generation(db, IndexDirectory(settings.search_index_path),
                                               progress=progress)
    finally:
        bar.close()
        close_all = getattr(db, "close_all", None)
        if close_all is not None:
            close_all()
    print(f"indexed {count} patients through change-log event {cursor} into {path}")
    return 0
