"""`schedule` inlines its filters for speed; this checks, over many random hosts and requests, that it agrees
with the per-host refusal reasons (`_refusal`) it reports when nothing fits, and picks the best-weighted host."""

from __future__ import annotations

import random

import pytest

from controller.scheduler import (
    AntiAffinity,
    HostCandidate,
    NoValidHost,
    PlacementRequest,
    SchedulerPolicy,
    _refusal,
    free_ram_mib,
    schedule,
)

ZONES = ("az1", "az2")


def random_host(rng: random.Random, n: int) -> HostCandidate:
    vcpus, memory, disk = rng.choice((2, 4, 8)), rng.choice((2048, 4096, 8192)), rng.choice((20, 50, 100))
    return HostCandidate(
        id=f"h{n:02d}",
        availability_zone=rng.choice(ZONES),
        enabled=rng.random() > 0.1,
        heartbeat_age=rng.choice((1.0, 1.0, 1.0, 100.0)),
        vcpus=vcpus,
        memory_mib=memory,
        disk_gib=disk,
        used_vcpus=rng.randint(0, vcpus * 4),
        used_ram_mib=rng.choice((0, 1024, 2048, memory - 512, memory)),
        used_disk_gib=rng.randint(0, disk),
        servers=rng.randint(0, 5),
        accelerator=rng.choice(("kvm", "tcg", "tcg")),
    )


def random_request(rng: random.Random, hosts: list[HostCandidate]) -> PlacementRequest:
    group = None
    if rng.random() < 0.3:
        group = AntiAffinity("g", frozenset(h.id for h in hosts if rng.random() < 0.3))
    return PlacementRequest(
        vcpus=rng.choice((1, 2, 4)),
        ram_mib=rng.choice((128, 512, 1024, 4096)),
        disk_gib=rng.choice((1, 10, 40)),
        availability_zone=rng.choice((None, *ZONES)),
        anti_affinity=group,
        accelerator=rng.choice((None, None, "kvm")),
    )


@pytest.mark.parametrize("seed", range(20))
def test_fast_path_agrees_with_the_refusal_reasons(seed: int) -> None:
    rng = random.Random(seed)
    policy = SchedulerPolicy(
        cpu_allocation_ratio=rng.choice((1.0, 4.0)), ram_allocation_ratio=rng.choice((1.0, 1.5))
    )
    for _ in range(50):
        hosts = [random_host(rng, n) for n in range(rng.randint(0, 12))]
        request = random_request(rng, hosts)
        fitting = [h for h in hosts if _refusal(request, h, policy) is None]
        result = schedule(request, hosts, policy)
        if not fitting:
            assert isinstance(result, NoValidHost)
            assert result.reasons == {h.id: _refusal(request, h, policy) for h in hosts}
        else:
            best = min(fitting, key=lambda h: (-free_ram_mib(h, policy), h.servers, h.id))
            assert result == best.id
