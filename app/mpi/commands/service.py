"""``mpi serve | healthcheck | version | config check``."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from mpi import config

EXIT_OK = 0
EXIT_FAILED = 1


def settings_from(env_file: str | None = None) -> config.Settings:
    if env_file:
        return config.load(config.read_env_file(env_file), origin=f"file {env_file}")
    return config.load()


def cmd_serve(args: argparse.Namespace) -> int:
    settings = settings_from()
    from mpi import logs, wiring
    from mpi.server import serve

    logs.configure(settings)
    wiring.prepare(settings)  # a wrong password or a read-only data directory: say so now
    serve(settings)
    return EXIT_OK


def cmd_healthcheck(args: argparse.Namespace) -> int:
    """Standard library only: GET /api/v1/health on the local server."""
    import json
    import urllib.error
    import urllib.request

    settings = settings_from()
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
    settings = settings_from(args.env_file)
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


def register(commands: Any) -> None:
    serve = commands.add_parser("serve", help="run the HTTP service")
    serve.set_defaults(run=cmd_serve)

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
