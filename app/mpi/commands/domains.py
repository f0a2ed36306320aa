"""``mpi domain add|list|remove``: the identity domains (assigning authorities).

The same registry as ``/api/v1/domains``; changes are audited as the administrator
``--by`` names (default the login name).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from mpi.commands.access import _services, operator, refused
from mpi.commands.service import EXIT_FAILED, EXIT_OK


def _actor(args: argparse.Namespace) -> Any:
    return operator(args, "mpi domain")


def cmd_add(args: argparse.Namespace) -> int:
    from mpi.domain.errors import Conflict, InvalidInput
    fields = {"system": args.system, "name": args.name,
              "sources": [s.strip() for s in args.sources.split(",") if s.strip()]}
    if args.namespace:
        fields["namespace"] = args.namespace
    body = json.dumps(fields)
    try:
        with _services() as services:
            made = services.domains.add(services.domains.parse(body.encode()), _actor(args))
    except (InvalidInput, Conflict) as exc:
        return refused("mpi domain add", exc)
    print(_line(made))
    return EXIT_OK


def _line(d: Any) -> str:
    namespace = f"\tHL7 namespace {d.namespace}" if d.namespace else ""
    return f"{d.id}\t{d.system}\t{d.name}\tsources {','.join(d.sources)}{namespace}"


def cmd_list(args: argparse.Namespace) -> int:
    with _services() as services:
        found = services.domains.all(_actor(args))
    for d in found:
        print(_line(d))
    return EXIT_OK


def cmd_remove(args: argparse.Namespace) -> int:
    from mpi.domain.errors import NotFound
    try:
        with _services() as services:
            gone = services.domains.remove(args.domain, _actor(args))
    except NotFound as exc:
        print(f"mpi domain remove: {exc.message}", file=sys.stderr)
        return EXIT_FAILED
    print(f"domain {gone.system} removed (identifiers in it stay on their records)",
          file=sys.stderr)
    return EXIT_OK


def register(commands: Any) -> None:
    domain = commands.add_parser("domain", help="identity domains (assigning authorities)")
    verbs = domain.add_subparsers(dest="verb", required=True, metavar="VERB")
    add = verbs.add_parser("add", help="register a domain")
    add.add_argument("system", help="its identifier system: a URI, an OID as urn:oid:1.2.3")
    add.add_argument("--name", required=True, help="what people call it")
    add.add_argument("--sources", required=True,
                     help="comma-separated sources that may assign in it ('*': any)")
    add.add_argument("--namespace", help="its HL7 v2 namespace id (HD-1), for messages that "
                                         "name it without the OID")
    add.add_argument("--by", help="who registers it (audited; default: the login name)")
    add.set_defaults(run=cmd_add)
    listing = verbs.add_parser("list", help="list the registered domains")
    listing.add_argument("--by", help="who asks (audited; default: the login name)")
    listing.set_defaults(run=cmd_list)
    remove = verbs.add_parser("remove", help="remove a domain (by id or system)")
    remove.add_argument("domain")
    remove.add_argument("--by", help="who removes it (audited; default: the login name)")
    remove.set_defaults(run=cmd_remove)
