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
