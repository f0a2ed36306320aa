"""compose/nginx.conf, the production stack's reverse proxy, run by a real nginx.

No nginx image can be pulled here, so the host's nginx (Debian's ``nginx`` package,
installed by ``.ci/run``) reads a test-local copy in which only what the compose network
provides is substituted: the upstream ``mpi:8080`` (a name Docker's DNS resolves) becomes
a local ``mpi serve``, the listening port a free one, and the pid and temporary files move
to a temporary directory. Everything else is the file as shipped.

Where nginx is missing the tests skip, loudly; under CI (``CI=true``) they fail instead.
"""

from __future__ import annotations

import http.client
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from mpi import config
from tests.helpers import free_port, http_json, patient, stop_process

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "compose" / "nginx.conf"
UPSTREAM = "server mpi:8080"
LISTEN = "listen 8080;"
PID = "pid /var/run/nginx.pid;"


def _nginx() -> str:
    found = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")
    if found:
        return found
    reason = "nginx is not installed (apt-get install nginx; .ci/run does)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true, but {reason}", pytrace=False)
    warnings.warn(f"NGINX TESTS SKIPPED: {reason}", stacklevel=2)
    pytest.skip(reason)


def local_copy(workdir: Path, *, upstream: str, listen: str) -> Path:
    """compose/nginx.conf with the compose network's parts replaced; each must be there."""
    text = CONF.read_text(encoding="utf-8")
    temp = workdir / "temp"
    temp.mkdir()
    temp_paths = "".join(f"    {kind}_temp_path {temp / kind};\n"
                         for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    for old, new in ((UPSTREAM, f"server {upstream}"), (LISTEN, f"listen {listen};"),
                     (PID, f"pid {workdir / 'nginx.pid'};"),
                     ("http {\n", "http {\n" + temp_paths)):
        assert text.count(old) == 1, f"compose/nginx.conf no longer has {old!r} once"
        text = text.replace(old, new)
    path = workdir / "nginx.conf"
    path.write_text(text, encoding="utf-8")
    return path


def test_nginx_accepts_the_configuration(tmp_path: Path):
    nginx = _nginx()
    conf = local_copy(tmp_path, upstream="127.0.0.1:8080", listen="127.0.0.1:8080")
    result = subprocess.run([nginx, "-t", "-e", "stderr", "-p", str(tmp_path), "-c", str(conf)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "syntax is ok" in result.stderr and "test is successful" in result.stderr


@pytest.fixture
def service(tmp_path: Path) -> Iterator[int]:
    """``mpi serve`` on the embedded SQLite default, on a free port."""
    port = free_port()
    names = set(config.ENV_NAMES) | {f"{n}_FILE" for n in config.ENV_NAMES}
    env = {**{k: v for k, v in os.environ.items() if k not in names},
           "SERVER_PORT": str(port), "WORKERS": "1", "LOG_FORMAT": "text"}
    workdir = tmp_path / "service"
    workdir.mkdir()
    log = (workdir / "server.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "mpi", "serve"], cwd=workdir, env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait(port, "/api/v1/health/ready", proc, workdir / "server.log")
        yield port
    finally:
        stop_process(proc)
        log.close()


def _wait(port: int, path: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"exited {proc.returncode}:\n{log.read_text(errors='replace')}")
        try:
            if http_json(port, "GET", path, timeout=2)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"no 200 from {path} on {port}:\n{log.read_text(errors='replace')}")


def _declared_body_status(port: int, length: int) -> int:
    """The status of a POST that announces ``length`` bytes and sends none."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.putrequest("POST", "/api/v1/patients")
        conn.putheader("Content-Type", "application/json")
        conn.putheader("Content-Length", str(length))
        conn.endheaders()
        return conn.getresponse().status
    finally:
        conn.close()


def test_nginx_proxies_to_the_service(tmp_path: Path, service: int):
    nginx = _nginx()
    port = free_port()
    conf = local_copy(tmp_path, upstream=f"127.0.0.1:{service}", listen=f"127.0.0.1:{port}")
    log_path = tmp_path / "nginx.log"
    log = log_path.open("wb")
    proc = subprocess.Popen([nginx, "-e", "stderr", "-p", str(tmp_path), "-c", str(conf),
                             "-g", "daemon off;"], stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait(port, "/api/v1/health", proc, log_path)
        status, headers, body = http_json(port, "GET", "/api/v1/health/ready",
                                          headers={"X-Request-ID": "through-nginx-1"})
        assert status == 200 and body["status"] == "ok", body
        assert headers["x-request-id"] == "through-nginx-1"  # passed through both ways
        assert "server" not in headers or "nginx/" not in headers["server"]  # server_tokens off
        status, headers, created = http_json(port, "POST", "/api/v1/patients",
                                             patient(source_id="via-proxy"),
                                             headers={"X-User-ID": "proxy-test"})
        assert status == 201, created
        status, _, read = http_json(port, "GET", f"/api/v1/patients/{created['id']}",
                                    headers={"X-User-ID": "proxy-test"})
        assert status == 200 and read == created
        # client_max_body_size 1m: nginx refuses a larger body on its Content-Length alone.
        assert _declared_body_status(port, 1_100_000) == 413
    finally:
        proc.send_signal(signal.SIGQUIT)  # graceful stop of the master and its workers
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
