"""The scheduler's policy comes from `LABCLOUD_…` settings: overcommit ratios and the host-down delay."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from controller.config import Settings
from controller.scheduler import SchedulerPolicy
from controller.services.scheduler_policy import scheduler_policy


def test_defaults() -> None:
    assert scheduler_policy(Settings()) == SchedulerPolicy(
        cpu_allocation_ratio=4.0, ram_allocation_ratio=1.0, disk_allocation_ratio=1.0, host_dead_seconds=45.0
    )


def test_the_environment_sets_every_field(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LABCLOUD_CPU_ALLOCATION_RATIO", "16")
    monkeypatch.setenv("LABCLOUD_RAM_ALLOCATION_RATIO", "1.5")
    monkeypatch.setenv("LABCLOUD_DISK_ALLOCATION_RATIO", "2")
    monkeypatch.setenv("LABCLOUD_HOST_DEAD_SECONDS", "90")
    assert scheduler_policy(Settings()) == SchedulerPolicy(
        cpu_allocation_ratio=16.0, ram_allocation_ratio=1.5, disk_allocation_ratio=2.0, host_dead_seconds=90.0
    )


@pytest.mark.parametrize("value", ["0", "-1", "lots"])
def test_a_ratio_must_be_a_positive_number(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("LABCLOUD_RAM_ALLOCATION_RATIO", value)
    with pytest.raises(ValidationError, match="ram_allocation_ratio"):
        Settings()
