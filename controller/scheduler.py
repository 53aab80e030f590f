"""Placement: a pure function from a request and host capacities to a host id, or the reasons none fits.

Filters drop hosts that cannot take the server (wrong AZ, disabled, silent, without the accelerator the image
needs, already holding a member of the server's anti-affinity group, out of vCPU/RAM/disk after the overcommit
ratios); weights order the rest (most free RAM, then fewest servers, then id for a stable answer).
The caller builds the candidates from the Host rows and their usage counters (`services.host_usage`), and
records the claim with a conditional UPDATE that fails if a concurrent placement took the room meanwhile.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class AntiAffinity:
    """The server's anti-affinity group and the hosts its other live members already occupy."""

    group_id: str
    hosts: frozenset[str] = frozenset()


@dataclass(frozen=True)
class PlacementRequest:
    vcpus: int
    ram_mib: int
    disk_gib: int
    availability_zone: str | None = None  # None: any zone
    anti_affinity: AntiAffinity | None = None
    accelerator: str | None = None  # what the image needs ("kvm": hardware virtualisation); None: any


@dataclass(frozen=True)
class HostCandidate:
    id: str
    availability_zone: str
    enabled: bool
    heartbeat_age: float  # seconds since the agent last reported
    vcpus: int
    memory_mib: int
    disk_gib: int
    used_vcpus: int = 0
    used_ram_mib: int = 0
    used_disk_gib: int = 0
    servers: int = 0
    accelerator: str = ""  # what the host's agent reports: kvm or tcg


@dataclass(frozen=True)
class SchedulerPolicy:
    cpu_allocation_ratio: float = 4.0
    ram_allocation_ratio: float = 1.0
    disk_allocation_ratio: float = 1.0
    host_dead_seconds: float = 45.0


@dataclass(frozen=True)
class NoValidHost:
    """No host fits; `reasons` says, per host id, which filter dropped it."""

    reasons: dict[str, str] = field(default_factory=dict)

    def message(self) -> str:
        if not self.reasons:
            return "No valid host was found: no hypervisor host is registered."
        details = "; ".join(f"{host}: {why}" for host, why in sorted(self.reasons.items()))
        return f"No valid host was found ({len(self.reasons)} hosts considered): {details}"


DEFAULT_POLICY = SchedulerPolicy()


def schedule(
    request: PlacementRequest, hosts: list[HostCandidate], policy: SchedulerPolicy = DEFAULT_POLICY
) -> str | NoValidHost:
    # One pass with the filters inlined (the same tests as `_refusal`, which a unit test checks): at 1,000 hosts
    # a call, a key tuple and a list entry per host cost more than the decision itself. Reasons are written only
    # when nothing fits.
    zone, group = request.availability_zone, request.anti_affinity
    taken = group.hosts if group is not None else frozenset()
    cpu_ratio, ram_ratio, disk_ratio = (
        policy.cpu_allocation_ratio,
        policy.ram_allocation_ratio,
        policy.disk_allocation_ratio,
    )
    dead, vcpus, ram, disk = policy.host_dead_seconds, request.vcpus, request.ram_mib, request.disk_gib
    accelerator = request.accelerator
    best: HostCandidate | None = None
    best_free = 0.0
    for host in hosts:
        if (
            (zone is not None and host.availability_zone != zone)
            or not host.enabled
            or host.heartbeat_age > dead
            or (accelerator is not None and host.accelerator != accelerator)
            or host.id in taken
            or vcpus > host.vcpus * cpu_ratio - host.used_vcpus
            or disk > host.disk_gib * disk_ratio - host.used_disk_gib
        ):
            continue
        free = host.memory_mib * ram_ratio - host.used_ram_mib
        if ram > free:
            continue
        # Weights: most free RAM, then fewest servers, then the smallest id.
        if (
            best is None
            or free > best_free
            or (free == best_free and (host.servers, host.id) < (best.servers, best.id))
        ):
            best, best_free = host, free
    if best is None:
        reasons = {h.id: why for h in hosts if (why := _refusal(request, h, policy)) is not None}
        return NoValidHost(reasons)
    return best.id


def free_ram_mib(host: HostCandidate, policy: SchedulerPolicy = DEFAULT_POLICY) -> float:
    return host.memory_mib * policy.ram_allocation_ratio - host.used_ram_mib


def _refusal(request: PlacementRequest, host: HostCandidate, policy: SchedulerPolicy) -> str | None:
    if request.availability_zone is not None and host.availability_zone != request.availability_zone:
        return f"in availability zone {host.availability_zone}, not {request.availability_zone}"
    if not host.enabled:
        return "disabled"
    if host.heartbeat_age > policy.host_dead_seconds:
        return f"down (no heartbeat for {host.heartbeat_age:.0f} s)"
    if request.accelerator is not None and host.accelerator != request.accelerator:
        return f"accelerator {host.accelerator or 'unknown'}, the image needs {request.accelerator}"
    group = request.anti_affinity
    if group is not None and host.id in group.hosts:
        return f"already holds a member of anti-affinity server group {group.group_id}"
    free_vcpus = host.vcpus * policy.cpu_allocation_ratio - host.used_vcpus
    if request.vcpus > free_vcpus:
        return f"needs {request.vcpus} vCPUs, {_num(free_vcpus)} free"
    free_ram = free_ram_mib(host, policy)
    if request.ram_mib > free_ram:
        return f"needs {request.ram_mib} MiB RAM, {_num(free_ram)} free"
    free_disk = host.disk_gib * policy.disk_allocation_ratio - host.used_disk_gib
    if request.disk_gib > free_disk:
        return f"needs {request.disk_gib} GiB disk, {_num(free_disk)} free"
    return None


def _num(value: float) -> str:
    value = max(0.0, value)
    return str(int(value)) if value == int(value) else f"{value:.1f}"
