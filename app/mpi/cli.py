"""The ``mpi`` command (also the PEX entry point).

    mpi serve                 run the HTTP service (gunicorn, in-process)
    mpi migrate [--status]    apply pending schema migrations
    mpi healthcheck           probe the local service; exit 0 when healthy, 1 otherwise
    mpi config check          validate the environment (or --env-file) and show the settings
    mpi version               package version and build commit
    mpi reindex               rebuild the search index beside the live one, then swap

argparse rather than a CLI framework: ``healthcheck`` runs every few seconds
in containers and must start fast, so this module imports only the standard
library and ``mpi.config`` until a command needs more.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from mpi import config

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIG = 2


def _settings(env_file: str | None = None) -> config.Settings:
    if env_file:
        return config.load(config.read_env_file(env_file), origin=f"file {env_file}")
    return config.load()


def cmd_serve(args: argparse.Namespace) -> int:
    settings = _settings()
    from mpi import logs
    from mpi.server import serve
    from mpi.storage.bootstrap import prepare_database

    logs.configure(settings)
    prepare_database(settings)
    serve(settings)
    return EXIT_OK


def cmd_migrate(args: argparse.Namespace) -> int:
    settings = _settings()
    from mpi import logs
    from mpi.storage import migrate
    from mpi.storage.bootstrap import run_migrations
    from mpi.storage.db import connection, make_database

    logs.configure(settings)
    if args.status:
        db = make_database(settings)
        with connection(db):
            shipped = migrate.discover()
            waiting = {m.version for m in migrate.pending(db, shipped, allow_newer=True)}
            ahead = migrate.newer(db, shipped)
        for m in shipped:
            print(f"{m.version}_{m.name}: {'pending' if m.version in waiting else 'applied'}")
        for version in ahead:
            print(f"{version}: applied by a newer release (this release does not ship it)")
        return EXIT_FAILED if waiting and args.check else EXIT_OK
    applied = run_migrations(settings)
    print(f"applied {len(applied)} migration(s)" + (
        ": " + ", ".join(f"{m.version}_{m.name}" for m in applied) if applied else
        "; the schema is current"))
    return EXIT_OK


def cmd_healthcheck(args: argparse.Namespace) -> int:
    """Standard library only: GET /api/v1/health on the local server."""
    import json
    import urllib.error
    import urllib.request

    settings = _settings()
    host = settings.server_host
    if host in ("0.0.0.0", "", "::", "[::]"):  # noqa: S104 - mapping a wildcard to loopback
        host = "127.0.0.1"
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    path = "/api/v1/health/ready" if args.ready else "/api/v1/health"
    url = f"http://{host}:{settings.server_port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=args.timeout) as response:
            body = json.loads(response.read() or b"{}")
            healthy = response.status == 200 and body.get("status") == "ok"
    except (OSError, ValueError, urllib.error.URLError) as exc:
        print(f"unhealthy: {url}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if not healthy:
        print(f"unhealthy: {url}: {body}", file=sys.stderr)
        return EXIT_FAILED
    if not args.quiet:
        print(f"healthy: {url}")
    return EXIT_OK


def cmd_config_check(args: argparse.Namespace) -> int:
    settings = _settings(args.env_file)
    origin = f"env file {args.env_file}" if args.env_file else "the environment"
    print(f"configuration from {origin} is valid; effective settings:")
    width = max(len(name) for name in config.ENV_NAMES)
    for name, value in settings.effective().items():
        print(f"  {name:<{width}} = {value}  ({settings.sources.get(name, 'default')})")
    return EXIT_OK


def cmd_version(args: argparse.Namespace) -> int:
    from mpi import build_commit, version

    print(f"mpi {version()} (commit {build_commit() or 'unknown'})")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mpi", description="Master Patient Index")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the HTTP service")
    serve.set_defaults(run=cmd_serve)

    migrate = commands.add_parser("migrate", help="apply pending schema migrations")
    migrate.add_argument("--status", action="store_true", help="list migrations, apply none")
    migrate.add_argument("--check", action="store_true",
                         help="with --status: exit 1 if any migration is pending")
    migrate.set_defaults(run=cmd_migrate)

    health = commands.add_parser("healthcheck", help="probe the local service (exit 0 = healthy)")
    health.add_argument("--ready", action="store_true", help="probe readiness (database) instead")
    health.add_argument("--timeout", type=float, default=2.0, help="seconds (default 2)")
    health.add_argument("--quiet", action="store_true", help="print nothing when healthy")
    health.set_defaults(run=cmd_healthcheck)

    cfg = commands.add_parser("config", help="configuration tools")
    cfg_commands = cfg.add_subparsers(dest="config_command", required=True, metavar="COMMAND")
    check = cfg_commands.add_parser("check", help="validate settings and print them, masked")
    check.add_argument("--env-file", help="read variables from this file instead of the "
                                          "environment")
    check.set_defaults(run=cmd_config_check)

    ver = commands.add_parser("version", help="show version and build commit")
    ver.set_defaults(run=cmd_version)

    # Command groups live with their packages; each imports only the standard library
    # until its command runs (healthcheck must start fast).
    from mpi.identity import cli as identity_cli
    from mpi.matching import cli as matching_cli
    from mpi.search import cli as search_cli

    matching_cli.register(commands)  # dedupe, link, train, blocking report
    identity_cli.register(commands)  # import, export
    search_cli.register(commands)  # reindex
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args))
    except config.ConfigError as exc:
        print(exc, file=sys.stderr)
        return EXIT_CONFIG
    except OSError as exc:
        if getattr(args, "env_file", None):
            print(f"cannot read {args.env_file}: {exc.strerror}", file=sys.stderr)
            return EXIT_CONFIG
        raise
    except Exception as exc:
        # Lazily imported modules' errors, caught by name to keep start-up light.
        if type(exc).__name__ == "MigrationError":
            print(f"migration error: {exc}", file=sys.stderr)
            return EXIT_FAILED
        raise


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
