"""``mpi reindex``: rebuild the search index from the database, beside the live one, then swap."""

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

    from mpi import config, logs, wiring

    settings = config.load()
    logs.configure(settings)
    wiring.prepare(settings)
    services = wiring.build(settings)
    bar = tqdm(unit=" patients", disable=args.quiet, file=sys.stderr, dynamic_ncols=True)

    def progress(done: int, total: int) -> None:
        if bar.total != total:
            bar.total = total
        bar.update(done - bar.n)

    try:
        path, count, cursor = services.indexer().rebuild(progress=progress)
    finally:
        bar.close()
        services.close()
    print(f"indexed {count} patients through change-log event {cursor} into {path}")
    return 0
