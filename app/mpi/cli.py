"""The ``mpi`` command (also the PEX entry point).

    mpi serve                 run the HTTP service (gunicorn, in-process)
    mpi migrate [--status]    apply pending schema migrations
    mpi healthcheck           probe the local service; exit 0 when healthy, 1 otherwise
    mpi config check          validate the environment (or --env-file) and show the settings
    mpi version               package version and build commit
    mpi reindex               rebuild the search index beside the live one, then swap
    mpi import | export       load a CSV through the online linking path; write the clusters
    mpi domain add|list|remove   identity domains (assigning authorities)
    mpi hl7 sender add|list|remove; mpi hl7 listen   HL7 v2 senders; the MLLP listener alone
    mpi dedupe | link | train | blocking report    matching on files

The command groups live in ``mpi.commands``. argparse rather than a CLI framework:
``healthcheck`` runs every few seconds in containers and must start fast, so this
module imports only the standard library and ``mpi.config`` until a command needs more.
A command that fails ends with one line naming the cause (``mpi.commands.failures``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from mpi import config

EXIT_CONFIG = 2


def build_parser() -> argparse.ArgumentParser:
    from mpi.commands import (
        access,
        database,
        domains,
        hl7,
        matching,
        registry,
        search,
        service,
    )

    parser = argparse.ArgumentParser(prog="mpi", description="Master Patient Index")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    service.register(commands)  # serve, healthcheck, config check, version
    database.register(commands)  # migrate
    matching.register(commands)  # dedupe, link, train, blocking report
    registry.register(commands)  # import, export (and train's database source)
    search.register(commands)  # reindex
    access.register(commands)  # token create, list, revoke
    domains.register(commands)  # domain add, list, remove
    hl7.register(commands)  # hl7 sender add, list, remove; hl7 listen
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args))
    except config.ConfigError as exc:
        print(exc, file=sys.stderr)
        return EXIT_CONFIG
    except Exception as exc:
        from mpi.commands.failures import explain

        failure = explain(exc, env_file=getattr(args, "env_file", None))
        if failure is None:
            raise
        print(f"mpi {args.command}: {failure.message}", file=sys.stderr)
        return failure.exit_code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
