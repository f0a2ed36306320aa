"""``mpi token create|list|revoke``: the API tokens of AUTH_MODE=token.

``create`` prints the token once, on standard output alone (so a script can capture it);
only its SHA-256 is stored, so a lost token is revoked and replaced, never recovered.
Creating and revoking are audited as the administrator ``mpi token`` names
(``--by``, default the login name).
"""

from __future__ import annotations

import argparse
import getpass
import sys
from typing import Any

from mpi.commands.service import EXIT_FAILED, EXIT_OK, settings_from
from mpi.domain.access import IHE_SCOPES, MPI_SCOPES


def _services() -> Any:
    """Every service, connected: the embedded database migrated, the server reachable."""
    from mpi import logs, wiring

    settings = settings_from()
    logs.configure(settings)
    wiring.prepare(settings)
    return wiring.connected(settings)


def operator(args: argparse.Namespace, command: str) -> Any:
    """The audit actor of an administration command: ``--by``, else the login name."""
    from mpi.domain.audit import Actor

    by = args.by
    if not by:
        try:
            by = getpass.getuser()
        except (KeyError, OSError):  # a container user without a passwd entry
            by = "unknown"
    return Actor(user_id=f"{command} ({by})", user_agent=command)


def refused(command: str, exc: Any) -> int:
    """Report an administration command's refused input (each bad field, or the conflict)
    on standard error; the exit status."""
    for problem in getattr(exc, "problems", None) or ():
        print(f"{command}: {problem.field}: {problem.reason}", file=sys.stderr)
    if not getattr(exc, "problems", None):
        print(f"{command}: {exc.message}", file=sys.stderr)
    return EXIT_FAILED


def _actor(args: argparse.Namespace) -> Any:
    return operator(args, "mpi token")


def cmd_create(args: argparse.Namespace) -> int:
    from mpi.domain.errors import Conflict, InvalidInput
    try:
        with _services() as services:
            made = services.tokens.create(args.name, args.scopes, args.sources, _actor(args))
    except (InvalidInput, Conflict) as exc:
        return refused("mpi token create", exc)
    token = made.token
    print(made.secret)
    print(f"token {token.name!r} created: scopes {' '.join(token.scopes)}; sources "
          f"{','.join(token.sources) or '(none: read-only)'}. It is shown only this once; "
          "give it to the client as 'Authorization: Bearer <token>'.", file=sys.stderr)
    return EXIT_OK


def cmd_list(args: argparse.Namespace) -> int:
    with _services() as services:
        tokens = services.tokens.list()
    for t in tokens:
        state = f"revoked {t.revoked_at:%Y-%m-%d %H:%M}" if t.revoked_at else "active"
        used = f"{t.last_used_at:%Y-%m-%d %H:%M}" if t.last_used_at else "never"
        print(f"{t.name}\t{state}\tcreated {t.created_at:%Y-%m-%d %H:%M}\tlast used {used}"
              f"\tscopes {' '.join(t.scopes)}\tsources {','.join(t.sources) or '-'}")
    return EXIT_OK


def cmd_revoke(args: argparse.Namespace) -> int:
    from mpi.domain.errors import NotFound
    try:
        with _services() as services:
            token = services.tokens.revoke(args.name, _actor(args))
    except NotFound as exc:
        print(f"mpi token revoke: {exc.message}", file=sys.stderr)
        return EXIT_FAILED
    print(f"token {token.name!r} revoked; requests with it now get 401", file=sys.stderr)
    return EXIT_OK


def register(commands: Any) -> None:
    token = commands.add_parser("token", help="API tokens (AUTH_MODE=token)")
    verbs = token.add_subparsers(dest="verb", required=True, metavar="VERB")
    scopes_help = ("scopes it grants: SMART system scopes such as system/Patient.cruds, "
                   "system/Patient.rs, system/Person.r, system/*.read; the IHE IUA "
                   "transaction scopes " + ", ".join(IHE_SCOPES) + "; and "
                   + ", ".join(sorted(MPI_SCOPES)))
    create = verbs.add_parser("create", help="make a token and print it (once)")
    create.add_argument("--name", required=True, help="the client's name (the audit actor)")
    create.add_argument("--scopes", nargs="+", required=True, metavar="SCOPE", help=scopes_help)
    create.add_argument("--sources", default="",
                        help="comma-separated sources it may write records into ('*' = any; "
                             "default none)")
    create.add_argument("--by", help="who makes it (audited; default: the login name)")
    create.set_defaults(run=cmd_create)
    listing = verbs.add_parser("list", help="list tokens (never their secrets)")
    listing.set_defaults(run=cmd_list)
    revoke = verbs.add_parser("revoke", help="revoke a token at once")
    revoke.add_argument("name")
    revoke.add_argument("--by", help="who revokes it (audited; default: the login name)")
    revoke.set_defaults(run=cmd_revoke)
