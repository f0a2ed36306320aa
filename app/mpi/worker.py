"""The gunicorn worker: requests are read whole by the event loop, then handed to a thread.

Why not gunicorn's own workers. A slow client (one header line every few seconds: a
"slowloris", or a sick network) holds whatever reads its request until the request is
complete. gunicorn's ``sync`` worker reads in its only thread: WORKERS + 1 such
connections made every request wait. Its ``gthread`` worker waits for the *first* bytes
in its event loop but then reads the rest in a pool thread, blocking: THREADS x WORKERS
such connections stopped the service, and no timeout fires, because the loop that
reports the worker alive keeps running. ``gevent`` would fix it by making every blocking
call cooperative, but it monkey-patches the process after the master imported the
application, and psycopg, SQLite, whoosh and the matcher would then share one OS thread
per worker (a CPU-bound match would stall every other request of that worker). A
buffering proxy (nginx) in front fixes it too, and the shipped compose and Kubernetes
files have one; the bare-host PEX does not, so the service must hold on its own.

This worker is gunicorn's ``gthread`` worker with one change: a connection's request
(its head, and its body up to :data:`MAX_BUFFERED_BODY` when Content-Length or chunked
framing says how long it is) is read without blocking by the worker's event loop, as
bytes arrive, into a buffer; only a complete request goes to a thread, which then parses
it from memory (with THREADS=1, the default, the loop's own thread serves it: see
:meth:`BufferingThreadWorker._serve_here`). Waiting connections cost a socket and a
buffer, not a thread. A
connection whose request is not complete :data:`REQUEST_READ_TIMEOUT_S` after the
connection became ready for it (accepted, or its previous response sent) is closed. A
client that asks ``Expect: 100-continue`` is told to go on by the loop, which then
buffers the body like any other.

REQUEST_TIMEOUT keeps its meaning: a request running longer than it has its worker
restarted. gunicorn restarts a worker that stops reporting itself alive for that long;
a ``gthread`` worker's loop reports even while a thread is stuck, so this one stops
reporting while a request it handed to a thread is older than :data:`REPORT_GRACE_S`.

Served over TLS directly (TLS_CERT_FILE), the worker cannot read ahead of the TLS layer
without doing the handshake in the loop: such connections are handled as ``gthread``
handles them (DEPLOY.md says to terminate TLS at a proxy where slow clients are a risk).
"""

from __future__ import annotations

import contextlib
import io
import re
import selectors
import signal
import time
from collections.abc import Iterator
from concurrent.futures import Future
from functools import partial
from typing import Any

from gunicorn.workers.gthread import ThreadWorker

#: A request head (request line and headers) larger than this goes to the parser as it
#: is, which refuses it (gunicorn's limits are smaller); no need to buffer more.
MAX_HEAD = 64 * 1024
#: Bodies are buffered up to this size (the API refuses bodies over 1 MiB with 413;
#: a larger one is handed over once this much is in, for the API to refuse).
MAX_BUFFERED_BODY = 1024 * 1024 + 1024
#: A request must be complete this long after the connection became ready for one.
REQUEST_READ_TIMEOUT_S = 15.0
#: The worker stops reporting itself alive while a request in a thread is older than this
#: (so gunicorn restarts it about REQUEST_TIMEOUT + this after the request began).
REPORT_GRACE_S = 1.0
#: The signals gunicorn's master handles (and SIGCHLD): held while it forks a worker, and
#: released by the worker once its own handlers are in place (:func:`signals_held`).
MASTER_SIGNALS = frozenset({signal.SIGHUP, signal.SIGQUIT, signal.SIGINT, signal.SIGTERM,
                            signal.SIGTTIN, signal.SIGTTOU, signal.SIGUSR1, signal.SIGUSR2,
                            signal.SIGWINCH, signal.SIGCHLD})
_RECV = 65536
_CONTENT_LENGTH = re.compile(rb"^content-length[ \t]*:[ \t]*(\d{1,12})[ \t]*\r?$", re.I | re.M)
_CHUNKED = re.compile(rb"^transfer-encoding[ \t]*:.*chunked", re.I | re.M)
_EXPECT_CONTINUE = re.compile(rb"^expect[ \t]*:[ \t]*100-continue[ \t]*\r?$", re.I | re.M)


class _Reading:
    """A connection whose request is being read by the loop."""

    __slots__ = ("buffer", "continued", "deadline")

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.deadline = time.monotonic() + REQUEST_READ_TIMEOUT_S
        self.continued = False


def request_complete(buffer: bytes | bytearray) -> tuple[bool, bool]:
    """(complete, wants 100-continue) for the bytes of a request read so far."""
    end = buffer.find(b"\r\n\r\n")
    if end < 0:
        return len(buffer) > MAX_HEAD, False
    head, body = bytes(buffer[:end + 2]), len(buffer) - end - 4
    expects = _EXPECT_CONTINUE.search(head) is not None
    if _CHUNKED.search(head):
        # The last chunk is "0" then the (empty) trailer section.
        return body > MAX_BUFFERED_BODY or buffer.find(b"0\r\n\r\n", end + 4) >= 0, expects
    lengths = _CONTENT_LENGTH.findall(head)
    if len(lengths) != 1:
        return True, False  # none (no body), or conflicting ones: the parser decides
    return body >= min(int(lengths[0]), MAX_BUFFERED_BODY), expects


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """MASTER_SIGNALS held (blocked, not lost) inside the block, in this thread: gunicorn's
    master forks its workers inside it (``mpi.server``).

    A new worker runs the master's signal handlers until it installs its own
    (``init_signals``, after the ``post_fork`` hook); the master's handler only queues a
    signal for the master's loop, so in the worker it is lost. A SIGTERM that the master
    passed on while it was forking a worker was therefore ignored by that worker: it went
    on serving, the master waited GRACEFUL_TIMEOUT for it and then killed it (found by
    ``tests/deploy/test_systemd.py`` in CI: a stop sent 85 ms after the start). Held
    across the fork, such a signal stays pending in the worker until
    :meth:`BufferingThreadWorker.init_signals` releases it to the worker's own handler,
    and in the master until the fork returns."""
    before = signal.pthread_sigmask(signal.SIG_BLOCK, MASTER_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


class BufferingThreadWorker(ThreadWorker):  # type: ignore[misc]
    """gunicorn's gthread worker, reading each request whole in its event loop first."""

    def init_signals(self) -> None:
        """gunicorn's handlers, then the signals the master held over the fork released
        (:func:`signals_held`): one that arrived meanwhile is handled now."""
        super().init_signals()
        signal.pthread_sigmask(signal.SIG_UNBLOCK, MASTER_SIGNALS)

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._reading: dict[Any, _Reading] = {}
        self._running: dict[Any, float] = {}  # connection -> when its request went to a thread
        self._serving = False  # the loop's thread serves a request (THREADS=1)

    def notify(self) -> None:
        """Report alive, unless a request has been in a thread for over REPORT_GRACE_S."""
        oldest = min(self._running.values(), default=None)
        if oldest is None or time.monotonic() - oldest < REPORT_GRACE_S:
            super().notify()

    def finish_request(self, conn: Any, fs: Any) -> None:
        self._running.pop(conn, None)
        super().finish_request(conn, fs)

    def enqueue_req(self, conn: Any) -> None:
        """Instead of a thread: the loop reads the request, unless it is already read."""
        ready = getattr(conn, "mpi_request_ready", False)
        # Bytes a client pipelined behind its previous request, already read.
        ahead = conn.parser.unreader.buf.getvalue() if conn.parser is not None else b""
        if ahead and not ready:
            ready = request_complete(ahead)[0]
        if ready or self.cfg.is_ssl or conn.is_http2:
            conn.mpi_request_ready = False
            if ready and self.cfg.threads == 1 and not self.cfg.is_ssl and not conn.is_http2:
                self._serve_here(conn)
                return
            self._running[conn] = time.monotonic()
            super().enqueue_req(conn)
            return
        reading = _Reading()
        if ahead:  # part of a request: the loop reads the rest, as for any other
            conn.parser.unreader.buf = io.BytesIO()
            reading.buffer += ahead
        conn.sock.setblocking(False)
        self._reading[conn] = reading
        self.poller.register(conn.sock, selectors.EVENT_READ,
                             partial(self._on_request_bytes, conn))

    def _serve_here(self, conn: Any) -> None:
        """Serve a request the loop has read whole in the loop's own thread (THREADS=1).

        With one thread a worker serves one request at a time either way; handing it to
        the pool cost each request two thread switches and the GIL passed back and forth
        (about seven futex calls and a pipe write and read a request, measured with
        strace). The request is in memory (a body up to MAX_BUFFERED_BODY), so serving it
        waits on the client only to write the response. Meanwhile the loop neither reads
        nor accepts: other connections wait in the kernel, and the listening socket's new
        ones go to the workers that are free. A request running past REQUEST_TIMEOUT stops
        this loop's reports, and gunicorn restarts the worker, as before.

        A request the client pipelined behind this one is served at the loop's next turn
        (finishing this one hands it over from here): not from inside this call, where a
        client sending thousands of small requests at once would nest as many."""
        if self._serving:
            self.method_queue.defer(self._serve_here, conn)
            return
        self._serving = True
        try:
            done: Future[Any] = Future()
            done.set_result(self.handle(conn))  # handle() answers a request's errors itself
            self.finish_request(conn, done)
        finally:
            self._serving = False

    def _on_request_bytes(self, conn: Any, _sock: Any) -> None:
        reading = self._reading[conn]
        try:
            data = conn.sock.recv(_RECV)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:  # the client went away before its request was complete
            self._drop(conn)
            return
        reading.buffer += data
        complete, expects = request_complete(reading.buffer)
        if expects and not complete and not reading.continued:
            reading.continued = True
            try:
                conn.sock.send(b"HTTP/1.1 100 Continue\r\n\r\n")
            except OSError:
                self._drop(conn)
                return
        if complete:
            self.poller.unregister(conn.sock)
            del self._reading[conn]
            conn.sock.setblocking(True)
            conn.init()  # the parser (plain HTTP/1.x here), which reads from the buffer
            conn.parser.unreader.unread(bytes(reading.buffer))
            conn.data_ready = True
            conn.mpi_request_ready = True
            self.enqueue_req(conn)

    def _drop(self, conn: Any) -> None:
        self._reading.pop(conn, None)
        with contextlib.suppress(KeyError, ValueError, OSError):
            self.poller.unregister(conn.sock)
        self.nr_conns -= 1
        conn.close()

    def murder_pending(self) -> None:
        """gunicorn's pending connections, and requests not read in time."""
        super().murder_pending()
        now = time.monotonic()
        for conn in [c for c, r in self._reading.items() if r.deadline <= now]:
            self._drop(conn)
