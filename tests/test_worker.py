"""When the worker's event loop has a whole request to hand to a thread."""

from __future__ import annotations

import pytest

from mpi.worker import MAX_BUFFERED_BODY, MAX_HEAD, request_complete

GET = b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\n"


@pytest.mark.parametrize(("data", "complete"), [
    (b"", False),
    (b"GET /api/v1/health HTTP/1.1\r\n", False),
    (GET, False),                                     # headers still coming (slowloris)
    (GET + b"X-Slow-1: 1\r\n", False),
    (GET + b"\r\n", True),                            # no body
    (GET + b"Content-Length: 5\r\n\r\nabc", False),   # body still coming
    (GET + b"Content-Length: 5\r\n\r\nabcde", True),
    (GET + b"content-length:5\r\n\r\nabcdeGET", True),  # pipelined: the parser keeps the rest
    (GET + b"Content-Length: 5\r\nContent-Length: 6\r\n\r\n", True),  # the parser refuses it
    (GET + b"Transfer-Encoding: chunked\r\n\r\n5\r\nabcde\r\n", False),
    (GET + b"Transfer-Encoding: chunked\r\n\r\n5\r\nabcde\r\n0\r\n\r\n", True),
    (b"X" * (MAX_HEAD + 1), True),                    # too large: the parser refuses it
])
def test_a_request_is_complete_when_its_framing_says_so(data, complete):
    assert request_complete(data)[0] is complete


def test_a_large_body_is_handed_over_once_the_limit_is_buffered():
    big = GET + f"Content-Length: {10 * MAX_BUFFERED_BODY}\r\n\r\n".encode()
    assert request_complete(big + b"x" * 10)[0] is False
    assert request_complete(big + b"x" * MAX_BUFFERED_BODY)[0] is True


def test_expect_100_continue_is_noticed():
    head = GET + b"Content-Length: 3\r\nExpect: 100-continue\r\n\r\n"
    assert request_complete(head) == (False, True)
    assert request_complete(head + b"abc") == (True, True)


_STOPPED_WHILE_FORKING = r"""
import sys, time
from gunicorn.app.base import BaseApplication
from gunicorn.arbiter import Arbiter
from mpi.worker import signals_held


def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


def post_fork(arbiter, worker):  # the worker still runs the master's signal handlers here
    print("forked", flush=True)
    time.sleep(1.5)


class App(BaseApplication):
    def load_config(self):
        for key, value in {"bind": "127.0.0.1:0", "workers": 1, "graceful_timeout": 30,
                           "worker_class": "mpi.worker.BufferingThreadWorker",
                           "post_fork": post_fork}.items():
            self.cfg.set(key, value)

    def load(self):
        return app


class Master(Arbiter):
    def spawn_worker(self):
        with signals_held():  # as mpi.server's arbiter
            return super().spawn_worker()


Master(App()).run()
"""


def test_a_stop_sent_while_a_worker_is_forked_stops_it(tmp_path):
    """SIGTERM to the master while its new worker is still between fork and its own signal
    handlers: the worker handles it once they are in place, and the master exits then,
    not after GRACEFUL_TIMEOUT (30 s here) with the worker killed."""
    import signal
    import subprocess
    import sys
    import time

    proc = subprocess.Popen([sys.executable, "-c", _STOPPED_WHILE_FORKING], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.strip() == "forked":
                break
        proc.send_signal(signal.SIGTERM)
        stopped = time.monotonic()
        proc.wait(timeout=45)
        assert time.monotonic() - stopped < 10, proc.stdout.read()
        assert proc.returncode == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
