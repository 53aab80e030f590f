"""The scheduler's policy (overcommit ratios, when a silent host counts as down) from the controller's settings."""

from __future__ import annotations

from controller.config import Settings
from controller.scheduler import SchedulerPolicy


def scheduler_policy(settings: Settings) -> SchedulerPolicy:
    return SchedulerPolicy(
        cpu_allocation_ratio=settings.cpu_allocation_ratio,
        ram_allocation_ratio=settings.ram_allocation_ratio,
        disk_allocation_ratio=settings.disk_allocation_ratio,
        host_dead_seconds=settings.host_dead_seconds,
    )
