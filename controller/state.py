"""Server status transitions as data: (status, action) → (transitional status and task, on success, on failure).

Routes apply a transition with a compare-and-swap update (status in `allowed_from` and no task in progress), so two
conflicting requests cannot both start; the job that carries the action out lands the server in `on_success` or
`on_failure`.
"""

from __future__ import annotations

from dataclasses import dataclass

BUILD, ACTIVE, SHUTOFF, REBOOT, HARD_REBOOT, ERROR, DELETED = (
    "BUILD",
    "ACTIVE",
    "SHUTOFF",
    "REBOOT",
    "HARD_REBOOT",
    "ERROR",
    "DELETED",
)
RESIZE, REBUILD = "RESIZE", "REBUILD"
STATUSES = (BUILD, ACTIVE, SHUTOFF, REBOOT, HARD_REBOOT, ERROR, DELETED, RESIZE, REBUILD)

# Huawei/Nova power_state codes for OS-EXT-STS:power_state.
POWER_STATE = {BUILD: 0, ACTIVE: 1, SHUTOFF: 4, REBOOT: 1, HARD_REBOOT: 1, ERROR: 0, DELETED: 0}
POWER_STATE.update({RESIZE: 4, REBUILD: 4})  # the guest is stopped for both
VM_STATE = {
    BUILD: "building",
    ACTIVE: "active",
    SHUTOFF: "stopped",
    REBOOT: "active",
    HARD_REBOOT: "active",
    ERROR: "error",
    DELETED: "deleted",
    RESIZE: "active",
    REBUILD: "active",
}


@dataclass(frozen=True)
class Transition:
    action: str
    allowed_from: frozenset[str]
    during: str | None  # the status shown while the action runs; None keeps the current one
    task_state: str
    on_success: str
    on_failure: str | None  # None: back to the status it started from


TRANSITIONS: dict[str, Transition] = {
    t.action: t
    for t in (
        Transition("create", frozenset(), BUILD, "spawning", ACTIVE, ERROR),
        Transition("start", frozenset({SHUTOFF}), None, "powering-on", ACTIVE, None),
        Transition("stop", frozenset({ACTIVE}), None, "powering-off", SHUTOFF, None),
        Transition("reboot_soft", frozenset({ACTIVE}), REBOOT, "rebooting", ACTIVE, ERROR),
        Transition("reboot_hard", frozenset({ACTIVE}), HARD_REBOOT, "rebooting_hard", ACTIVE, ERROR),
        Transition("delete", frozenset({ACTIVE, SHUTOFF, ERROR}), None, "deleting", DELETED, ERROR),
        # A resize keeps the power state, so a running and a stopped server take different rows; a failure
        # goes back to the old flavor (the job lands ERROR only if the host cannot say what it has).
        Transition("resize", frozenset({ACTIVE}), RESIZE, "resize_prep", ACTIVE, None),
        Transition("resize_stopped", frozenset({SHUTOFF}), RESIZE, "resize_prep", SHUTOFF, None),
        # Reinstall and change OS: the old root disk is gone once the host replaced it, so no way back.
        Transition("rebuild", frozenset({ACTIVE, SHUTOFF}), REBUILD, "rebuilding", ACTIVE, ERROR),
        # CBR restore of a server backup: stopped, disks replaced, started again (or left off).
        Transition("restore", frozenset({ACTIVE, SHUTOFF}), None, "restoring", ACTIVE, ERROR),
    )
}

_VERB = {
    "start": "started",
    "stop": "stopped",
    "reboot_soft": "rebooted",
    "reboot_hard": "rebooted",
    "delete": "deleted",
    "create": "created",
    "resize": "resized",
    "resize_stopped": "resized",
    "rebuild": "rebuilt",
    "restore": "restored",
}


def transition(action: str) -> Transition:
    return TRANSITIONS[action]


def refusal(status: str, task_state: str | None, action: str) -> str | None:
    """Why `action` cannot start now, or None when it can."""
    t = TRANSITIONS[action]
    if task_state:
        return f"the server is busy ({task_state}); try again when that finishes"
    if status not in t.allowed_from:
        needs = " or ".join(sorted(t.allowed_from)) or "a new server"
        return f"a server in status {status} cannot be {_VERB[action]}; it must be {needs}"
    return None
