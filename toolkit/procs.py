"""Small process and network helpers shared by the toolkit (standard library only)."""

from __future__ import annotations

import http.client
import socket
import urllib.parse
from pathlib import Path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def log_tail(path: Path, lines: int = 20, *, missing: str = "(no log)",
             empty: str = "(log is empty)") -> str:
    """The last ``lines`` lines of a log file, for error messages."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return missing
    return "\n".join(text.splitlines()[-lines:]) or empty


class _UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP over a unix socket."""

    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


def engine_connection(docker_host: str, timeout: float) -> http.client.HTTPConnection | None:
    """A connection to a Docker-compatible API (``unix://`` or plain ``tcp://``/``http://``)."""
    parsed = urllib.parse.urlsplit(docker_host)
    if parsed.scheme == "unix":
        path = parsed.path or parsed.netloc
        return _UnixHTTPConnection(path, timeout) if path else None
    if parsed.scheme in {"tcp", "http"} and parsed.hostname:
        return http.client.HTTPConnection(parsed.hostname, parsed.port or 2375, timeout=timeout)
    return None


def docker_ping(docker_host: str, timeout: float) -> bool:
    """Whether the API at ``docker_host`` answers ``GET /_ping`` with ``OK``. Never raises."""
    try:
        conn = engine_connection(docker_host, timeout)
        if conn is None:
            return False
        try:
            conn.request("GET", "/_ping", headers={"Host": "docker"})
            response = conn.getresponse()
            body = response.read(64)
        finally:
            conn.close()
    except Exception:
        return False
    return response.status == 200 and body.strip() == b"OK"
