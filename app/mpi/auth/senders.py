"""HL7 v2 senders: each sending system is a client, as an API token's holder is.

A sender is named by what it writes in MSH-3 (sending application) and MSH-4 (sending
facility); it may write records of the sources it is given, holds scopes as a token
does (``system/Patient.cruds`` by default: feed and query), and, when the listener asks
for client certificates, must present the certificate whose subject common name is
recorded. Adding and removing one are audited administration actions.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import timedelta

from mpi.domain.access import IHE_SCOPES, Principal, check_scope, parse_sources
from mpi.domain.audit import Actor, AuditTag
from mpi.domain.errors import Conflict, FieldProblem, InvalidInput, NotFound
from mpi.storage.hl7 import (
    ContinuationRepository,
    ReceiptRepository,
    SenderRepository,
    StoredContinuation,
    StoredSender,
)
from mpi.storage.work import UnitOfWork

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")
#: An HD-1 namespace id as a sender writes it: printable, none of the v2 delimiters.
_HD_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._:/-]{0,63}$")
DEFAULT_SCOPES = ("system/Patient.cruds",)


class Hl7Senders:
    """Register, list and remove senders; identify the sender of a message."""

    def __init__(self, work: UnitOfWork, repository: SenderRepository,
                 receipts: ReceiptRepository, continuations: ContinuationRepository):
        self._work = work
        self._repository = repository
        self.receipts = receipts
        self._continuations = continuations

    def add(self, name: str, *, application: str, facility: str, sources: str,
            scopes: Iterable[str] = DEFAULT_SCOPES, certificate: str | None = None,
            actor: Actor) -> StoredSender:
        problems = []
        if not _NAME_RE.match(name):
            problems.append(FieldProblem("name", "1-64 letters, digits, '.', '_', ':' or '-'"))
        for field, value in (("application", application), ("facility", facility)):
            if not _HD_RE.match(value):
                problems.append(FieldProblem(field, "an HL7 namespace id: 1-64 letters, digits, "
                                                    "spaces, '.', '_', ':', '/' or '-'"))
        checked = []
        for scope in scopes:
            try:
                checked.append(check_scope(scope))
            except ValueError as exc:
                problems.append(FieldProblem("scopes", str(exc)))
            if scope in IHE_SCOPES:  # FHIR transactions: an HL7 v2 sender's are SMART scopes
                problems.append(FieldProblem("scopes", f"{scope} is an IHE IUA scope for the "
                                                       "FHIR routes; HL7 v2 needs "
                                                       "system/Patient.<cruds>"))
        try:
            allowed = tuple(sorted(parse_sources(sources)))
        except ValueError as exc:
            problems.append(FieldProblem("sources", str(exc)))
            allowed = ()
        if not allowed and not problems:
            problems.append(FieldProblem("sources", "name at least one source"))
        if certificate is not None and not (0 < len(certificate) <= 200):
            problems.append(FieldProblem("certificate", "a certificate subject common name"))
        if problems:
            raise InvalidInput(problems, "the sender cannot be registered")
        with self._work.begin(actor) as tx:
            clash = self._repository.clash(name, application, facility)
            if clash == "name":
                raise Conflict(f"a sender named {name!r} exists", field="name")
            if clash:
                raise Conflict(f"a sender {application} at {facility} exists",
                               field="application")
            stored = self._repository.insert(
                name=name, application=application, facility=facility, sources=allowed,
                scopes=tuple(dict.fromkeys(checked)), certificate=certificate, now=tx.now)
            tx.audit(AuditTag.HL7_SENDER_CREATE, name, new={
                "application": application, "facility": facility, "sources": list(allowed),
                "scopes": list(stored.scopes), "certificate": certificate})
        return stored

    def all(self) -> list[StoredSender]:
        with self._work.reading():
            return self._repository.all()

    def remove(self, name: str, actor: Actor) -> StoredSender:
        with self._work.begin(actor) as tx:
            gone = self._repository.delete(name)
            if gone is None:
                raise NotFound(f"no sender named {name!r}")
            tx.audit(AuditTag.HL7_SENDER_DELETE, name)
        return gone

    def identify(self, application: str, facility: str) -> StoredSender | None:
        """The sender registered for MSH-3 at MSH-4, if any."""
        with self._work.reading():
            return self._repository.by_origin(application, facility)

    def prune_receipts(self, days: int) -> int:
        """Forget acknowledgements older than ``days`` (a message resent later than that
        is processed again), and expired continuation pointers; how many acknowledgements.
        Housekeeping: nothing is audited."""
        with self._work.begin(Actor(user_id="mpi:hl7-retention")) as tx:
            self._continuations.prune(before=tx.now)
            return self.receipts.prune(before=tx.now - timedelta(days=days))

    # --- PDQ continuation pointers (shared by every listener on the database) ---------------

    def keep_continuation(self, pointer: str, state: StoredContinuation) -> None:
        with self._work.begin(Actor(user_id=f"hl7:{state.sender}")) as tx:
            self._continuations.prune(before=tx.now)
            self._continuations.insert(pointer, state)

    def take_continuation(self, pointer: str) -> StoredContinuation | None:
        """The pointer's state, used up (None: unknown, used or cancelled)."""
        with self._work.begin(Actor(user_id="mpi:hl7-continuation")):
            return self._continuations.take(pointer)

    def cancel_continuations(self, sender: str, tag: str) -> int:
        with self._work.begin(Actor(user_id=f"hl7:{sender}")):
            return self._continuations.cancel(sender, tag)

    def receipt(self, sender: str, control_id: str) -> str | None:
        """The acknowledgement a message of ``sender`` with this MSH-10 got, if it changed
        something."""
        with self._work.reading():
            return self.receipts.find(sender, control_id)


def principal(sender: StoredSender) -> Principal:
    return Principal(sender.name, frozenset(sender.scopes), frozenset(sender.sources), "hl7")
