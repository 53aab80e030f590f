"""Placeholder: being written."""

from __future__ import annotations

from typing import Any


def register_seed_image(ctx: Any) -> None:
    return None
