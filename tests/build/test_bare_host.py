"""The PEX runs on a bare host: a root filesystem with nothing but Debian's CPython 3.11.

The root filesystem is made from the runtime image's locked Debian packages
(images/runtime/packages.lock), entered with unshare + chroot, so no file of
this machine's Python, site-packages or PostgreSQL is visible to the PEX.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from images import debian
from tests.helpers import patient, stop_process

ROOT = Path(__file__).resolve().parents[2]
DEFINITION = ROOT / "images" / "runtime"

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="chroot needs root (CI runs as root)")


@pytest.fixture(scope="session")
def rootfs(builds, tmp_path_factory) -> Path:
    packages = debian.read_lock(DEFINITION / "packages.lock")
    debs = debian.fetch(packages, ROOT / ".cache" / "debian", log=lambda _m: None)
    root = tmp_path_factory.mktemp("bare") / "root"
    debian.extract(debs, root)
    for directory in ("tmp", "proc", "dev", "data"):
        (root / directory).mkdir(exist_ok=True)
    (root / "tmp").chmod(0o1777)
    for name, minor in (("null", 3), ("zero", 5), ("random", 8), ("urandom", 9)):
        os.mknod(root / "dev" / name, 0o666 | 0o020000, os.makedev(1, minor))
    shutil.copyfile(builds[0].layout.pex, root / "mpi.pex")
    return root


def chroot_cmd(root: Path, *args: str, env: dict[str, str]) -> list[str]:
    """Run ``args`` inside ``root`` with exactly ``env`` (nothing of ours inherited). The
    command is the new PID namespace's first process; ``--kill-child`` passes it SIGTERM
    when unshare is stopped (without it, stopping unshare left the server running)."""
    return ["env", "-i", *(f"{k}={v}" for k, v in env.items()),
            "unshare", "--mount", "--pid", "--kill-child=SIGTERM",
            f"--mount-proc={root / 'proc'}", "chroot", str(root), *args]


BASE_ENV = {"PATH": "/usr/sbin:/usr/bin", "HOME": "/tmp", "PEX_ROOT": "/tmp/pex", "LANG": "C.UTF-8"}


def test_the_root_filesystem_has_only_the_interpreter(rootfs):
    assert not (rootfs / "usr" / "bin" / "sh").exists()
    assert not (rootfs / "usr" / "lib" / "postgresql").exists()
    assert not list((rootfs / "usr" / "lib" / "python3.11").glob("site-packages/*"))
    assert (rootfs / "usr" / "bin" / "python3.11").exists()


def test_pex_sees_no_site_packages_of_the_host_or_the_interpreter(rootfs):
    code = ("import sys, json; print(json.dumps([p for p in sys.path "
            "if 'packages' in p and not p.startswith('/tmp/pex')]))")
    out = subprocess.run(chroot_cmd(rootfs, "/usr/bin/python3.11", "/mpi.pex", "-c", code,
                                    env={**BASE_ENV, "PEX_INTERPRETER": "1"}),
                         capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _request(port: int, method: str, path: str, body: object = None) -> tuple[int, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    data = json.dumps(body).encode() if body is not None else None
    conn.request(method, path, body=data,
                 headers={"Content-Type": "application/json"} if data else {})
    resp = conn.getresponse()
    raw = resp.read()
    conn.close()
    return resp.status, json.loads(raw) if raw else None


def _mllp(port: int, message: str) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(b"\x0b" + message.encode() + b"\x1c\r")
        answer = b""
        while not answer.endswith(b"\x1c\r"):
            chunk = conn.recv(65536)
            if not chunk:
                break
            answer += chunk
    return answer.decode()


def test_pex_serves_the_api_on_sqlite(rootfs):
    """The PEX alone on a bare interpreter: the HTTP API, and the HL7 v2 listener with a
    sender registered by the PEX's own command (python-hl7 is inside)."""
    port, mllp = _free_port(), _free_port()
    env = {**BASE_ENV, "SERVER_PORT": str(port), "WORKERS": "2",
           "DATABASE_URL": "sqlite:////data/mpi.db", "SEARCH_INDEX_PATH": "/data/index",
           "HL7_MLLP_PORT": str(mllp)}
    for args in (("domain", "add", "urn:oid:1.2.3.4", "--name", "Bare", "--sources", "bare",
                  "--namespace", "BARE"),
                 ("hl7", "sender", "add", "bare-adt", "--application", "ADT", "--facility",
                  "BARE", "--sources", "bare")):
        done = subprocess.run(chroot_cmd(rootfs, "/usr/bin/python3.11", "/mpi.pex", *args,
                                         env=env), capture_output=True, text=True,
                              timeout=180)
        assert done.returncode == 0, done.stderr
    proc = subprocess.Popen(chroot_cmd(rootfs, "/usr/bin/python3.11", "/mpi.pex", "serve",
                                       env=env),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if _request(port, "GET", "/api/v1/health/ready")[0] == 200:
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(proc.stdout.read().decode() if proc.stdout else "")
            time.sleep(0.2)
        status, created = _request(port, "POST", "/api/v1/patients", patient())
        assert status == 201, created
        status, read = _request(port, "GET", f"/api/v1/patients/{created['id']}")
        assert status == 200 and read == created
        assert (rootfs / "data" / "mpi.db").exists()
        ack = _mllp(mllp, "\r".join([
            "MSH|^~\\&|ADT|BARE|MPI|MPI|20261204101500||ADT^A01^ADT_A01|B1|P|2.5",
            "PID|1||B-1^^^BARE&1.2.3.4&ISO^MR||DOE^JANE||19700101|F"]))
        assert "MSA|AA|B1" in ack, ack
        status, found = _request(port, "GET", "/api/v1/patients?source=bare")
        assert status == 200 and [p["source_id"] for p in found["items"]] == ["B-1"]
    finally:
        stop_process(proc)
    _stopped(port)


def _stopped(port: int, timeout: float = 40) -> None:
    """The server stops with the command that started it (it shuts down gracefully)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except OSError:
            return
        time.sleep(0.2)
    raise AssertionError(f"the server still listens on {port} after its command stopped")
