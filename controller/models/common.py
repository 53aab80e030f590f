"""Helpers shared by the table models: ids and timestamps in the formats the Huawei API uses."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime


def new_id() -> str:
    return str(uuid.uuid4())


def new_hex_id() -> str:
    return uuid.uuid4().hex


def utcnow() -> datetime:
    """Aware UTC: SQLModel stores timezone-aware datetimes."""
    return datetime.now(UTC)


def iso_z(value: datetime | None, *, millis: bool = False) -> str | None:
    """`2016-04-25T20:04:47Z` (or with `.591Z` when millis); naive datetimes are taken as UTC."""
    if value is None:
        return None
    if value.tzinfo is not None:
        value = value.astimezone(UTC)
    if millis:
        return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"
    return value.strftime("%Y-%m-%dT%H:%M:%SZ")
