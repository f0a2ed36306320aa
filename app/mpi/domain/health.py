"""Liveness and readiness, as ``/api/v1/health`` and ``/health/ready`` answer."""

from __future__ import annotations

from pydantic import BaseModel


class Health(BaseModel):
    status: str
    service: str
    version: str
    commit: str | None = None
    checks: dict[str, str] | None = None
