"""The scheduler as a pure function: each filter, the overcommit ratios, the weights, the refusal reasons."""

from __future__ import annotations

import dataclasses

import pytest

from controller.scheduler import (
    AntiAffinity,
    HostCandidate,
    NoValidHost,
    PlacementRequest,
    SchedulerPolicy,
    schedule,
)

SMALL = PlacementRequest(vcpus=1, ram_mib=512, disk_gib=10)


def host(host_id: str = "h1", **overrides: object) -> HostCandidate:
    base = HostCandidate(
        id=host_id,
        availability_zone="az1",
        enabled=True,
        heartbeat_age=1.0,
        vcpus=4,
        memory_mib=8192,
        disk_gib=100,
    )
    return dataclasses.replace(base, **overrides)  # type: ignore[arg-type]


def refused(result: str | NoValidHost) -> dict[str, str]:
    assert isinstance(result, NoValidHost), f"expected no valid host, got {result}"
    return result.reasons


def test_one_fitting_host_is_chosen() -> None:
    assert schedule(SMALL, [host()]) == "h1"


def test_no_hosts_at_all() -> None:
    result = schedule(SMALL, [])
    assert refused(result) == {}
    assert isinstance(result, NoValidHost) and "no hypervisor host" in result.message()


def test_availability_zone_filter() -> None:
    hosts = [host("a", availability_zone="az1"), host("b", availability_zone="az2", used_ram_mib=4096)]
    assert schedule(dataclasses.replace(SMALL, availability_zone="az2"), hosts) == "b"
    reasons = refused(schedule(dataclasses.replace(SMALL, availability_zone="az9"), hosts))
    assert "az9" in reasons["a"] and "az2" in reasons["b"]


def test_any_zone_when_none_requested() -> None:
    assert schedule(SMALL, [host("b", availability_zone="elsewhere")]) == "b"


def test_disabled_host_is_skipped() -> None:
    assert refused(schedule(SMALL, [host(enabled=False)])) == {"h1": "disabled"}


def test_dead_host_is_skipped_and_the_limit_comes_from_the_policy() -> None:
    policy = SchedulerPolicy(host_dead_seconds=30)
    assert schedule(SMALL, [host(heartbeat_age=30)], policy) == "h1"
    assert "down" in refused(schedule(SMALL, [host(heartbeat_age=31)], policy))["h1"]


def test_vcpus_overcommit_four_to_one() -> None:
    # 4 physical vCPUs at 4.0 → 16 allocatable.
    assert schedule(PlacementRequest(vcpus=4, ram_mib=1, disk_gib=1), [host(used_vcpus=12)]) == "h1"
    reason = refused(schedule(PlacementRequest(vcpus=5, ram_mib=1, disk_gib=1), [host(used_vcpus=12)]))["h1"]
    assert reason == "needs 5 vCPUs, 4 free"


def test_ram_is_not_overcommitted() -> None:
    assert schedule(PlacementRequest(1, 1024, 1), [host(used_ram_mib=8192 - 1024)]) == "h1"
    reason = refused(schedule(PlacementRequest(1, 1025, 1), [host(used_ram_mib=8192 - 1024)]))["h1"]
    assert reason == "needs 1025 MiB RAM, 1024 free"


def test_disk_filter() -> None:
    assert schedule(PlacementRequest(1, 1, 40), [host(used_disk_gib=60)]) == "h1"
    assert "GiB disk" in refused(schedule(PlacementRequest(1, 1, 41), [host(used_disk_gib=60)]))["h1"]


def test_overcommitted_host_reports_zero_free_not_negative() -> None:
    reason = refused(schedule(SMALL, [host(used_ram_mib=9000)]))["h1"]
    assert reason == "needs 512 MiB RAM, 0 free"


def test_custom_ratios() -> None:
    policy = SchedulerPolicy(cpu_allocation_ratio=1.0, ram_allocation_ratio=1.5)
    assert isinstance(schedule(PlacementRequest(5, 1, 1), [host()], policy), NoValidHost)
    assert schedule(PlacementRequest(1, 12288, 1), [host()], policy) == "h1"


def test_weight_prefers_most_free_ram() -> None:
    hosts = [host("a", used_ram_mib=4096), host("b", used_ram_mib=1024), host("c", memory_mib=4096)]
    assert schedule(SMALL, hosts) == "b"


def test_ties_go_to_fewest_servers_then_id() -> None:
    assert schedule(SMALL, [host("a", servers=3), host("b", servers=1), host("c", servers=2)]) == "b"
    assert schedule(SMALL, [host("b"), host("a")]) == "a"


def test_reasons_name_every_filtered_host() -> None:
    hosts = [host("off", enabled=False), host("dead", heartbeat_age=999), host("full", used_vcpus=16)]
    result = schedule(SMALL, hosts)
    assert set(refused(result)) == {"off", "dead", "full"}
    assert isinstance(result, NoValidHost)
    message = result.message()
    assert "3 hosts considered" in message and "off: disabled" in message and "full: needs 1 vCPUs" in message


@pytest.mark.parametrize("filtered_first", [True, False])
def test_filtered_hosts_do_not_hide_a_fitting_one(filtered_first: bool) -> None:
    hosts = [host("bad", enabled=False), host("good")]
    assert schedule(SMALL, hosts if filtered_first else hosts[::-1]) == "good"


def grouped(*hosts: str) -> PlacementRequest:
    return dataclasses.replace(SMALL, anti_affinity=AntiAffinity("g1", frozenset(hosts)))


def test_anti_affinity_skips_hosts_holding_a_member() -> None:
    # h1 has the most free RAM and would win, but it already holds a member of the group.
    hosts = [host("h1", memory_mib=16384), host("h2")]
    assert schedule(SMALL, hosts) == "h1"
    assert schedule(grouped("h1"), hosts) == "h2"


def test_anti_affinity_with_every_host_taken_is_no_valid_host() -> None:
    result = schedule(grouped("h1", "h2"), [host("h1"), host("h2")])
    reasons = refused(result)
    assert reasons == {
        "h1": "already holds a member of anti-affinity server group g1",
        "h2": "already holds a member of anti-affinity server group g1",
    }
    assert isinstance(result, NoValidHost) and "anti-affinity server group g1" in result.message()


def test_anti_affinity_with_unknown_hosts_changes_nothing() -> None:
    # Members on hosts that are gone, or a group with no placed members yet.
    assert schedule(grouped("gone"), [host("h1")]) == "h1"
    assert schedule(grouped(), [host("h1")]) == "h1"


def test_an_image_that_needs_kvm_goes_only_to_kvm_hosts() -> None:
    needs_kvm = dataclasses.replace(SMALL, accelerator="kvm")
    tcg_big = host("tcg-big", accelerator="tcg", memory_mib=65536)  # the weights would prefer it
    kvm = host("kvm", accelerator="kvm")
    assert schedule(needs_kvm, [tcg_big, kvm]) == "kvm"
    assert schedule(SMALL, [tcg_big, kvm]) == "tcg-big"  # an image without needs goes anywhere
    assert refused(schedule(needs_kvm, [tcg_big, host("new")])) == {
        "tcg-big": "accelerator tcg, the image needs kvm",
        "new": "accelerator unknown, the image needs kvm",
    }
