"""EVS snapshots on real guests: a snapshot taken (with `force`) of a volume that a running TCG guest holds, the
data changed, the volume detached and rolled back, and read again in the guest; a new volume from the snapshot
read by a second server; a volume made from the tinycloud image, whose partition table the guest sees; ECS
`block_device` listing what is attached.

Every data check is a checksum of the raw device computed inside the guest over SSH, or a comparison of the
files on the host: both independent of the API.
"""

from __future__ import annotations

import logging
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from huaweicloudsdkecs.v2 import ListServerBlockDevicesRequest
from huaweicloudsdkevs.v2 import (
    CreateSnapshotOption,
    CreateSnapshotRequest,
    CreateSnapshotRequestBody,
    CreateVolumeOption,
    CreateVolumeRequest,
    CreateVolumeRequestBody,
    RollbackSnapshotOption,
    RollbackSnapshotRequest,
    RollbackSnapshotRequestBody,
    ShowSnapshotRequest,
    ShowVolumeRequest,
)

from tests.e2e import journey
from tests.e2e.test_volumes import WAIT_S, attach, detach, evs_client, guest, wait_evs_job, wait_in_guest
from tests.support import ssh

pytestmark = pytest.mark.e2e
log = logging.getLogger(__name__)

DATA_MIB = 8


def checksum(client: Any, device: str) -> str:
    return guest(client, f"dd if=/dev/{device} bs=1M count={DATA_MIB} 2>/dev/null | sha256sum").split()[0]


def write_random(client: Any, device: str) -> str:
    guest(client, f"dd if=/dev/urandom of=/dev/{device} bs=1M count={DATA_MIB} 2>/dev/null && sync")
    return checksum(client, device)


def new_volume(evs: Any, name: str, **source: Any) -> str:
    option = CreateVolumeOption(availability_zone="lab-1a", size=1, volume_type="SSD", name=name, **source)
    created = evs.create_volume(CreateVolumeRequest(body=CreateVolumeRequestBody(volume=option)))
    job = wait_evs_job(evs, created.job_id)
    assert job.status == "SUCCESS", job
    return str(created.volume_ids[0])


def wait_status(show: Any, what: str, status: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while (current := show().status) != status:
        assert current not in ("error", "error_rollbacking"), f"{what} is {current}"
        assert time.monotonic() < deadline, f"{what} is still {current}, never {status}"
        time.sleep(0.5)


def test_snapshot_rollback_and_volumes_from_snapshot_and_image(cloud: Any, keypair: tuple[str, Path]) -> None:
    public_key, key_path = keypair
    ecs, vpc, ims, evs = cloud.ecs(), cloud.vpc(), cloud.ims(), evs_client(cloud)
    with cloud.entered():
        journey.import_keypair(ecs, "snap-key", public_key)
        network = journey.create_network(
            vpc, name="snap", cidr="10.33.0.0/16", subnet_cidr="10.33.1.0/24", gateway="10.33.1.1"
        )
        image_id = journey.small_image_id(ims)
        booted = journey.boot_small_servers(
            ecs, ims, name="snap", network=network, key_name="snap-key", count=2
        )
        server_ids = [server_id for server_id, _ in booted]
        first, second = server_ids
        ips = [ip for _, ip in booted]
    volume_id = new_volume(evs, "data")
    volumes_dir = Path(cloud.home) / "agent" / "volumes"

    def show_volume(vid: str) -> Any:
        return evs.show_volume(ShowVolumeRequest(volume_id=vid)).volume

    client = ssh.wait_for_ssh(cloud.ns, ips[0], key_path, timeout=WAIT_S)
    try:
        with cloud.entered():
            attach(ecs, first, volume_id)
        wait_in_guest(client, "test -e /sys/block/vdb", "the hot-plugged vdb")
        original = write_random(client, "vdb")

        # Snapshot while the guest holds the volume (and keeps running): libvirt's point-in-time copy.
        option = CreateSnapshotOption(volume_id=volume_id, force=True, name="before")
        snapshot = evs.create_snapshot(
            CreateSnapshotRequest(body=CreateSnapshotRequestBody(snapshot=option))
        ).snapshot
        wait_status(
            lambda: evs.show_snapshot(ShowSnapshotRequest(snapshot_id=snapshot.id)).snapshot,
            "snapshot",
            "available",
        )
        snapshot_file = Path(cloud.home) / "agent" / "snapshots" / f"{snapshot.id}.qcow2"
        assert snapshot_file.exists()
        assert guest(client, "echo alive") == "alive"

        changed = write_random(client, "vdb")
        assert changed != original
        with cloud.entered():
            devices = ecs.list_server_block_devices(ListServerBlockDevicesRequest(server_id=first))
        assert [(d.volume_id, d.device, d.size) for d in devices.volume_attachments] == [
            (volume_id, "/dev/vdb", 1)
        ]

        with cloud.entered():
            detach(ecs, first, volume_id)
        wait_in_guest(client, "test ! -e /sys/block/vdb", "vdb go away")
        body = RollbackSnapshotRequestBody(rollback=RollbackSnapshotOption(volume_id=volume_id))
        evs.rollback_snapshot(RollbackSnapshotRequest(snapshot_id=snapshot.id, body=body))
        wait_status(lambda: show_volume(volume_id), "the rolled-back volume", "available")
        with cloud.entered():
            attach(ecs, first, volume_id)
        wait_in_guest(client, "test -e /sys/block/vdb", "vdb come back")
        assert checksum(client, "vdb") == original  # the snapshot's data, not what was written after it

        # A volume from the tinycloud image: the guest sees its partitions, and the host file equals the image.
        image_volume = new_volume(evs, "from-image", image_ref=image_id)
        assert show_volume(image_volume).bootable == "true"
        with cloud.entered():
            attach(ecs, first, image_volume)
        wait_in_guest(client, "test -e /sys/block/vdc/vdc2", "the image's partitions on vdc")
        assert guest(client, "ls /sys/block/vdc | grep -c '^vdc[0-9]'") == "2"
        cached = next((Path(cloud.home) / "agent" / "images").glob("*.qcow2"))
        compared = subprocess.run(
            ["qemu-img", "compare", "-U", str(cached), str(volumes_dir / f"{image_volume}.qcow2")],
            capture_output=True,
            text=True,
            check=False,
        )
        assert compared.returncode == 0, compared.stdout + compared.stderr
    finally:
        client.close()

    # A new volume from the snapshot, attached to the second server, reads the snapshot's data.
    copy_id = new_volume(evs, "copy", snapshot_id=snapshot.id)
    assert show_volume(copy_id).snapshot_id == snapshot.id
    client = ssh.wait_for_ssh(cloud.ns, ips[1], key_path, timeout=WAIT_S)
    try:
        with cloud.entered():
            attach(ecs, second, copy_id)
        wait_in_guest(client, "test -e /sys/block/vdb", "the copy on the second server")
        assert checksum(client, "vdb") == original
    finally:
        client.close()

    with cloud.entered():
        assert journey.wait_job(ecs, journey.delete(ecs, server_ids)).status == "SUCCESS"
