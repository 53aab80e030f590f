"""The server transition table over every (status, action) pair."""

from __future__ import annotations

import pytest

from controller import state

ALLOWED = {
    ("SHUTOFF", "start"),
    ("ACTIVE", "stop"),
    ("ACTIVE", "reboot_soft"),
    ("ACTIVE", "reboot_hard"),
    ("ACTIVE", "delete"),
    ("SHUTOFF", "delete"),
    ("ERROR", "delete"),
    ("ACTIVE", "resize"),
    ("SHUTOFF", "resize_stopped"),
    ("ACTIVE", "rebuild"),
    ("SHUTOFF", "rebuild"),
    ("ACTIVE", "restore"),
    ("SHUTOFF", "restore"),
}


@pytest.mark.parametrize("status", state.STATUSES)
@pytest.mark.parametrize("action", sorted(state.TRANSITIONS))
def test_every_status_action_pair(status: str, action: str) -> None:
    reason = state.refusal(status, None, action)
    if (status, action) in ALLOWED:
        assert reason is None
    else:
        assert reason is not None and status in reason


@pytest.mark.parametrize("action", sorted(state.TRANSITIONS))
def test_a_running_task_blocks_every_action(action: str) -> None:
    assert "busy" in (state.refusal("ACTIVE", "powering-off", action) or "")


def test_outcomes() -> None:
    assert state.transition("stop").on_success == "SHUTOFF"
    assert state.transition("start").on_success == "ACTIVE"
    assert state.transition("create").during == "BUILD"
    assert state.transition("reboot_hard").during == "HARD_REBOOT"
    assert state.transition("delete").on_success == "DELETED"
    assert state.transition("resize").during == state.transition("resize_stopped").during == "RESIZE"
    assert (
        state.transition("resize_stopped").on_success == "SHUTOFF"
        and state.transition("resize").on_failure is None
    )
    assert (state.transition("rebuild").during, state.transition("rebuild").on_failure) == (
        "REBUILD",
        "ERROR",
    )
