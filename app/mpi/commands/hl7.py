"""``mpi hl7 sender add|list|remove`` and ``mpi hl7 listen``.

Senders are the systems allowed to send HL7 v2 messages: each is named by the MSH-3
sending application and MSH-4 facility it writes, may write records of the sources it
is given, and (with client certificates) must present the certificate whose subject
common name is recorded. ``listen`` runs the MLLP listener alone, for hosts that split
the roles (``mpi serve`` starts it beside gunicorn when HL7_MLLP_PORT is set).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from mpi.commands.access import _services, operator, refused
from mpi.commands.service import EXIT_FAILED, EXIT_OK, settings_from


def _actor(args: argparse.Namespace) -> Any:
    return operator(args, "mpi hl7 sender")


def _line(s: Any) -> str:
    cert = f"\tcertificate CN={s.certificate}" if s.certificate else ""
    return (f"{s.name}\t{s.application}^{s.facility}\tsources {','.join(s.sources)}\t"
            f"scopes {' '.join(s.scopes)}{cert}")


def cmd_add(args: argparse.Namespace) -> int:
    from mpi.domain.errors import Conflict, InvalidInput
    try:
        with _services() as services:
            made = services.senders.add(
                args.name, application=args.application, facility=args.facility,
                sources=args.sources, scopes=args.scope or ("system/Patient.cruds",),
                certificate=args.certificate, actor=_actor(args))
    except (InvalidInput, Conflict) as exc:
        return refused("mpi hl7 sender add", exc)
    print(_line(made))
    return EXIT_OK


def cmd_list(args: argparse.Namespace) -> int:
    with _services() as services:
        for sender in services.senders.all():
            print(_line(sender))
    return EXIT_OK


def cmd_remove(args: argparse.Namespace) -> int:
    from mpi.domain.errors import NotFound
    try:
        with _services() as services:
            services.senders.remove(args.name, _actor(args))
    except NotFound as exc:
        print(f"mpi hl7 sender remove: {exc.message}", file=sys.stderr)
        return EXIT_FAILED
    print(f"sender {args.name} removed; its messages are refused from now on", file=sys.stderr)
    return EXIT_OK


def cmd_listen(args: argparse.Namespace) -> int:
    from mpi import logs, wiring
    from mpi.hl7.listener import bind, listen

    settings = settings_from()
    logs.configure(settings)
    if settings.hl7_mllp_port is None:
        print("mpi hl7 listen: set HL7_MLLP_PORT", file=sys.stderr)
        return EXIT_FAILED
    wiring.prepare(settings)
    try:
        sock = bind(settings)
    except OSError as exc:
        print(f"mpi hl7 listen: {exc.strerror}", file=sys.stderr)
        return EXIT_FAILED
    if settings.hl7_mllp_processes > 1:
        try:
            return _supervise(settings, sock)
        finally:
            sock.close()
    services = wiring.build(settings)
    try:
        listen(settings, services, sock)
    finally:
        services.close()
        sock.close()
    return EXIT_OK


def _supervise(settings: Any, sock: Any) -> int:
    """HL7_MLLP_PROCESSES listener processes on one socket, forked and revived (as the
    gunicorn master does under ``mpi serve``) until SIGTERM or SIGINT stops them all."""
    import signal
    import threading

    from mpi import wiring
    from mpi.hl7.listener import AcceptShare, ListenerProcess

    count = settings.hl7_mllp_processes
    share = AcceptShare(count)
    children = [ListenerProcess(settings, lambda: wiring.build(settings), sock,
                                name=f"HL7 MLLP listener {n + 1}/{count}",
                                share=share.slot(n))
                for n in range(count)]
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        for child in children:
            child.start()
        while not stop.wait(1.0):
            for child in children:
                child.revive()
    finally:
        for child in children:
            child.stop()
    return EXIT_OK


def register(commands: Any) -> None:
    hl7 = commands.add_parser("hl7", help="HL7 v2 over MLLP: senders, and the listener alone")
    verbs = hl7.add_subparsers(dest="verb", required=True, metavar="VERB")
    sender = verbs.add_parser("sender", help="the systems allowed to send HL7 v2 messages")
    sender_verbs = sender.add_subparsers(dest="sender_verb", required=True, metavar="VERB")
    add = sender_verbs.add_parser("add", help="register a sender")
    add.add_argument("name", help="the client name (the actor on its audit rows)")
    add.add_argument("--application", required=True, help="its MSH-3 sending application")
    add.add_argument("--facility", required=True, help="its MSH-4 sending facility")
    add.add_argument("--sources", required=True,
                     help="comma-separated sources it may write records of")
    add.add_argument("--scope", action="append",
                     help="a scope it holds (repeat; default system/Patient.cruds: feed and "
                          "query; system/Patient.rs: query only)")
    add.add_argument("--certificate", help="the subject common name of its client "
                                           "certificate (required when the listener asks "
                                           "for client certificates)")
    add.add_argument("--by", help="who registers it (audited; default: the login name)")
    add.set_defaults(run=cmd_add)
    listing = sender_verbs.add_parser("list", help="list the senders")
    listing.set_defaults(run=cmd_list)
    remove = sender_verbs.add_parser("remove", help="remove a sender")
    remove.add_argument("name")
    remove.add_argument("--by", help="who removes it (audited; default: the login name)")
    remove.set_defaults(run=cmd_remove)
    listen = verbs.add_parser("listen", help="run the MLLP listener alone (HL7_MLLP_PORT)")
    listen.set_defaults(run=cmd_listen)
