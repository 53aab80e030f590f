"""The disk helpers of domain_xml: find, add and remove a `<disk>` in a whole domain, read target and source."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.virt.domain_xml import (
    DiskSpec,
    DomainSpec,
    SerialSpec,
    disk_source,
    disk_target,
    find_disk_device,
    parse_labcloud_metadata,
    render_disk_device,
    render_domain,
    with_disk_device,
    without_disk_device,
)


def domain() -> str:
    return render_domain(
        DomainSpec(
            server_id="srv-1",
            uuid="6f1c2f4e-0000-4000-8000-000000000001",
            project_id="p",
            server_name="web",
            domain_type="qemu",
            memory_mib=128,
            vcpus=1,
            disks=(DiskSpec(source=Path("/s/root.qcow2"), target="vda"),),
            serial=SerialSpec(path=Path("/s/console.log")),
        )
    )


VOLUME = render_disk_device(DiskSpec(source=Path("/s/volumes/vol-1.qcow2"), target="vdb", serial="vol-1"))


def test_target_and_source() -> None:
    assert (disk_target(VOLUME), disk_source(VOLUME)) == ("vdb", "/s/volumes/vol-1.qcow2")
    with pytest.raises(ValueError):
        disk_target("<disk/>")


def test_add_find_remove_round_trip() -> None:
    xml = with_disk_device(domain(), VOLUME)

    found = find_disk_device(xml, "vdb")
    assert found is not None and disk_source(found) == "/s/volumes/vol-1.qcow2" and "vol-1</serial>" in found
    assert find_disk_device(xml, "vda") is not None
    assert parse_labcloud_metadata(xml) == {"server_id": "srv-1", "project_id": "p", "name": "web"}
    removed = without_disk_device(xml, "vdb")
    assert find_disk_device(removed, "vdb") is None and find_disk_device(removed, "vda") is not None
    assert find_disk_device(without_disk_device(removed, "vdb"), "vda") is not None  # nothing to remove


def test_the_new_disk_follows_the_existing_disks() -> None:
    xml = with_disk_device(domain(), VOLUME)
    tags = [line.strip().split()[0] for line in xml.split("<devices>")[1].splitlines() if line.strip()]
    disk_positions = [i for i, t in enumerate(tags) if t == "<disk"]
    assert len(disk_positions) == 2 and disk_positions[1] > disk_positions[0]
