"""One HL7 v2 message in, one acknowledgement or response out.

- ITI-8 Patient Identity Feed: ADT^A01, A04, A05, A08 (and A28, A31) create or update the
  sender's record named by the PID-3 identifier in a domain the sender assigns; ADT^A40
  merges the record in MRG-1 into the one in PID-3, and the two persons as a steward's
  merge would (undoable); ADT^A47 gives the record MRG-1 names the identifier in PID-3.
- ITI-9 PIX Query: QBP^Q23 -> RSP^K23.
- ITI-21 PDQ: QBP^Q22 -> RSP^K22, paged by RCP-2 with a continuation pointer (DSC,
  kept in the database: any listener answers it, once), cancelled by QCN^J01.

Every message names its sender in MSH-3/MSH-4; an unregistered sender (or one without
the client certificate its registration names) is refused (AR) and the refusal audited.
A message that changed something is acknowledged in the same transaction as the change
(:meth:`mpi.storage.work.UnitOfWork.attached`) and the acknowledgement kept, so the
same MSH-10 sent again gets it back and changes nothing. Errors are acknowledged with
MSA-1 AE (or AR) and ERR segments naming the field (ERR-2) and the HL7 table 0357 code
(ERR-3). Nothing from a message goes into the logs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import peewee

from mpi import metrics
from mpi.auth.senders import principal
from mpi.domain.access import smart
from mpi.domain.audit import Actor, AuditTag
from mpi.domain.criteria import Criteria, Term, Token
from mpi.domain.domains import PERSON_SYSTEM, SOURCE_SYSTEM
from mpi.domain.errors import (
    ConcurrentChange,
    Conflict,
    DomainError,
    Forbidden,
    InvalidInput,
    MalformedInput,
    NotFound,
    StateConflict,
    StorageUnavailable,
    VersionMismatch,
)
from mpi.domain.patient import Patient, PatientInput
from mpi.fhir.search import identifier_token, parse_date
from mpi.hl7 import codec
from mpi.hl7.codec import Message, MessageError
from mpi.hl7.pid import (
    FIELD_LOCATIONS,
    SSN_SYSTEM,
    Authority,
    Demographics,
    authority,
    cx,
    read_pid,
    system_of,
    updated,
    write_pid,
)
from mpi.storage.hl7 import StoredContinuation, StoredSender

log = logging.getLogger("mpi.hl7")

FEED_EVENTS = frozenset({"A01", "A04", "A05", "A08", "A28", "A31"})
#: HL7 table 0357 texts.
CODES = {"0": "Message accepted", "100": "Segment sequence error",
         "101": "Required field missing", "102": "Data type error",
         "103": "Table value not found", "200": "Unsupported message type",
         "201": "Unsupported event code", "204": "Unknown key identifier",
         "205": "Duplicate key identifier", "206": "Application record locked",
         "207": "Application internal error"}
#: RCP-2 when none is given, and the most one response carries.
DEFAULT_QUANTITY = 50
MAX_QUANTITY = 200
#: How long a PDQ continuation pointer stays valid (kept in the database, so any listener
#: answers it; used once).
CONTINUATION_TTL_S = 600.0
#: The longest query tag (QPD-2) kept with a continuation pointer.
MAX_TAG = 199


@dataclass(frozen=True)
class Problem:
    """One ERR segment."""

    code: str
    location: tuple[object, ...]
    reason: str
    severity: str = "E"


class Refusal(Exception):
    """The message is answered with MSA-1 ``status`` (AE or AR) and these problems."""

    def __init__(self, status: str, problems: Sequence[Problem]):
        super().__init__(problems[0].reason if problems else status)
        self.status = status
        self.problems = list(problems)


def refuse(code: str, location: Sequence[object], reason: str, status: str = "AE") -> Refusal:
    return Refusal(status, [Problem(code, tuple(location), reason)])


@dataclass
class _Continuation:
    sender: str
    tag: str
    criteria: Criteria
    probe: dict[str, Any]
    wanted: frozenset[str] | None
    offset: int
    quantity: int
    #: Fuzzy mode (QPD-4 set): every (record id, probability) found, best first.
    ranked: list[tuple[str, float]] | None = None


@dataclass(frozen=True)
class Peer:
    """Who is on the other end of the connection."""

    ip: str | None = None
    certificate: str | None = None  # the client certificate's subject common name


class Hl7Handler:
    """Answers messages with the services of one process (``mpi.wiring.Services``)."""

    def __init__(self, services: Any, *, application: str, facility: str,
                 certificates_required: bool, new_control_id: Callable[[], str] | None = None):
        self._s = services
        self._application = application
        self._facility = facility
        self._certificates_required = certificates_required
        self._new_control_id = new_control_id or (lambda: secrets.token_hex(10))

    # --- the entry point -------------------------------------------------------------------


    def handle(self, block: bytes, peer: Peer = Peer()) -> bytes:
        """The answer to one MLLP block (never raises for what the peer sent)."""
        started = time.perf_counter()
        kind, segments, charset = self._handle(block, peer)
        answer = codec.encode(segments, charset)
        label = metrics.hl7_type(kind)
        metrics.HL7_MESSAGES.labels(label, _ack_code(segments)).inc()
        metrics.HL7_DURATION.labels(label).observe(time.perf_counter() - started)
        return answer

    def _handle(self, block: bytes, peer: Peer) -> tuple[str | None, list[str], str]:
        """(the message type, if it could be read; the answer's segments; its charset)."""
        try:
            message = codec.decode(block)
        except MessageError as exc:
            header = codec.decode_header(block)
            if header is None:
                return None, self._ack_unread(exc), "utf-8"
            return "^".join(header.type[:2]), self._ack(header, "AR", [
                Problem(exc.code, exc.location, exc.reason)]), "utf-8"
        try:
            segments = self._answer(message, peer)
        except _Resent as resent:
            segments = resent.segments
        except MessageError as exc:
            segments = self._error(message, refuse(exc.code, exc.location, exc.reason))
        except Refusal as refused:
            segments = self._error(message, refused)
        except DomainError as exc:
            segments = self._error(message, _domain_refusal(exc))
        except Exception as exc:
            # The type and the stack frames only, never the message: an error's text can
            # quote the patient data it choked on (as the HTTP catch-all does).
            log.error("HL7 %s failed: %s\n%s", "^".join(message.type[:2]), type(exc).__name__,
                      "".join(traceback.format_tb(exc.__traceback__)))
            segments = self._error(message, refuse("207", ("MSH", 1, 9),
                                                   "the message could not be processed"))
        return "^".join(message.type[:2]), segments, message.codec

    def _answer(self, message: Message, peer: Peer) -> list[str]:
        sender = self._sender(message, peer)
        stored = self._s.senders.receipt(sender.name, message.control_id)
        if stored is not None:
            return stored.split("\r")
        actor = Actor(user_id=sender.name, ip=peer.ip,
                      user_agent=f"HL7 {message.get('MSH', 3)}^{message.get('MSH', 4)}",
                      request_id=message.control_id[:64], sources=frozenset(sender.sources))
        try:
            return self._dispatch(message, sender, actor)
        except _Resent:
            raise
        except (Refusal, DomainError, MessageError) as exc:
            # A registered sender's message refused: audited with the sender as the actor
            # (the reason and the field, never the values).
            refused = (exc if isinstance(exc, Refusal) else _domain_refusal(exc)
                       if isinstance(exc, DomainError) else
                       refuse(exc.code, exc.location, exc.reason))
            with self._s.work.begin(actor) as tx:
                tx.audit(AuditTag.HL7_MESSAGE_REJECTED, None, new={
                    "type": "^".join(message.type), "status": refused.status,
                    "errors": [{"code": p.code, "location": "^".join(map(str, p.location)),
                                "reason": p.reason} for p in refused.problems]})
            raise refused from None

    def _dispatch(self, message: Message, sender: StoredSender, actor: Actor) -> list[str]:
        code, event, _ = message.type
        if code == "ADT" and event in FEED_EVENTS:
            return self._feed(message, sender, actor)
        if code == "ADT" and event == "A40":
            return self._merge(message, sender, actor)
        if code == "ADT" and event == "A47":
            return self._rekey(message, sender, actor)
        if code == "QBP" and event == "Q23":
            return self._pix(message, sender, actor)
        if code == "QBP" and event == "Q22":
            return self._pdq(message, sender, actor)
        if code == "QCN" and event == "J01":
            return self._cancel(message, sender)
        if code in ("ADT", "QBP", "QCN"):
            raise refuse("201", ("MSH", 1, 9, 1, 2), f"event {event} of {code} is not "
                         "supported", status="AR")
        raise refuse("200", ("MSH", 1, 9, 1, 1), f"message type {code} is not supported",
                     status="AR")

    # --- who sends -------------------------------------------------------------------------

    def _sender(self, message: Message, peer: Peer) -> StoredSender:
        application, facility = message.get("MSH", 3), message.get("MSH", 4)
        sender = self._s.senders.identify(application, facility)
        reason = None
        if sender is None:
            reason = "no sender is registered for this sending application and facility"
        elif self._certificates_required and sender.certificate != peer.certificate:
            reason = "the client certificate is not the one registered for this sender"
        elif sender.certificate is not None and peer.certificate != sender.certificate:
            reason = "this sender must connect with its client certificate"
        if reason is None:
            assert sender is not None
            return sender
        actor = Actor(user_id=f"hl7:{application}^{facility}"[:128], ip=peer.ip,
                      request_id=message.control_id[:64])
        with self._s.work.begin(actor) as tx:
            tx.audit(AuditTag.HL7_MESSAGE_REJECTED, None, new={
                "application": application, "facility": facility,
                "certificate": peer.certificate, "type": "^".join(message.type),
                "reason": reason})
        raise refuse("103", ("MSH", 1, 3), reason, status="AR")

    def _require(self, sender: StoredSender, permission: str, what: str) -> None:
        if not principal(sender).may(smart("Patient", permission)):
            raise refuse("207", ("MSH", 1, 9), f"this sender may not {what} (its registration "
                         f"lacks system/Patient.{permission})", status="AR")

    # --- ITI-8: the feed -------------------------------------------------------------------

    def _feed(self, message: Message, sender: StoredSender, actor: Actor) -> list[str]:
        self._require(sender, "c", "create records")
        self._require(sender, "u", "update records")
        data, sent = self._read(message, actor)
        ack = self._ack(message, "AA")
        with self._receipt(sender, message, ack):
            self._upsert(data, sent, actor)
        return ack

    def _record(self, message: Message, actor: Actor, *, segment: str = "PID") -> PatientInput:
        return self._read(message, actor, segment=segment)[0]

    def _read(self, message: Message, actor: Actor, *,
              segment: str = "PID") -> tuple[PatientInput, Demographics]:
        """The record the PID describes, and what the PID sent (for an update)."""
        if not message.segments(segment):
            raise refuse("100", (segment,), f"the message has no {segment} segment")
        demographics = read_pid(message, self._resolve, segment)
        key = self._s.domains.source_for([(s, v) for _, s, v in demographics.keys], actor)
        if key is None:
            raise refuse("204", (segment, 1, 3), "no PID-3 identifier is in a domain this "
                         "sender assigns (register the domain with the sender's source)")
        source, source_id = key
        body = {"source": source, "source_id": source_id, **demographics.fields}
        return self._parse(body, segment), demographics

    def _parse(self, body: dict[str, Any], segment: str = "PID") -> PatientInput:
        try:
            return self._s.patients.parse(json.dumps(body).encode())
        except InvalidInput as exc:
            raise Refusal("AE", [_problem(p.field, p.reason, segment) for p in exc.problems]) \
                from None
        except MalformedInput as exc:
            raise refuse("102", (segment,), exc.message) from None

    def _upsert(self, data: PatientInput, sent: Demographics, actor: Actor) -> Patient:
        """Create the record, or update it by HL7's rules (:func:`mpi.hl7.pid.updated`:
        empty fields change nothing, ``""`` deletes)."""
        state = self._s.patients.key_state(data.source, data.source_id)
        if state is not None and state[1]:
            raise refuse("204", ("PID", 1, 3), "this identifier's record was merged into "
                         "another (ADT^A40); send the surviving record's identifier")
        existing = state[0] if state else None
        if existing is None:
            try:
                return self._s.patients.create(data, actor)  # type: ignore[no-any-return]
            except Conflict as clash:  # created meanwhile by the same sender: update it
                if clash.existing_id is None:
                    raise
                existing = clash.existing_id
        old = self._s.patients.get(existing, actor)
        data = self._parse(updated(old.content(), data.content(), sent))
        return self._s.patients.update(  # type: ignore[no-any-return]
            existing, data, actor, expected_version=old.version)

    def _prior_key(self, message: Message, source: str, actor: Actor) -> tuple[str, str]:
        """The sender's record MRG-1 names: (source, source id) in the sender's domain."""
        if not message.segments("MRG"):
            raise refuse("100", ("MRG",), "the message needs an MRG segment")
        for n, rep in enumerate(message.repetitions("MRG", 1), start=1):
            value, found = message.part(rep, 1), authority(message, rep)
            system = self._resolve(found) if not found.empty() else None
            if value and system is None:
                raise refuse("204", ("MRG", 1, 1, n, 4), "unknown assigning authority")
            if value and system:
                key = self._s.domains.source_for([(system, value)], actor)
                if key is not None and key[0] == source:
                    return key
        raise refuse("204", ("MRG", 1, 1), "MRG-1 names no record of the sender's domain")

    def _rekey(self, message: Message, sender: StoredSender, actor: Actor) -> list[str]:
        """ADT^A47: the record MRG-1 names now has the identifier in PID-3 (its other
        content unchanged)."""
        self._require(sender, "u", "update records")
        target = self._record(message, actor)
        old_key = self._prior_key(message, target.source, actor)
        record_id = self._s.patients.id_of(*old_key)
        if record_id is None:
            raise refuse("204", ("MRG", 1, 1), "the record MRG-1 names is not known")
        if old_key != (target.source, target.source_id) and self._s.patients.id_of(
                target.source, target.source_id) is not None:
            raise refuse("205", ("PID", 1, 3), "another record already has the new identifier")
        old = self._s.patients.get(record_id, actor)
        content = old.content()
        new = next(i for i in target.identifiers if i.value == target.source_id)
        kept = [i for i in content.get("identifiers", [])
                if (i["system"], i["value"]) not in ((new.system, old_key[1]),
                                                     (new.system, new.value))]
        content["identifiers"] = [new.model_dump(mode="json", exclude_none=True), *kept]
        content["source_id"] = target.source_id
        data = self._s.patients.parse(json.dumps(content).encode())
        ack = self._ack(message, "AA")
        with self._receipt(sender, message, ack):
            self._s.patients.update(record_id, data, actor, expected_version=None)
        return ack

    def _merge(self, message: Message, sender: StoredSender, actor: Actor) -> list[str]:
        """ADT^A40: MRG-1's record (in the sender's domain) into PID-3's."""
        self._require(sender, "u", "merge records")
        survivor = self._record(message, actor)
        merged_key = self._prior_key(message, survivor.source, actor)
        survivor_id = self._s.patients.id_of(survivor.source, survivor.source_id)
        if survivor_id is None:
            raise refuse("204", ("PID", 1, 3), "the surviving record (PID-3) is not known")
        merged_id = self._s.patients.id_of(*merged_key)
        if merged_id is None:
            raise refuse("204", ("MRG", 1, 1), "the record to merge (MRG-1) is not known")
        if merged_id == survivor_id:
            raise refuse("205", ("MRG", 1, 1), "MRG-1 and PID-3 name the same record")
        content = self._s.patients.get(merged_id, actor).content()
        content["active"] = False
        data = self._s.patients.parse(json.dumps(content).encode())
        ack = self._ack(message, "AA")
        with self._receipt(sender, message, ack):
            self._s.patients.merge_into(merged_id, data, survivor_id, actor, whole_person=True)
        return ack

    # --- ITI-9: PIX query ------------------------------------------------------------------

    def _pix(self, message: Message, sender: StoredSender, actor: Actor) -> list[str]:
        self._require(sender, "r", "read records")
        tag = message.get("QPD", 2)
        rep = (message.repetitions("QPD", 3) or [""])[0]
        value, found = message.part(rep, 1), authority(message, rep)
        if not value:
            raise refuse("101", ("QPD", 1, 3, 1, 1), "QPD-3 needs the identifier")
        system = self._resolve(found) if not found.empty() else None
        if system is None or self._s.domains.unknown([system]):
            raise refuse("204", ("QPD", 1, 3, 1, 4), "the assigning authority of QPD-3 is "
                         "not a known domain")
        wanted = self._wanted(message, 4)
        records = self._records_of(system, value, actor)
        if records is None:
            raise refuse("204", ("QPD", 1, 3, 1, 1), "the identifier in QPD-3 is not known")
        identifiers = [i for i in _identifiers(records)
                       if (i[0], i[1]) != (system, value) and _returned(i[0], wanted)]
        segments = self._head(message, "RSP^K23^RSP_K23", "AA")
        segments.append(codec.segment("QAK", codec.escape(tag), "OK" if identifiers else "NF"))
        segments.append(_echo(message, "QPD"))
        if identifiers:
            namespaces = self._s.domains.namespaces({i[0] for i in identifiers})
            pid3 = [cx(v, s, namespaces, t) for s, v, t in identifiers]
            segments.append(codec.segment("PID", None, None, pid3, None, "^^^^^^S"))
        return segments

    def _records_of(self, system: str, value: str, actor: Actor) -> list[Patient] | None:
        """The live records of the person whose record carries (system, value)."""
        token = identifier_token(system, value)
        found = self._s.patients.find(Criteria((Term("identifier", (token,)),)), actor,
                                      offset=0, count=1, total=False, via="hl7")
        if not found.items or found.items[0].replaced_by is not None:
            return None
        person = self._s.persons.person_of_patient(found.items[0].id, actor)
        return [r.patient for r in person.records if r.patient.replaced_by is None]

    def _wanted(self, message: Message, number: int) -> frozenset[str] | None:
        """The domains QPD-``number`` asks for (None: every one)."""
        systems = []
        for n, rep in enumerate(message.repetitions("QPD", number), start=1):
            found = authority(message, rep)
            if found.empty():
                continue
            system = self._resolve(found)
            if system is None or self._s.domains.unknown([system]):
                raise refuse("204", ("QPD", 1, number, n), f"the domain {n} in "
                             f"QPD-{number} is not known")
            systems.append(system)
        return frozenset(systems) if systems else None

    # --- ITI-21: PDQ -----------------------------------------------------------------------

    def _pdq(self, message: Message, sender: StoredSender, actor: Actor) -> list[str]:
        self._require(sender, "s", "search records")
        tag = message.get("QPD", 2)
        if len(tag) > MAX_TAG:
            raise refuse("102", ("QPD", 1, 2), f"the query tag is longer than {MAX_TAG} "
                         "characters")
        pointer = message.get("DSC", 1)
        # A continuation repeats its query (IHE ITI-21): the criteria are read again from
        # it; the pointer says how far the answer got (and, fuzzy, what was ranked).
        criteria, probe = self._criteria(message)
        wanted = self._wanted(message, 8)
        if pointer:
            state = self._take(pointer, sender.name, tag, _digest(message), criteria, probe,
                               wanted)
        else:
            quantity = self._quantity(message)
            threshold = self._threshold(message)
            ranked = None
            if threshold is not None:
                ranked = [(c.best_record_id, c.probability)
                          for c in self._candidates(probe, actor, required=True) or []
                          if c.probability >= threshold]
            state = _Continuation(sender.name, tag, criteria, probe, wanted, 0, quantity,
                                  ranked)
        if state.ranked is None:  # exact: the FHIR search's rules, in the database
            found = self._s.patients.find(state.criteria, actor, offset=state.offset,
                                          count=state.quantity, total=True, via="hl7")
            records, total, more = found.items, found.total or 0, found.more
            by_person = {c.person_id: c.probability
                         for c in self._candidates(state.probe, actor) or []} if records else {}

            def confidence(patient: Patient) -> float:
                return by_person.get(patient.person_id or "", 0.0)
        else:  # fuzzy: the match engine's candidates at or above QPD-4, best first
            page = state.ranked[state.offset:state.offset + state.quantity]
            records = [self._s.patients.get(record_id, actor) for record_id, _ in page]
            total, more = len(state.ranked), state.offset + len(page) < len(state.ranked)
            by_record = dict(page)

            def confidence(patient: Patient) -> float:
                return by_record.get(patient.id, 0.0)
        wanted = state.wanted
        rows: list[str] = []
        if records:
            returned = [(p, [i for i in _identifiers([p]) if _returned(i[0], wanted)])
                        for p in records]
            namespaces = self._s.domains.namespaces(
                {system for _, idents in returned for system, _, _ in idents})
            for patient, idents in returned:
                if not idents:
                    continue
                rows.append(write_pid(patient, idents, namespaces, set_id=len(rows) // 2 + 1))
                rows.append(codec.segment(
                    "QRI", f"{confidence(patient):.4f}", None,
                    codec.value("MPI-FS", "Fellegi-Sunter match probability", "L",
                                self._s.engine.model_version)))
        shown = state.offset + len(records)
        segments = self._head(message, "RSP^K22^RSP_K21", "AA")
        segments.append(codec.segment("QAK", codec.escape(tag), "OK" if rows else "NF",
                                      codec.value(*message.components(message.raw("QPD", 1))),
                                      str(total), str(len(rows) // 2), str(max(total - shown, 0))))
        segments.append(_echo(message, "QPD"))
        segments.extend(rows)
        if more:
            segments.append(codec.segment("DSC", self._keep(state, shown, _digest(message)),
                                          "I"))
        return segments

    def _threshold(self, message: Message) -> float | None:
        """QPD-4, the search confidence threshold: asks for a fuzzy search (the match
        engine's candidates whose probability reaches it) instead of the exact one."""
        raw = message.get("QPD", 4)
        if not raw:
            return None
        try:
            value = float(raw)
        except ValueError:
            value = -1.0
        if not 0.0 < value <= 1.0:
            raise refuse("102", ("QPD", 1, 4), "QPD-4 (search confidence threshold) is a "
                         "probability above 0 and at most 1")
        return value

    def _quantity(self, message: Message) -> int:
        raw = message.get("RCP", 2)
        unit = message.get("RCP", 2, 1, 2).upper()
        if not raw:
            return DEFAULT_QUANTITY
        if not raw.isdigit() or int(raw) < 1 or unit not in ("", "RD"):
            raise refuse("102", ("RCP", 1, 2), "RCP-2 must be a number of records (RD)")
        return min(int(raw), MAX_QUANTITY)

    def _candidates(self, probe: dict[str, Any], actor: Actor, *,
                    required: bool = False) -> list[Any] | None:
        """The match engine's candidate persons for the query's demographics (the same
        engine that links records), best first; None when they are too few to score (a
        query by city alone, say): then a fuzzy search is refused, naming QPD-3."""
        names = {k: probe[k] for k in ("family", "given") if k in probe}
        body: dict[str, Any] = {"source": "pdq-query", "source_id": "query",
                                "names": [{**names, "given": names.get("given", [])}]
                                if names else []}
        for key in ("birth_date", "gender", "mothers_maiden_name", "identifiers", "telecom"):
            if key in probe:
                body[key] = probe[key]
        if "address" in probe:
            body["addresses"] = [probe["address"]]
        try:
            data = self._s.matching.parse(json.dumps(body).encode())
        except DomainError:
            if required:
                raise refuse("101", ("QPD", 1, 3), "a search by confidence needs a name, a "
                             "full birth date or an identifier to match on") from None
            return None
        return list(self._s.matching.match(data, actor, limit=MAX_QUANTITY).candidates)

    def _criteria(self, message: Message) -> tuple[Criteria, dict[str, Any]]:
        """The search QPD-3 asks for, and its demographics as a record (to score)."""
        terms: list[Term] = []
        probe: dict[str, Any] = {}
        identifier: dict[str, str] = {}
        for n, rep in enumerate(message.repetitions("QPD", 3), start=1):
            path = message.part(rep, 1).lstrip("@").upper()
            value = message.part(rep, 2)
            location = ("QPD", 1, 3, n)
            if not path:
                continue
            if not value:
                raise refuse("101", (*location, 2), f"no value for {path}")
            subject = _PDQ_FIELDS.get(path)
            _note(probe, subject, value)
            if subject == "identifier":
                identifier["value"] = value
            elif subject and subject.startswith("authority"):
                identifier[subject] = value
            elif subject == "birthdate":
                terms.append(Term("birthdate", (_date_range(value, location),)))
            elif subject == "gender":
                gender = {"M": "male", "F": "female", "O": "other", "A": "other",
                          "U": "unknown"}.get(value.upper())
                if gender is None:
                    raise refuse("103", (*location, 2), "sex must be M, F, O, A or U")
                terms.append(Term("gender", (gender,)))
            elif subject == "telecom":
                terms.append(Term("telecom", (Token(None, value, any_system=True),)))
            elif subject == "ssn":
                terms.append(Term("identifier", (identifier_token(SSN_SYSTEM, value),)))
            elif subject is not None:
                terms.append(Term(subject, (value.rstrip("*"),)))  # type: ignore[arg-type]
            else:
                raise refuse("103", (*location, 1), f"searching by {path} is not supported")
        if identifier:
            term = self._identifier_term(identifier)
            terms.append(term)
            token = term.values[0]
            if isinstance(token, Token) and token.system and token.value:
                probe["identifiers"] = [{"system": token.system, "value": token.value}]
        if not terms:
            raise refuse("101", ("QPD", 1, 3), "QPD-3 needs at least one search parameter")
        return Criteria(tuple(terms)), probe

    def _identifier_term(self, parts: dict[str, str]) -> Term:
        found = Authority(parts.get("authority", parts.get("authority1", "")),
                          parts.get("authority2", ""), parts.get("authority3", "").upper())
        system = self._resolve(found) if not found.empty() else None
        if not found.empty() and (system is None or self._s.domains.unknown([system])):
            raise refuse("204", ("QPD", 1, 3), "the assigning authority searched is not a "
                         "known domain")
        value = parts.get("value")
        return Term("identifier", (identifier_token(system, value, any_system=system is None),))

    def _keep(self, state: _Continuation, offset: int, query: str) -> str:
        """A pointer to the rest of this answer, in the database (any listener takes it)."""
        pointer = secrets.token_hex(16)
        ranked = json.dumps(state.ranked) if state.ranked is not None else None
        expires = self._s.work.clock() + timedelta(seconds=CONTINUATION_TTL_S)
        self._s.senders.keep_continuation(pointer, StoredContinuation(
            state.sender, state.tag, query, offset, state.quantity, ranked, expires))
        return pointer

    def _take(self, pointer: str, sender: str, tag: str, query: str, criteria: Criteria,
              probe: dict[str, Any], wanted: frozenset[str] | None) -> _Continuation:
        """The state a pointer continues, used up; AE 204 on DSC-1 when it is unknown,
        used, cancelled, expired, another sender's, or continues another query."""
        stored = self._s.senders.take_continuation(pointer[:32])
        if (stored is None or stored.expires_at < self._s.work.clock()
                or (stored.sender, stored.tag, stored.query) != (sender, tag, query)):
            raise refuse("204", ("DSC", 1, 1), "unknown, expired or cancelled continuation "
                         "pointer (query again without DSC)")
        ranked = ([(str(r), float(p)) for r, p in json.loads(stored.ranked)]
                  if stored.ranked is not None else None)
        return _Continuation(sender, tag, criteria, probe, wanted, stored.position,
                             stored.quantity, ranked)

    def _cancel(self, message: Message, sender: StoredSender) -> list[str]:
        """QCN^J01: forget the continuation of the query QID-1 names."""
        tag = message.get("QID", 1)
        if not tag:
            raise refuse("101", ("QID", 1, 1), "QID-1 needs the query tag")
        self._s.senders.cancel_continuations(sender.name, tag)
        return self._ack(message, "AA")

    # --- acknowledgements ------------------------------------------------------------------

    def _resolve(self, found: Authority) -> str | None:
        """The identifier system an assigning authority names: its OID or URI, else the
        registered domain of its namespace id; None when it names no known one."""
        system = system_of(found)
        if system is not None:
            return system
        if found.namespace:
            domain = self._s.domains.by_namespace(found.namespace)
            if domain is not None:
                return str(domain.system)
        return None

    def _head(self, message: Message, message_type: str, status: str,
              text: str | None = None) -> list[str]:
        return [codec.msh(application=self._application, facility=self._facility,
                          to_application=codec.value(*message.components(message.raw("MSH", 3))),
                          to_facility=codec.value(*message.components(message.raw("MSH", 4))),
                          message_type=message_type, control_id=self._new_control_id(),
                          charset=message.charset, now=self._s.work.clock()),
                codec.segment("MSA", status, codec.escape(message.control_id[:199]),
                              codec.escape(text) if text else None)]

    def _ack(self, message: Message, status: str,
             problems: Sequence[Problem] = ()) -> list[str]:
        _code, event, _ = message.type
        segments = self._head(message, f"ACK^{codec.escape(event)}^ACK", status,
                              problems[0].reason if problems else None)
        segments.extend(_err(p) for p in problems)
        return segments

    def _error(self, message: Message, refused: Refusal) -> list[str]:
        code, event, _ = message.type
        if code == "QBP" and event in ("Q22", "Q23"):
            structure = "RSP^K23^RSP_K23" if event == "Q23" else "RSP^K22^RSP_K21"
            segments = self._head(message, structure, refused.status,
                                  refused.problems[0].reason if refused.problems else None)
            segments.extend(_err(p) for p in refused.problems)
            segments.append(codec.segment("QAK", codec.escape(message.get("QPD", 2)),
                                          refused.status))
            if message.segments("QPD"):
                segments.append(_echo(message, "QPD"))
            return segments
        return self._ack(message, refused.status, refused.problems)

    def _ack_unread(self, exc: MessageError) -> list[str]:
        """An ACK for a message that could not be read at all (no MSH-10 to name)."""
        return [codec.msh(application=self._application, facility=self._facility,
                          to_application="", to_facility="", message_type="ACK",
                          control_id=self._new_control_id(), charset="",
                          now=self._s.work.clock()),
                codec.segment("MSA", "AR", ""),
                _err(Problem(exc.code, exc.location, exc.reason))]

    def _receipt(self, sender: StoredSender, message: Message, ack: list[str]) -> Any:
        text = "\r".join(ack)
        receipts, control_id = self._s.senders.receipts, message.control_id
        return _Receipt(self._s.work, lambda tx: receipts.insert(
            sender.name, control_id, text, now=tx.now), self._s.senders, sender.name,
            control_id)


class _Receipt:
    """The acknowledgement written with the change; a concurrent twin of the same message
    (the same MSH-10 committed first) is answered with that one's acknowledgement."""

    def __init__(self, work: Any, write: Callable[[Any], None], senders: Any, sender: str,
                 control_id: str):
        self._attached = work.attached(write)
        self._senders, self._sender, self._control_id = senders, sender, control_id

    def __enter__(self) -> None:
        self._attached.__enter__()

    def __exit__(self, kind: Any, exc: Any, tb: Any) -> None:
        self._attached.__exit__(kind, exc, tb)
        if isinstance(exc, peewee.IntegrityError):
            stored = self._senders.receipt(self._sender, self._control_id)
            if stored is not None:
                raise _Resent(stored.split("\r")) from None


class _Resent(Refusal):
    def __init__(self, segments: list[str]):
        super().__init__("AA", [])
        self.segments = segments


def _ack_code(segments: list[str]) -> str:
    """MSA-1 of an answer (AA, AE, AR), for the metrics."""
    for segment in segments:
        if segment.startswith("MSA"):
            return segment[4:6] if segment[4:6] in ("AA", "AE", "AR") else "other"
    return "other"


def _domain_refusal(exc: DomainError) -> Refusal:
    if isinstance(exc, InvalidInput):
        return Refusal("AE", [_problem(p.field, p.reason, "PID") for p in exc.problems])
    if isinstance(exc, Forbidden):
        return refuse("207", ("PID", 1, 3), exc.message, status="AR")
    if isinstance(exc, NotFound):
        return refuse("204", ("PID", 1, 3), exc.message)
    if isinstance(exc, (ConcurrentChange, VersionMismatch)):
        return refuse("206", ("PID", 1, 3), "the record changed meanwhile; send again")
    if isinstance(exc, Conflict):
        return refuse("205", ("PID", 1, 3), exc.message)
    if isinstance(exc, StateConflict):
        return refuse("207", ("MSH", 1, 9), exc.message)
    if isinstance(exc, StorageUnavailable):
        return refuse("207", ("MSH", 1, 9), "the database is unavailable; send again")
    return refuse("207", ("MSH", 1, 9), exc.message)


def _problem(field: str, reason: str, segment: str) -> Problem:
    top = field.split(".", 1)[0].split("[", 1)[0]
    number = FIELD_LOCATIONS.get(top, 3)
    code = "101" if "needs" in reason or "required" in reason.lower() else "102"
    return Problem(code, (segment, 1, number), f"{field}: {reason}")


def _err(problem: Problem) -> str:
    location = codec.repetition(*(codec.escape(str(x)) for x in problem.location))
    return codec.segment("ERR", None, location,
                         codec.value(problem.code, CODES.get(problem.code, ""), "HL70357"),
                         problem.severity, None, None, codec.escape(problem.reason))


def _echo(message: Message, name: str) -> str:
    """A segment as received, re-encoded with the standard encoding characters."""
    seg = message.segments(name)[0]
    fields = []
    for number in range(1, len(seg)):
        reps = message.repetitions(name, number)
        fields.append([codec.repetition(*(
            codec.component(*(message.unescape(s) for s in c.split(message.separators[4])))
            for c in rep.split(message.separators[1]))) for rep in reps])
    return codec.segment(name, *fields)


def _digest(message: Message) -> str:
    """What identifies a query apart from its tag and its pointer: QPD-1 and QPD-3 to
    QPD-8 (a continuation must repeat them)."""
    fields = [message.raw("QPD", n) or "" for n in (1, 3, 4, 5, 6, 7, 8)]
    return hashlib.sha256("\x1f".join(fields).encode()).hexdigest()


def _identifiers(records: Sequence[Patient]) -> list[tuple[str, str, str | None]]:
    """(system, value, type) of every identifier of these records, each once: the
    enterprise id, each record's id in its source, and what the records carry."""
    out: list[tuple[str, str, str | None]] = []
    seen: set[tuple[str, str]] = set()

    def add(system: str, value: str, kind: str | None) -> None:
        if (system, value) not in seen:
            seen.add((system, value))
            out.append((system, value, kind))

    for patient in records:
        if patient.person_id:
            add(PERSON_SYSTEM, patient.person_id, "PI")
        add(SOURCE_SYSTEM + patient.source, patient.source_id, "MR")
        for ident in patient.identifiers:
            add(ident.system, ident.value, ident.type)
    return out


def _returned(system: str, wanted: frozenset[str] | None) -> bool:
    """Whether an identifier in ``system`` is returned: every one when no domain is asked
    for, except a source's own record ids (``urn:mpi:source:``), which HL7 consumers know
    by the identifier in the source's domain; those only when asked for by name."""
    if wanted is None:
        return not system.startswith(SOURCE_SYSTEM)
    return system in wanted


def _date_range(value: str, location: tuple[object, ...]) -> Any:
    digits = value[:8]
    if not digits.isdigit() or len(digits) not in (4, 6, 8):
        raise refuse("102", (*location, 2), "a birth date is YYYY, YYYYMM or YYYYMMDD")
    text = "-".join(x for x in (digits[:4], digits[4:6], digits[6:8]) if x)
    try:
        return parse_date(text)
    except ValueError:
        raise refuse("102", (*location, 2), "not a real date") from None


def _note(probe: dict[str, Any], subject: str | None, value: str) -> None:
    """Keep a searched value in the query's record form (for QRI-1)."""
    value = value.rstrip("*")
    if subject == "family":
        probe["family"] = value
    elif subject == "given":
        probe.setdefault("given", []).append(value)
    elif subject == "birthdate" and len(value) >= 8 and value[:8].isdigit():
        probe["birth_date"] = f"{value[:4]}-{value[4:6]}-{value[6:8]}"
    elif subject == "gender":
        gender = {"M": "male", "F": "female", "O": "other", "U": "unknown"}.get(value.upper())
        if gender:
            probe["gender"] = gender
    elif subject == "mothersMaidenName":
        probe["mothers_maiden_name"] = value
    elif subject == "telecom":
        probe["telecom"] = [{"system": "phone", "value": value}]
    elif subject == "ssn":
        probe["identifiers"] = [{"system": SSN_SYSTEM, "value": value}]
    elif subject and subject.startswith("address"):
        key = {"address": "line", "address-city": "city", "address-state": "state",
               "address-postalcode": "postal_code", "address-country": "country"}[subject]
        address = probe.setdefault("address", {})
        address[key] = [value] if key == "line" else value


#: QPD-3 field paths (ITI-21) and what they search.
_PDQ_FIELDS = {
    "PID.3": "identifier", "PID.3.1": "identifier",
    "PID.3.4": "authority", "PID.3.4.1": "authority1", "PID.3.4.2": "authority2",
    "PID.3.4.3": "authority3",
    "PID.5": "family", "PID.5.1": "family", "PID.5.1.1": "family", "PID.5.2": "given",
    "PID.5.3": "given",
    "PID.6": "mothersMaidenName", "PID.6.1": "mothersMaidenName",
    "PID.6.1.1": "mothersMaidenName",
    "PID.7": "birthdate", "PID.7.1": "birthdate",
    "PID.8": "gender",
    "PID.11": "address", "PID.11.1": "address", "PID.11.1.1": "address",
    "PID.11.3": "address-city", "PID.11.4": "address-state",
    "PID.11.5": "address-postalcode", "PID.11.6": "address-country",
    "PID.13": "telecom", "PID.13.1": "telecom", "PID.14": "telecom", "PID.14.1": "telecom",
    "PID.19": "ssn",
}
