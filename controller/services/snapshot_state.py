"""Snapshot status transitions as data, like `volume_state`: action → (allowed from, transitional status, on
success, on failure). Every action starts with a compare-and-swap into its transitional status; its job lands
the snapshot with another compare-and-swap on that status.
"""

from __future__ import annotations

from dataclasses import dataclass

CREATING, AVAILABLE, ERROR = "creating", "available", "error"
DELETING, ROLLBACKING, DELETED = "deleting", "rollbacking", "deleted"
STATUSES = (CREATING, AVAILABLE, ERROR, DELETING, ROLLBACKING, DELETED)
BUSY = (CREATING, DELETING, ROLLBACKING)


@dataclass(frozen=True)
class SnapshotTransition:
    action: str
    allowed_from: frozenset[str]
    during: str
    on_success: str
    on_failure: str


TRANSITIONS: dict[str, SnapshotTransition] = {
    t.action: t
    for t in (
        SnapshotTransition("create", frozenset(), CREATING, AVAILABLE, ERROR),
        SnapshotTransition("delete", frozenset({AVAILABLE, ERROR}), DELETING, DELETED, ERROR),
        # A failed rollback harms the volume (error_rollbacking), never the snapshot.
        SnapshotTransition("rollback", frozenset({AVAILABLE}), ROLLBACKING, AVAILABLE, AVAILABLE),
    )
}

_VERB = {"delete": "deleted", "rollback": "rolled back"}


def transition(action: str) -> SnapshotTransition:
    return TRANSITIONS[action]


def refusal(status: str, action: str) -> str | None:
    """Why `action` cannot start on a snapshot in `status`, or None when it can."""
    t = TRANSITIONS[action]
    if status in t.allowed_from:
        return None
    if status in BUSY:
        return f"the snapshot is busy ({status}); try again when that finishes"
    needs = " or ".join(sorted(t.allowed_from)) or "a new snapshot"
    return f"a snapshot in status {status} cannot be {_VERB.get(action, action)}; it must be {needs}"
