"""The lab's shape (pure): namespaces, underlay addresses, homes, zones, and what it refuses."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from controller.cli.lab_plan import CONTROLLER, EXTERNAL, HOST, UNDERLAY, plan


def test_three_hosts_in_two_zones() -> None:
    lab = plan("1a2b", Path("/tmp/lab"), hosts=3, azs=2)
    assert lab.fabric_ns == "lcl-1a2b-fab"
    assert [(m.name, m.role, m.ns, m.address, m.zone) for m in lab.members] == [
        ("ext", EXTERNAL, "lcl-1a2b-ext", "10.254.0.1", None),
        ("ctl", CONTROLLER, "lcl-1a2b-ctl", "10.254.0.2", None),
        ("h1", HOST, "lcl-1a2b-h1", "10.254.0.11", "lab-1a"),
        ("h2", HOST, "lcl-1a2b-h2", "10.254.0.12", "lab-1b"),
        ("h3", HOST, "lcl-1a2b-h3", "10.254.0.13", "lab-1a"),
    ]
    assert lab.controller.home == Path("/tmp/lab/controller") and lab.hosts[2].home == Path("/tmp/lab/h3")
    assert lab.external.home is None
    assert lab.controller_url == "http://10.254.0.2:8778"
    assert lab.namespaces == [
        "lcl-1a2b-fab",
        "lcl-1a2b-ext",
        "lcl-1a2b-ctl",
        "lcl-1a2b-h1",
        "lcl-1a2b-h2",
        "lcl-1a2b-h3",
    ]
    assert all(len(m.fabric_port) <= 15 for m in lab.members)


def test_every_address_is_unique_and_on_the_underlay() -> None:
    lab = plan("beef", Path("/tmp/lab"), hosts=16, azs=4)
    addresses = [m.address for m in lab.members]
    assert len(set(addresses)) == len(addresses)
    assert all(ipaddress.IPv4Address(a) in UNDERLAY for a in addresses)
    assert {m.zone for m in lab.hosts} == {"lab-1a", "lab-1b", "lab-1c", "lab-1d"}


@pytest.mark.parametrize(
    ("lab_id", "hosts", "azs"),
    [("1a2b", 0, 1), ("1a2b", 17, 1), ("1a2b", 2, 3), ("1a2b", 2, 0), ("XYZ!", 2, 1), ("../x", 2, 1)],
)
def test_impossible_labs_are_refused(lab_id: str, hosts: int, azs: int) -> None:
    with pytest.raises(ValueError):
        plan(lab_id, Path("/tmp/lab"), hosts=hosts, azs=azs)
