"""Structured logging: JSON lines (for shippers) or text (for people), on stderr.

Log calls in this code base pass only ids, routes, counts and error types,
never record content. The access line is written by ``mpi.api.middleware``;
gunicorn's own access log stays off because it would print query strings.
"""

from __future__ import annotations

import logging.config
from typing import Any

from mpi.config import Settings

JSON_FIELDS = "%(levelname)s %(name)s %(message)s"
TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s %(message)s%(context)s"
CONTEXT_KEYS = ("request_id", "method", "route", "status", "duration_ms")


class TextContextFilter(logging.Filter):
    """Adds ``request_id=... status=...`` to text lines when the record carries them."""

    def filter(self, record: logging.LogRecord) -> bool:
        parts = [f"{k}={getattr(record, k)}" for k in CONTEXT_KEYS
                 if getattr(record, k, None) is not None and k not in ("method", "route")]
        record.context = (" " + " ".join(parts)) if parts else ""
        return True


class WithholdRequestLines(logging.Filter):
    """gunicorn quotes a malformed request line (query string included) in its warnings.

    The line can carry search terms such as a family name, so the quoted part is
    replaced; the kind of error and the client address stay.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        quoting = message.startswith(("Invalid request from", "Invalid HTTP"))
        if quoting or "request line" in message:
            head = message.split(":", 1)[0] if message.startswith("Invalid request from") \
                else "Invalid HTTP request"
            record.msg, record.args = f"{head}: details withheld (they quote the request)", ()
        return True


def logging_config(settings: Settings) -> dict[str, Any]:
    """A ``logging.config.dictConfig`` dict; gunicorn gets the same one."""
    if settings.log_format == "json":
        formatter: dict[str, Any] = {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "fmt": JSON_FIELDS,
            "rename_fields": {"levelname": "level", "name": "logger"},
            "timestamp": "time",
        }
        filters: list[str] = []
    else:
        formatter = {"format": TEXT_FORMAT}
        filters = ["context"]
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"context": {"()": TextContextFilter},
                    "withhold": {"()": WithholdRequestLines}},
        "formatters": {"main": formatter},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "stream": "ext://sys.stderr",
                "formatter": "main",
                "filters": filters,
            },
        },
        "root": {"level": settings.log_level, "handlers": ["stderr"]},
        "loggers": {
            # gunicorn logs every request's path and query at DEBUG: never below INFO.
            "gunicorn.error": {"level": _at_least_info(settings.log_level),
                               "handlers": ["stderr"], "propagate": False,
                               "filters": ["withhold"]},
            "gunicorn.access": {"level": "CRITICAL", "handlers": [], "propagate": False},
            # peewee logs every SQL statement with its parameters at DEBUG: patient data.
            "peewee": {"level": "WARNING"},
        },
    }


def _at_least_info(level: str) -> str:
    return "INFO" if level == "DEBUG" else level


def configure(settings: Settings) -> None:
    logging.config.dictConfig(logging_config(settings))
