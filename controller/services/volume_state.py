"""Volume status transitions as data: action → (allowed from, transitional status, on success, on failure).

An action starts with a compare-and-swap UPDATE (status in `allowed_from`), so two requests cannot both start
one; the job that carries it out lands the volume from the transitional status in `on_success` or
`on_failure`, again as a compare-and-swap on that transitional status.
"""

from __future__ import annotations

from dataclasses import dataclass

CREATING, AVAILABLE, ATTACHING, IN_USE, DETACHING = (
    "creating",
    "available",
    "attaching",
    "in-use",
    "detaching",
)
DELETING, EXTENDING, ERROR, DELETED = "deleting", "extending", "error", "deleted"
ROLLBACKING, ERROR_ROLLBACKING = "rollbacking", "error_rollbacking"  # a snapshot rolled back onto it
RESTORING_BACKUP = "restoring-backup"  # a CBR backup restored onto it (services/backups.py claims it)
STATUSES = (
    CREATING,
    AVAILABLE,
    ATTACHING,
    IN_USE,
    DETACHING,
    DELETING,
    EXTENDING,
    ERROR,
    DELETED,
    ROLLBACKING,
    ERROR_ROLLBACKING,
    RESTORING_BACKUP,
)


@dataclass(frozen=True)
class VolumeTransition:
    action: str
    allowed_from: frozenset[str]
    during: str
    on_success: str | None  # None: back to the status it started from
    on_failure: str | None  # None: back to the status it started from


TRANSITIONS: dict[str, VolumeTransition] = {
    t.action: t
    for t in (
        VolumeTransition("create", frozenset(), CREATING, AVAILABLE, ERROR),
        VolumeTransition("attach", frozenset({AVAILABLE}), ATTACHING, IN_USE, AVAILABLE),
        VolumeTransition("detach", frozenset({IN_USE}), DETACHING, AVAILABLE, IN_USE),
        VolumeTransition(
            "delete", frozenset({AVAILABLE, ERROR, ERROR_ROLLBACKING}), DELETING, DELETED, ERROR
        ),
        VolumeTransition("extend", frozenset({AVAILABLE, IN_USE}), EXTENDING, None, None),
        VolumeTransition(
            "rollback", frozenset({AVAILABLE, ERROR_ROLLBACKING}), ROLLBACKING, AVAILABLE, ERROR_ROLLBACKING
        ),
    )
}

_VERB = {
    "attach": "attached",
    "detach": "detached",
    "delete": "deleted",
    "extend": "extended",
    "rollback": "rolled back",
}


def transition(action: str) -> VolumeTransition:
    return TRANSITIONS[action]


def refusal(status: str, action: str) -> str | None:
    """Why `action` cannot start on a volume in `status`, or None when it can."""
    t = TRANSITIONS[action]
    if status in t.allowed_from:
        return None
    if status in (CREATING, ATTACHING, DETACHING, DELETING, EXTENDING, ROLLBACKING, RESTORING_BACKUP):
        return f"the volume is busy ({status}); try again when that finishes"
    needs = " or ".join(sorted(t.allowed_from)) or "a new volume"
    return f"a volume in status {status} cannot be {_VERB.get(action, action)}; it must be {needs}"
