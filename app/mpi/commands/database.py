"""``mpi migrate [--status [--check]]``: apply (or list) the schema migrations."""

from __future__ import annotations

import argparse
from typing import Any

from mpi.commands.service import EXIT_FAILED, EXIT_OK, settings_from


def cmd_migrate(args: argparse.Namespace) -> int:
    settings = settings_from()
    from mpi import logs, wiring
    from mpi.storage import migrate
    from mpi.storage.db import connection

    logs.configure(settings)
    if args.status:
        db = wiring.open_database(settings)
        try:
            with connection(db):
                shipped = migrate.discover()
                waiting = {m.version for m in migrate.pending(db, shipped, allow_newer=True)}
                ahead = migrate.newer(db, shipped)
        finally:
            wiring.close_database(db)
        for m in shipped:
            print(f"{m.version}_{m.name}: {'pending' if m.version in waiting else 'applied'}")
        for version in ahead:
            print(f"{version}: applied by a newer release (this release does not ship it)")
        return EXIT_FAILED if waiting and args.check else EXIT_OK
    applied = wiring.migrate_database(settings)
    print(f"applied {len(applied)} migration(s)" + (
        ": " + ", ".join(f"{m.version}_{m.name}" for m in applied) if applied else
        "; the schema is current"))
    return EXIT_OK


def register(commands: Any) -> None:
    migrate = commands.add_parser("migrate", help="apply pending schema migrations")
    migrate.add_argument("--status", action="store_true", help="list migrations, apply none")
    migrate.add_argument("--check", action="store_true",
                         help="with --status: exit 1 if any migration is pending")
    migrate.set_defaults(run=cmd_migrate)
