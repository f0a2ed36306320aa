"""The MLLP listener: HL7 v2 messages framed ``0x0B ... 0x1C 0x0D`` on a TCP (or TLS)
socket, each answered on the same connection before the next is read.

python-hl7's asyncio streams do the framing; an event loop takes the connections and a
pool of HL7_MLLP_THREADS threads runs the messages (each on a pooled database
connection). A connection whose bytes are not MLLP (no start block, a frame larger than
:data:`MAX_FRAME`, cut off mid-frame) is closed; a frame that is not a message is
answered with an AR acknowledgement. Under ``mpi serve`` the listener is a process the
gunicorn master forks and revives, as it does the search indexer; ``mpi hl7 listen``
runs it alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import ssl
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from hl7.mllp import HL7StreamProtocol, HL7StreamReader, InvalidBlockError

from mpi import heap
from mpi.config import Settings
from mpi.hl7.handler import Hl7Handler, Peer
from mpi.lifecycle import ChildProcess, lower_priority, process_alive, when_orphaned

log = logging.getLogger("mpi.hl7")

#: The largest frame read (a message with many repetitions is a few kilobytes).
MAX_FRAME = 1 << 20
#: A connection idle this long between messages is closed.
IDLE_TIMEOUT_S = 600.0
#: How often old acknowledgements are pruned (HL7_RECEIPT_RETENTION_DAYS), from the start.
PRUNE_EVERY_S = 3600.0


def bind(settings: Settings) -> socket.socket:
    """The listening socket (bound in the master, so a port in use is a start-up error and
    a revived listener takes the same socket)."""
    host = settings.mllp_host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, settings.hl7_mllp_port or 0))
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"HL7_MLLP_PORT: cannot listen on {host}:"
                                 f"{settings.hl7_mllp_port}: {exc.strerror}") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def tls_context(settings: Settings) -> ssl.SSLContext | None:
    if settings.hl7_mllp_tls_cert_file is None or settings.hl7_mllp_tls_key_file is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(settings.hl7_mllp_tls_cert_file),
                            str(settings.hl7_mllp_tls_key_file))
    if settings.hl7_mllp_tls_client_ca_file is not None:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(str(settings.hl7_mllp_tls_client_ca_file))
    return context


def _common_name(peercert: Any) -> str | None:
    for rdn in (peercert or {}).get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return None


class AcceptShare:
    """How many connections each of the listener processes on one socket holds, in memory
    they all share (made before they are forked), so that the one holding fewest takes
    the next. MLLP connections last hours (one per interface), and left to the kernel,
    whichever process woke first took it: with two processes and four feeds, one held
    three (measured), and its core bounded the feed while the other idled."""

    def __init__(self, processes: int):
        import mmap

        self.processes = processes
        # An anonymous shared mapping, inherited by every process forked after it (no file,
        # so it works on a read-only root and without /dev/shm): per process, its pid and
        # how many connections it holds.
        self._memory = mmap.mmap(-1, 16 * processes)
        self._slots: Any = memoryview(self._memory).cast("q")

    def slot(self, n: int) -> AcceptSlot:
        return AcceptSlot(self, n)


class AcceptSlot:
    """One listener process's place in an :class:`AcceptShare`."""

    def __init__(self, share: AcceptShare, n: int):
        self._share, self._n = share, n

    def claim(self) -> None:
        """In the (new) process: its pid, and no connections yet."""
        slots = self._share._slots
        slots[2 * self._n], slots[2 * self._n + 1] = os.getpid(), 0

    def add(self, delta: int) -> None:
        self._share._slots[2 * self._n + 1] += delta

    def may_accept(self) -> bool:
        """Whether no live sibling holds fewer connections than this process."""
        slots = self._share._slots
        mine = slots[2 * self._n + 1]
        for n in range(self._share.processes):
            pid, held = slots[2 * n], slots[2 * n + 1]
            if n != self._n and held < mine and pid > 0 and process_alive(pid):
                return False
        return True


#: How often a listener process that should not take the next connection looks again.
ACCEPT_RECHECK_S = 0.02


def listen(settings: Settings, services: Any, sock: socket.socket,
           ready: Callable[[], None] = lambda: None,
           stopper: Callable[[Callable[[], None]], None] | None = None,
           share: AcceptSlot | None = None) -> None:
    """Serve MLLP on ``sock`` until SIGTERM/SIGINT; ``stopper`` is handed a function that
    stops it from any thread (tests, and a host that embeds it); ``share``, this
    process's place among several on the socket (it then takes a connection only while
    no sibling holds fewer)."""
    handler = Hl7Handler(services, application=settings.hl7_application,
                         facility=settings.hl7_facility,
                         certificates_required=settings.hl7_mllp_tls_client_ca_file is not None)
    pool = ThreadPoolExecutor(settings.hl7_mllp_threads, thread_name_prefix="mllp")
    services.upkeep.start()  # it links records as the workers do
    try:
        asyncio.run(_serve(handler, services, settings, sock, pool, ready, stopper, share))
    finally:
        pool.shutdown(wait=True)
        services.upkeep.stop()


async def _serve(handler: Hl7Handler, services: Any, settings: Settings, sock: socket.socket,
                 pool: ThreadPoolExecutor, ready: Callable[[], None],
                 stopper: Callable[[Callable[[], None]], None] | None,
                 share: AcceptSlot | None) -> None:
    from mpi.storage.db import connection

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    if stopper is not None:
        def stop_soon() -> None:
            loop.call_soon_threadsafe(stop.set)

        stopper(stop_soon)
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(ValueError, RuntimeError):  # not the main thread
            loop.add_signal_handler(sig, stop.set)

    db = services.db

    def run(block: bytes, peer: Peer) -> bytes:
        with connection(db):
            return handler.handle(block, peer)

    async def on_client(reader: Any, writer: Any) -> None:
        address = writer.get_extra_info("peername")
        peer = Peer(ip=address[0] if address else None,
                    certificate=_common_name(writer.get_extra_info("peercert")))
        try:
            while not stop.is_set():
                try:
                    block = await asyncio.wait_for(reader.readblock(), IDLE_TIMEOUT_S)
                except (asyncio.IncompleteReadError, ConnectionError, TimeoutError):
                    break  # closed, cut off mid-frame, or idle
                except (InvalidBlockError, ValueError):
                    log.warning("MLLP: not a frame (no start block, or too large); "
                                "connection closed", extra={"peer": peer.ip})
                    break
                answer = await loop.run_in_executor(pool, run, block, peer)
                writer.writeblock(answer)
                await writer.drain()
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            if share is not None:
                share.add(-1)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    tls = tls_context(settings)
    handshakes: set[asyncio.Task[None]] = set()

    def protocol() -> HL7StreamProtocol:  # as python-hl7's start_hl7_server makes it
        return HL7StreamProtocol(HL7StreamReader(limit=MAX_FRAME), on_client)

    async def connected(conn: socket.socket) -> None:
        try:
            await loop.connect_accepted_socket(protocol, conn, ssl=tls)
        except (OSError, ssl.SSLError):  # a failed TLS handshake, a client gone
            conn.close()
            if share is not None:
                share.add(-1)  # (on_client, which gives it back otherwise, never runs)

    async def accepting() -> None:
        """Take connections (the one process of several holding fewest takes the next)
        and hand each to python-hl7's stream protocol."""
        while True:
            if share is not None and not share.may_accept():
                await asyncio.sleep(ACCEPT_RECHECK_S)
                continue
            try:
                conn, _ = await loop.sock_accept(sock)
            except (BlockingIOError, InterruptedError):
                continue  # a sibling took it
            except OSError as exc:  # out of file descriptors, say: not the listener's end
                log.warning("MLLP: accepting a connection failed: %s", type(exc).__name__)
                await asyncio.sleep(0.5)
                continue
            if share is not None:
                share.add(1)  # now, before the next look: it is this process's to serve
            conn.setblocking(False)
            task = loop.create_task(connected(conn))
            handshakes.add(task)  # held until done (the loop keeps only weak references)
            task.add_done_callback(handshakes.discard)

    def prune() -> None:
        with connection(db):
            gone = services.senders.prune_receipts(settings.hl7_receipt_retention_days)
        if gone:
            log.info("HL7: forgot %d acknowledgements older than %d days", gone,
                     settings.hl7_receipt_retention_days)

    async def housekeeping() -> None:
        while not stop.is_set():
            try:
                await loop.run_in_executor(pool, prune)
            except Exception as exc:  # the database may be away; try again next time
                log.warning("HL7: pruning acknowledgements failed: %s", type(exc).__name__)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), PRUNE_EVERY_S)

    keeper = asyncio.create_task(housekeeping())
    sock.setblocking(False)
    if share is not None:
        share.claim()
    acceptor = asyncio.create_task(accepting())
    log.info("HL7 MLLP listener on %s:%s%s", settings.mllp_host, sock.getsockname()[1],
             " (TLS)" if settings.hl7_mllp_tls_cert_file else "")
    ready()
    await stop.wait()
    acceptor.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await acceptor
    await keeper


class ListenerProcess(ChildProcess):
    """The listener as a child of the gunicorn master: it builds its own services after
    the fork and serves the socket bound before it."""

    def __init__(self, settings: Settings, build: Callable[[], Any], sock: socket.socket, *,
                 name: str = "HL7 MLLP listener", share: AcceptSlot | None = None):
        def body(ready: Callable[[], None]) -> None:
            for sig in (signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2, signal.SIGTTIN,
                        signal.SIGTTOU, signal.SIGWINCH):
                signal.signal(sig, signal.SIG_IGN)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            # It serves requests as the workers do: below the search indexer, like them
            # (SEARCH_WORKER_NICENESS), so a burst of messages cannot starve the index.
            lower_priority(settings.search_worker_niceness)
            heap.hold_long_lived()  # its matching engine's cache, as in a worker
            services = build()
            when_orphaned(lambda: os.kill(os.getpid(), signal.SIGTERM))
            try:
                listen(settings, services, sock, ready, share=share)
            finally:
                with contextlib.suppress(Exception):
                    services.close()

        super().__init__(body, name, ready_words=("listens", "is not ready yet"))
