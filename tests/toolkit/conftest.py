"""A fake Docker-compatible API on a unix socket, for the engine and PostgreSQL helpers."""

from __future__ import annotations

import http.server
import socketserver
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest


class _FakeApiHandler(http.server.BaseHTTPRequestHandler):
    """Answers ``/_ping`` with ``status``/``body``; fails every other call with 500."""

    status = 200
    body = b"OK"

    def do_GET(self) -> None:
        if self.path.endswith("/_ping"):
            self._reply(self.status, self.body)
        else:
            self._reply(500, b'{"message": "fake engine: not implemented"}')

    do_POST = do_GET
    do_HEAD = do_GET

    def _reply(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def address_string(self) -> str:  # unix sockets have no client address
        return "fake-client"

    def log_message(self, format: str, *args: object) -> None:
        pass


class _UnixServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


@pytest.fixture
def serve_unix(tmp_path: Path) -> Iterator[Callable[..., Path]]:
    """Start fake APIs: ``serve_unix(status=200, body=b"OK")`` returns the socket path."""
    servers: list[_UnixServer] = []

    def start(status: int = 200, body: bytes = b"OK") -> Path:
        path = tmp_path / f"api-{len(servers)}.sock"
        handler = type("Handler", (_FakeApiHandler,), {"status": status, "body": body})
        server = _UnixServer(str(path), handler)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True).start()
        servers.append(server)
        return path

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()
