"""Value types shared by the features' models."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from pydantic import AfterValidator

# Timestamps are stored as naive UTC; they leave with their zone.
UtcDatetime = Annotated[datetime, AfterValidator(
    lambda v: v if v.tzinfo else v.replace(tzinfo=UTC))]
