"""OpenTelemetry tracing of a real ``mpi serve``: off unless an OTLP endpoint is set; then
every worker exports a span per request over OTLP/HTTP, named by the route, with neither
the path's patient id nor the query's searched name. The receiver is a plain HTTP server
decoding the protobuf payload with OpenTelemetry's own message definitions."""

from __future__ import annotations

import http.server
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from mpi import tracing
from tests.helpers import patient
from tests.integration.test_serve import Server

pytestmark = pytest.mark.integration


class Receiver:
    def __init__(self) -> None:
        self.requests: list[ExportTraceServiceRequest] = []
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.path == "/v1/traces":
                    message = ExportTraceServiceRequest()
                    message.ParseFromString(body)
                    receiver.requests.append(message)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def spans(self) -> list[tuple[dict[str, str], Any]]:
        out: list[tuple[dict[str, str], Any]] = []
        for request in self.requests:
            for resource_spans in request.resource_spans:
                resource = {a.key: a.value.string_value
                            for a in resource_spans.resource.attributes}
                for scope in resource_spans.scope_spans:
                    out.extend((resource, span) for span in scope.spans)
        return out


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.server.shutdown()
    r.server.server_close()


def test_tracing_is_off_unless_an_endpoint_is_set():
    assert not tracing.enabled({})
    assert tracing.enabled({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"})
    assert tracing.enabled({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"})
    assert not tracing.enabled({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318",
                                "OTEL_SDK_DISABLED": "true"})
    assert not tracing.enabled({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318",
                                "OTEL_TRACES_EXPORTER": "none"})


def test_each_request_is_a_span_without_patient_data(receiver, tmp_path):
    server = Server({"DATABASE_URL": "sqlite:///data/mpi.db",
                     "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
                     "OTEL_BSP_SCHEDULE_DELAY": "200"}, tmp_path)
    try:
        status, _, created = server.request("POST", "/api/v1/patients", patient(
            names=[{"family": "Quagmirewicz", "given": ["Ada"]}]))
        assert status == 201
        assert server.request("GET", f"/api/v1/patients/{created['id']}")[0] == 200
        server.request("GET", "/api/v1/patients/search?family=Quagmirewicz")
        server.proc.send_signal(signal.SIGTERM)  # the workers flush what they hold
        server.proc.wait(timeout=30)
    finally:
        server.stop()
    deadline = time.monotonic() + 10
    while not any(s.name == "GET /api/v1/patients/{patient_id:uuid}"
                  for _, s in receiver.spans()):
        assert time.monotonic() < deadline, [s.name for _, s in receiver.spans()]
        time.sleep(0.2)
    spans = receiver.spans()
    names = {s.name for _, s in spans}
    assert {"POST /api/v1/patients", "GET /api/v1/patients/{patient_id:uuid}"} <= names
    resource, _ = spans[0]
    assert resource["service.name"] == "mpi" and resource["service.version"]
    text = str([(r, s) for r, s in spans])
    assert created["id"] not in text and "Quagmirewicz" not in text
    assert "123-45-6789" not in text
