"""Optional OpenTelemetry tracing of HTTP requests, off by default.

Switched on by the standard variables: an OTLP endpoint (``OTEL_EXPORTER_OTLP_ENDPOINT`` or
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``), unless ``OTEL_SDK_DISABLED=true`` or
``OTEL_TRACES_EXPORTER=none``. Everything else is the SDK's own reading of the standard
variables: ``OTEL_SERVICE_NAME`` (default ``mpi``), ``OTEL_RESOURCE_ATTRIBUTES``,
``OTEL_TRACES_SAMPLER[_ARG]``, ``OTEL_EXPORTER_OTLP_*`` (headers, timeout, certificate,
compression). Spans go out over OTLP/HTTP (protobuf) in batches.

Set up in each gunicorn worker after the fork (:func:`start`, from ``post_fork``: the SDK's
batch thread and the exporter's connections must not be shared across a fork) and
flushed when the worker exits (:func:`stop`). One span per request, named by the route
template; the URL's path and query string (patient ids, searched names) are replaced by
the template before the span is exported, and no header or body is recorded.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

log = logging.getLogger("mpi.tracing")

#: Span attributes the WSGI instrumentation fills from the URL: replaced by the template.
URL_ATTRIBUTES = ("http.target", "http.url", "url.path", "url.query", "url.full")
_provider: Any = None


def enabled(env: Mapping[str, str] | None = None) -> bool:
    env = os.environ if env is None else env
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if env.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() == "none":
        return False
    return bool(env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
                or env.get("OTEL_EXPORTER_OTLP_ENDPOINT"))


def start(service_version: str) -> bool:
    """In a worker, before its app is built: trace its requests if :func:`enabled`. True
    when tracing is on."""
    global _provider
    if not enabled() or _provider is not None:
        return _provider is not None
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.instrumentation.falcon import FalconInstrumentor
    from opentelemetry.sdk.resources import OTEL_SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    defaults = {"service.version": service_version}
    if not os.environ.get(OTEL_SERVICE_NAME):
        defaults["service.name"] = "mpi"
    provider = TracerProvider(resource=Resource.create(defaults))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    FalconInstrumentor().instrument(tracer_provider=provider, response_hook=_scrub)
    _provider = provider
    log.info("tracing requests to the OTLP endpoint")
    return True


def _scrub(span: Any, req: Any, resp: Any) -> None:
    """The route template, never the path or the query string."""
    if not span.is_recording():
        return
    route = req.uri_template or "unmatched"
    for name in URL_ATTRIBUTES:
        span.set_attribute(name, "" if name == "url.query" else route)


def stop() -> None:
    """Export what is buffered (a worker leaving)."""
    global _provider
    if _provider is not None:
        _provider.shutdown()
        _provider = None
