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
        value = value.astimezone(UTC).replace(tzinfo=None)
    # isoformat, not strftime: the same text at a third of the cost, and list views call this 4x per server.
    return value.isoformat(timespec="milliseconds" if millis else "seconds") + "Z"
