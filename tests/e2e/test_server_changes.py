"""One guest through an attach and a resize that each lose their agent to kill -9 half way, then a reinstall.

The agent is a real process of a whole `labcloud up` cloud; it is killed while the job's call to it is in flight
(during the attach: frozen with SIGSTOP first, so the kill provably lands inside the call; during the resize:
the moment libvirt reports the guest shut down, before the agent has started it again) and restarted the way
`labcloud up` does. Each operation must converge (job SUCCESS) with the data volume's contents intact, checked
by a checksum inside the guest. The guest's own view proves the rest: nproc, MemTotal and the root disk's size
after the resize; after the reinstall, the new key logs in, the old one does not, a file on the old root disk
is gone, and the IP and the volume are the same.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from pathlib import Path
from typing import Any

import libvirt
import paramiko
import pytest
from huaweicloudsdkecs.v2 import (
    AttachServerVolumeOption,
    AttachServerVolumeRequest,
    AttachServerVolumeRequestBody,
    DeleteServersRequest,
    DeleteServersRequestBody,
    ServerId,
)
from huaweicloudsdkevs.v2 import (
    CreateVolumeOption,
    CreateVolumeRequest,
    CreateVolumeRequestBody,
    ShowVolumeRequest,
)

from agent.virt.domain_xml import domain_name
from tests.e2e import journey
from tests.e2e.test_volumes import evs_client, guest, wait_evs_job, wait_in_guest
from tests.support import ssh
from tests.support.crash import daemon_pid, kill_9
from tests.support.keys import write_keypair
from tests.support.server_changes import add_flavor, reinstall, resize

pytestmark = pytest.mark.e2e
log = logging.getLogger(__name__)

WAIT_S = 300.0
DATA_MIB = 8
SECTORS_PER_GIB = 2 * 1024 * 1024
BIG_FLAVOR = "e2.resize.3"  # 2 vCPUs, 256 MiB, a 3 GiB root disk


def _domain(home: Path, server_id: str) -> tuple[libvirt.virConnect, libvirt.virDomain]:
    conn = libvirt.open(f"qemu:///system?socket={home}/libvirt/run/libvirt-sock")
    return conn, conn.lookupByName(domain_name(server_id))


def _facts(client: paramiko.SSHClient) -> tuple[int, int, int]:
    """(nproc, MemTotal kB, root disk sectors) as the guest sees them."""
    nproc = int(guest(client, "nproc"))
    mem = int(guest(client, "awk '/^MemTotal:/ {print $2}' /proc/meminfo"))
    return nproc, mem, int(guest(client, "cat /sys/block/vda/size"))


def _checksum(client: paramiko.SSHClient) -> str:
    return guest(client, f"dd if=/dev/vdb bs=1M count={DATA_MIB} 2>/dev/null | sha256sum").split()[0]


def test_attach_and_resize_survive_agent_kills_then_reinstall(cloud: Any, tmp_path: Path) -> None:
    home = Path(cloud.home)
    first_public, first_key = write_keypair(tmp_path / "first")
    second_public, second_key = write_keypair(tmp_path / "second")
    add_flavor(
        f"sqlite:///{home / 'controller' / 'labcloud.db'}", BIG_FLAVOR, vcpus=2, ram_mib=256, disk_gib=3
    )
    ecs, vpc, ims, evs = cloud.ecs(), cloud.vpc(), cloud.ims(), evs_client(cloud)
    with cloud.entered():
        journey.import_keypair(ecs, "first", first_public)
        journey.import_keypair(ecs, "second", second_public)
        network = journey.create_network(
            vpc, name="change", cidr="10.43.0.0/16", subnet_cidr="10.43.1.0/24", gateway="10.43.1.1"
        )
        ((server_id, ip),) = journey.boot_small_servers(
            ecs, ims, name="changing", network=network, key_name="first", flavor_id="s6.nano.1"
        )
    option = CreateVolumeOption(availability_zone="lab-1a", size=1, volume_type="SSD", name="keep")
    created = evs.create_volume(CreateVolumeRequest(body=CreateVolumeRequestBody(volume=option)))
    (volume_id,) = created.volume_ids
    assert wait_evs_job(evs, created.job_id).status == "SUCCESS"

    client = ssh.wait_for_ssh(cloud.ns, ip, first_key, timeout=WAIT_S)
    try:
        before = _facts(client)
        assert before[0] == 1
        guest(client, "echo old-system > /root/marker && sync")

        # --- attach, with the agent killed while the job's call is in flight ---
        agent = daemon_pid(home, "agent")
        os.kill(agent, signal.SIGSTOP)
        try:
            body = AttachServerVolumeRequestBody(
                volume_attachment=AttachServerVolumeOption(volume_id=volume_id)
            )
            with cloud.entered():
                attach_job = ecs.attach_server_volume(
                    AttachServerVolumeRequest(server_id=server_id, body=body)
                ).job_id
                deadline = time.monotonic() + 60
                while journey.show_job(ecs, attach_job).status != "RUNNING":
                    assert time.monotonic() < deadline, "the attach job never started"
                    time.sleep(0.05)
            time.sleep(1.0)  # the job is now waiting on the frozen agent
        finally:
            kill_9(agent, "the agent")
        restarted = time.monotonic()
        cloud.run("up")  # starts what is not running: the agent
        log.info("agent restarted by `labcloud up` in %.1f s", time.monotonic() - restarted)
        with cloud.entered():
            job = journey.wait_job(ecs, attach_job, timeout=WAIT_S)
        assert job.status == "SUCCESS", (job.error_code, job.fail_reason)
        assert evs.show_volume(ShowVolumeRequest(volume_id=volume_id)).volume.status == "in-use"
        wait_in_guest(client, "test -e /sys/block/vdb", "the volume attached across an agent restart")
        written = guest(
            client,
            f"dd if=/dev/urandom of=/dev/vdb bs=1M count={DATA_MIB} 2>/dev/null && sync && "
            f"dd if=/dev/vdb bs=1M count={DATA_MIB} 2>/dev/null | sha256sum",
        ).split()[0]
    finally:
        client.close()

    # --- resize to 2 vCPUs / 256 MiB / 3 GiB, the agent killed once the guest is down ---
    conn, dom = _domain(home, server_id)
    try:
        with cloud.entered():
            resize_job = resize(ecs, server_id, BIG_FLAVOR).job_id
        deadline = time.monotonic() + WAIT_S
        while dom.isActive():
            assert time.monotonic() < deadline, "the guest was never shut down for the resize"
            time.sleep(0.01)
        kill_9(daemon_pid(home, "agent"), "the agent")
        assert not dom.isActive(), "the agent had already restarted the guest: the kill came too late"
        with cloud.entered():
            assert journey.show(ecs, server_id).status == "RESIZE"
    finally:
        conn.close()
    cloud.run("up")
    with cloud.entered():
        job = journey.wait_job(ecs, resize_job, timeout=WAIT_S)
        assert job.status == "SUCCESS", (job.error_code, job.fail_reason)
        detail = journey.show(ecs, server_id)
        assert (detail.status, detail.flavor.id, journey.fixed_ip(detail)) == ("ACTIVE", BIG_FLAVOR, ip)

    client = ssh.wait_for_ssh(cloud.ns, ip, first_key, timeout=WAIT_S)
    try:
        nproc, mem, sectors = _facts(client)
        assert nproc == 2
        assert mem > before[1] + 100 * 1024, (before, mem)  # 128 → 256 MiB
        assert sectors == 3 * SECTORS_PER_GIB
        assert guest(client, "cat /root/marker") == "old-system"
        wait_in_guest(client, "test -e /sys/block/vdb", "the volume after the resize")
        assert _checksum(client) == written
    finally:
        client.close()

    # --- reinstall with the second key pair: same server, IP and volume; a new root disk ---
    root_disk = home / "agent" / "instances" / server_id / "root.qcow2"
    old_inode = root_disk.stat().st_ino
    with cloud.entered():
        job = journey.wait_job(ecs, reinstall(ecs, server_id, keyname="second").job_id, timeout=WAIT_S)
        assert job.status == "SUCCESS", (job.error_code, job.fail_reason)
        detail = journey.show(ecs, server_id)
        assert (detail.status, detail.key_name, journey.fixed_ip(detail)) == ("ACTIVE", "second", ip)
    assert root_disk.stat().st_ino != old_inode
    client = ssh.wait_for_ssh(cloud.ns, ip, second_key, timeout=WAIT_S)
    try:
        assert ssh.run(client, "test -e /root/marker").exit_status != 0  # the old root disk is gone
        assert _facts(client)[0] == 2
        wait_in_guest(client, "test -e /sys/block/vdb", "the volume after the reinstall")
        assert _checksum(client) == written
    finally:
        client.close()
    with pytest.raises(paramiko.AuthenticationException):
        ssh.connect(cloud.ns, ip, first_key).close()

    with cloud.entered():
        body = DeleteServersRequestBody(servers=[ServerId(id=server_id)], delete_volume=True)
        assert (
            journey.wait_job(ecs, ecs.delete_servers(DeleteServersRequest(body=body)).job_id).status
            == "SUCCESS"
        )
    assert not (home / "agent" / "volumes" / f"{volume_id}.qcow2").exists()
