"""EVS volumes on a real guest: the official SDKs create a volume and hot-plug it into a running TCG guest,
which sees the right size and serial; data written over SSH survives a hot detach, a second attach, an online
extend (which the guest sees at once) and a stop/start of the server.

The checks inside the guest (sysfs, the raw device's checksum) and on the host (the volume's file) are
independent of the API.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import paramiko
import pytest
from huaweicloudsdkecs.v2 import (
    AttachServerVolumeOption,
    AttachServerVolumeRequest,
    AttachServerVolumeRequestBody,
    DetachServerVolumeRequest,
)
from huaweicloudsdkevs.v2 import (
    CreateVolumeOption,
    CreateVolumeRequest,
    CreateVolumeRequestBody,
    DeleteVolumeRequest,
    OsExtend,
    ResizeVolumeRequest,
    ResizeVolumeRequestBody,
    ShowJobRequest,
    ShowVolumeRequest,
)

from agent.storage.disks import GIB, image_info
from tests.e2e import journey
from tests.support import ssh

pytestmark = pytest.mark.e2e
log = logging.getLogger(__name__)

WAIT_S = 300.0  # generous: TCG guests on a noisy machine
SECTORS_PER_GIB = 2 * 1024 * 1024
DATA_MIB = 8


def evs_client(cloud: Any) -> Any:
    return cloud.evs()


def wait_evs_job(evs: Any, job_id: str) -> Any:
    deadline = time.monotonic() + WAIT_S
    while True:
        job = evs.show_job(ShowJobRequest(job_id=job_id))
        if job.status in ("SUCCESS", "FAIL"):
            return job
        assert time.monotonic() < deadline, f"job {job_id} still {job.status}"
        time.sleep(0.5)


def attach(ecs: Any, server_id: str, volume_id: str) -> Any:
    body = AttachServerVolumeRequestBody(volume_attachment=AttachServerVolumeOption(volume_id=volume_id))
    job = journey.wait_job(
        ecs, ecs.attach_server_volume(AttachServerVolumeRequest(server_id=server_id, body=body)).job_id
    )
    assert job.status == "SUCCESS", job
    log.info("attach job %s ran %s .. %s", job.job_id, job.begin_time, job.end_time)
    return job


def detach(ecs: Any, server_id: str, volume_id: str) -> None:
    request = DetachServerVolumeRequest(server_id=server_id, volume_id=volume_id)
    job = journey.wait_job(ecs, ecs.detach_server_volume(request).job_id)
    assert job.status == "SUCCESS", job
    log.info("detach job %s ran %s .. %s", job.job_id, job.begin_time, job.end_time)


def guest(client: paramiko.SSHClient, command: str) -> str:
    result = ssh.run(client, command)
    assert result.exit_status == 0, f"{command!r} exited {result.exit_status}: {result.stderr}"
    return result.stdout.strip()


def wait_in_guest(client: paramiko.SSHClient, command: str, what: str) -> None:
    """Poll until `command` succeeds in the guest (hot-plug completes a moment after libvirt returns)."""
    deadline = time.monotonic() + WAIT_S
    while ssh.run(client, command).exit_status != 0:
        assert time.monotonic() < deadline, f"the guest never saw {what}"
        time.sleep(0.5)


def test_hot_attach_write_detach_reattach_read(cloud: Any, keypair: tuple[str, Path]) -> None:
    public_key, key_path = keypair
    ecs, vpc, ims, evs = cloud.ecs(), cloud.vpc(), cloud.ims(), evs_client(cloud)
    with cloud.entered():
        journey.import_keypair(ecs, "vol-key", public_key)
        network = journey.create_network(
            vpc, name="vol", cidr="10.32.0.0/16", subnet_cidr="10.32.1.0/24", gateway="10.32.1.1"
        )
        ((server_id, ip),) = journey.boot_small_servers(
            ecs, ims, name="disk-1", network=network, key_name="vol-key"
        )
    option = CreateVolumeOption(availability_zone="lab-1a", size=1, volume_type="SSD", name="data")
    created = evs.create_volume(CreateVolumeRequest(body=CreateVolumeRequestBody(volume=option)))
    (volume_id,) = created.volume_ids
    assert wait_evs_job(evs, created.job_id).status == "SUCCESS"
    volume_file = Path(cloud.home) / "agent" / "volumes" / f"{volume_id}.qcow2"

    client = ssh.wait_for_ssh(cloud.ns, ip, key_path, timeout=WAIT_S)
    try:
        assert "vdb" not in guest(client, "ls /sys/block").split()
        with cloud.entered():
            attach(ecs, server_id, volume_id)
        assert evs.show_volume(ShowVolumeRequest(volume_id=volume_id)).volume.status == "in-use"
        wait_in_guest(client, "test -e /sys/block/vdb", "the hot-plugged vdb")
        assert guest(client, "cat /sys/block/vdb/size") == str(SECTORS_PER_GIB)
        assert guest(client, "cat /sys/block/vdb/serial") == volume_id[:20]
        written = guest(
            client,
            f"dd if=/dev/urandom of=/dev/vdb bs=1M count={DATA_MIB} 2>/dev/null && sync && "
            f"dd if=/dev/vdb bs=1M count={DATA_MIB} 2>/dev/null | sha256sum",
        ).split()[0]

        with cloud.entered():
            detach(ecs, server_id, volume_id)
        wait_in_guest(client, "test ! -e /sys/block/vdb", "vdb go away")
        assert evs.show_volume(ShowVolumeRequest(volume_id=volume_id)).volume.status == "available"

        with cloud.entered():
            attach(ecs, server_id, volume_id)
        wait_in_guest(client, "test -e /sys/block/vdb", "vdb come back")
        assert guest(client, "cat /sys/block/vdb/serial") == volume_id[:20]
        read_back = guest(client, f"dd if=/dev/vdb bs=1M count={DATA_MIB} 2>/dev/null | sha256sum").split()[0]
        assert read_back == written

        # Online extend: the running guest sees the larger disk at once, with its data untouched.
        resize = ResizeVolumeRequestBody(os_extend=OsExtend(new_size=2))
        job = wait_evs_job(
            evs, evs.resize_volume(ResizeVolumeRequest(volume_id=volume_id, body=resize)).job_id
        )
        assert job.status == "SUCCESS", job
        volume = evs.show_volume(ShowVolumeRequest(volume_id=volume_id)).volume
        assert (volume.status, volume.size) == ("in-use", 2)
        wait_in_guest(client, f"test $(cat /sys/block/vdb/size) = {2 * SECTORS_PER_GIB}", "vdb grow to 2 GiB")
        grown = guest(client, f"dd if=/dev/vdb bs=1M count={DATA_MIB} 2>/dev/null | sha256sum").split()[0]
        assert grown == written
        assert image_info(volume_file, fmt="qcow2").virtual_size == 2 * GIB
    finally:
        client.close()

    # A stop and start rebuilds the guest from the domain's persistent config: the volume must still be there.
    with cloud.entered():
        assert journey.wait_job(ecs, journey.stop(ecs, [server_id])).status == "SUCCESS"
        assert journey.wait_job(ecs, journey.start(ecs, [server_id])).status == "SUCCESS"
    client = ssh.wait_for_ssh(cloud.ns, ip, key_path, timeout=WAIT_S)
    try:
        wait_in_guest(client, "test -e /sys/block/vdb", "vdb after a restart")
        assert guest(client, "cat /sys/block/vdb/serial") == volume_id[:20]
        after_restart = guest(client, f"dd if=/dev/vdb bs=1M count={DATA_MIB} 2>/dev/null | sha256sum")
        assert after_restart.split()[0] == written
        assert guest(client, "cat /sys/block/vdb/size") == str(2 * SECTORS_PER_GIB)
        with cloud.entered():
            detach(ecs, server_id, volume_id)
        wait_in_guest(client, "test ! -e /sys/block/vdb", "vdb go away again")
    finally:
        client.close()

    assert volume_file.exists()
    assert (
        wait_evs_job(evs, evs.delete_volume(DeleteVolumeRequest(volume_id=volume_id)).job_id).status
        == "SUCCESS"
    )
    assert not volume_file.exists()
    with cloud.entered():
        assert journey.wait_job(ecs, journey.delete(ecs, [server_id])).status == "SUCCESS"
