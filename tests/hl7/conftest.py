"""A real MLLP listener on a loopback port, over the test's database, and a client that
speaks raw MLLP to it; messages built the way interface engines write them."""

from __future__ import annotations

import dataclasses
import socket
import threading
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message

from mpi.hl7.listener import bind, listen
from mpi.wiring import Services

ST_MARYS = "1.2.840.114350.1.13.99.2"
LAB = "2.16.840.1.113883.3.72.5.9.2"
START, END = b"\x0b", b"\x1c\r"


@dataclass
class Mllp:
    port: int
    sent: int = 0
    sockets: list[socket.socket] = field(default_factory=list)

    def connect(self) -> socket.socket:
        conn = socket.create_connection(("127.0.0.1", self.port), timeout=20)
        self.sockets.append(conn)
        return conn

    def exchange(self, message: str | bytes, conn: socket.socket | None = None,
                 *, encoding: str = "utf-8") -> str:
        """Send one framed message, return the framed answer's text."""
        conn = conn or self.connect()
        data = message if isinstance(message, bytes) else message.encode(encoding)
        conn.sendall(START + data + END)
        return read_frame(conn).decode(encoding)

    def close(self) -> None:
        for conn in self.sockets:
            conn.close()


# Bytes read past a frame's end (the next answer, when two arrive in one read), by socket.
_AHEAD: weakref.WeakKeyDictionary[socket.socket, bytes] = weakref.WeakKeyDictionary()


def read_frame(conn: socket.socket) -> bytes:
    """The next frame's content. Two answers may arrive in one read (pipelined
    messages): the second is kept for the next call."""
    buf = _AHEAD.pop(conn, b"")
    while END not in buf:
        chunk = conn.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed after {buf!r}")
        buf += chunk
    frame, _, rest = buf.partition(END)
    if rest:
        _AHEAD[conn] = rest
    assert frame.startswith(START), frame
    return frame[1:]


def segments(answer: str) -> dict[str, list[list[str]]]:
    """Segment name -> each occurrence's fields (index = field number; MSH shifted so
    that MSH-n is at n)."""
    out: dict[str, list[list[str]]] = {}
    for line in answer.strip("\r").split("\r"):
        fields = line.split("|")
        if fields[0] == "MSH":
            fields.insert(1, "|")
        out.setdefault(fields[0], []).append(fields)
    return out


def _ihe_query_parameters() -> None:
    """IHE's query profiles make QPD-3 a repeating QIP (ITI-21: ``@PID.5.1.1^SMITH~...``)
    and QPD-4..8 further parameters; the base v2.5 QPD that hl7apy checks has QPD-3 as
    one ``varies`` field. Widen exactly that (in the segment table and in the message
    structures that embed it), keeping every other strict rule."""
    from hl7apy.v2_5 import messages, segments

    kind, children = segments.SEGMENTS["QPD"][:2]
    if len(children) > 3:
        return
    qpd3 = children[2]
    widened = (kind, (*children[:2], (qpd3[0], qpd3[1], (0, -1), qpd3[3]),
                      *[(f"QPD_{n}", qpd3[1], (0, -1), qpd3[3]) for n in range(4, 9)]))
    segments.SEGMENTS["QPD"] = widened

    def rebuilt(node: object) -> object:
        if isinstance(node, tuple) and len(node) == 4 and node[0] == "QPD" and node[3] == "SEG":
            return ("QPD", widened, node[2], node[3])
        if isinstance(node, (tuple, list)):
            return type(node)(rebuilt(n) for n in node)
        return node

    for name in ("RSP_K21", "RSP_K22", "RSP_K23", "QBP_Q21"):
        if name in messages.MESSAGES:
            messages.MESSAGES[name] = rebuilt(messages.MESSAGES[name])


def strictly_valid(answer: str) -> None:
    """hl7apy's strict v2.5 validation of what the service wrote."""
    _ihe_query_parameters()
    message = parse_message(answer.replace("\n", "\r"), validation_level=VALIDATION_LEVEL.STRICT,
                            find_groups=True)
    message.validate()


def adt(event: str, pid: str, *, control_id: str, application: str = "ADT1",
        facility: str = "STMARYS", extra: str = "", charset: str = "UNICODE UTF-8",
        structure: str | None = None) -> str:
    structure = structure or {"A40": "ADT_A39", "A08": "ADT_A01", "A04": "ADT_A01",
                              "A05": "ADT_A05", "A28": "ADT_A05", "A31": "ADT_A05"}.get(
        event, "ADT_A01")
    lines = [f"MSH|^~\\&|{application}|{facility}|MPI|HOSP|20261204101500||ADT^{event}^"
             f"{structure}|{control_id}|P|2.5|||AL|NE||{charset}",
             f"EVN|{event}|20261204101500", pid]
    if extra:
        lines.append(extra)
    if event != "A40":
        lines.append("PV1|1|O")
    return "\r".join(lines)


def pid(mrn: str, *, family: str = "EVERYMAN", given: str = "ADAM", middle: str = "A",
        birth: str = "19610615", sex: str = "M", ssn: str = "",
        authority: str = f"STMARYS&{ST_MARYS}&ISO", more: str = "") -> str:
    ids = f"{mrn}^^^{authority}^MR" + (f"~{more}" if more else "")
    return (f"PID|1||{ids}||{family}^{given}^{middle}^^^^L||{birth}|{sex}|||"
            f"2222 HOME STREET^^GREENSBORO^NC^27401-1020^USA^H||^PRN^PH^^1^555^5552004|"
            f"^WPN^PH^^1^555^5553000||M|||{ssn}")


def pix_query(identifier: str, *, domains: str = "", control_id: str = "Q1",
              tag: str = "T1", application: str = "ADT1", facility: str = "STMARYS") -> str:
    return "\r".join([
        f"MSH|^~\\&|{application}|{facility}|MPI|HOSP|20261204101500||QBP^Q23^QBP_Q21|"
        f"{control_id}|P|2.5",
        f"QPD|IHE PIX Query|{tag}|{identifier}|{domains}",
        "RCP|I"])


def pdq_query(params: str, *, domains: str = "", quantity: str = "", control_id: str = "P1",
              tag: str = "T2", pointer: str = "") -> str:
    lines = [f"MSH|^~\\&|ADT1|STMARYS|MPI|HOSP|20261204101500||QBP^Q22^QBP_Q21|{control_id}"
             f"|P|2.5",
             f"QPD|IHE PDQ Query|{tag}|{params}|||||{domains}",
             f"RCP|I|{quantity}" if quantity else "RCP|I"]
    if pointer:
        lines.append(f"DSC|{pointer}|I")
    return "\r".join(lines)


def register(services: Services, *, certificate: str | None = None,
             scopes: tuple[str, ...] = ("system/Patient.cruds",)) -> None:
    """St Mary's domain and its ADT sender; a lab domain and the lab's sender."""
    from mpi.domain.audit import Actor
    from mpi.domain.domains import IdentityDomainInput

    admin = Actor(user_id="test-admin")
    with services.work.reading():
        pass
    services.domains.add(IdentityDomainInput(system=f"urn:oid:{ST_MARYS}", name="St Mary's MRN",
                                             sources=["st-marys"], namespace="STMARYS"), admin)
    services.domains.add(IdentityDomainInput(system=f"urn:oid:{LAB}", name="Lab",
                                             sources=["lab"], namespace="LAB"), admin)
    services.senders.add("st-marys-adt", application="ADT1", facility="STMARYS",
                         sources="st-marys", scopes=scopes, certificate=certificate,
                         actor=admin)
    services.senders.add("lab-feed", application="LABSYS", facility="LAB", sources="lab",
                         actor=admin)


@pytest.fixture
def listener(services: Services) -> Iterator[Callable[..., Mllp]]:
    """Start a listener (with settings overrides) on a free loopback port."""
    started: list[tuple[threading.Thread, list[Callable[[], None]], socket.socket]] = []
    clients: list[Mllp] = []

    def start(**overrides: Any) -> Mllp:
        settings = dataclasses.replace(services.settings, hl7_mllp_port=0,
                                       hl7_mllp_host="127.0.0.1", **overrides)
        sock = bind(settings)
        ready = threading.Event()
        stoppers: list[Callable[[], None]] = []
        thread = threading.Thread(target=listen, args=(settings, services, sock, ready.set,
                                                       stoppers.append), daemon=True)
        thread.start()
        assert ready.wait(10)
        started.append((thread, stoppers, sock))
        client = Mllp(sock.getsockname()[1])
        clients.append(client)
        return client

    yield start
    for client in clients:
        client.close()
    for thread, stoppers, sock in started:
        for stop in stoppers:
            stop()
        thread.join(10)
        sock.close()
