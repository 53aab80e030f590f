"""JSON lists assembled from items that are already rendered.

A route that returns a dict has FastAPI walk it through pydantic and then `json.dumps` it: two passes in Python.
A page of up to 1,000 ServerDetails is instead rendered item by item (`pydantic_core.to_json`, one pass in
Rust, or straight from the rendered-view cache) and the bytes joined here; no big tree of dicts outlives a
garbage-collector pass on its way to the wire.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pydantic_core import to_json


def render_list(fields: dict[str, Any], key: str, items: Iterable[bytes]) -> bytes:
    """`{**fields, key: [*items]}` as JSON, the items given as their JSON bytes."""
    head = to_json(fields)[:-1] + (b"," if fields else b"")
    return head + to_json(key) + b":[" + b",".join(items) + b"]}"
