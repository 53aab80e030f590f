"""A volume that moves between hosts, for real: a two-host lab with both hosts in one zone, a TCG guest on each.

Data written inside the guest on h1 (random bytes to /dev/vdb over SSH, their sha256 taken there), the volume
detached, then attached to the guest on h2: the attach job moves the volume's file from h1 to h2 (agent to
agent over the lab's underlay), and the guest on h2 reads the same sha256. The hosts' state directories are the
other oracle: the file has left h1 and lives on h2.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paramiko
import pytest
from huaweicloudsdkevs.v2 import (
    CreateVolumeOption,
    CreateVolumeRequest,
    CreateVolumeRequestBody,
    ShowVolumeRequest,
)

from tests.e2e import journey
from tests.e2e.test_volumes import attach, detach, guest, wait_evs_job, wait_in_guest
from tests.support import ssh
from tests.support.lab import Lab, running_lab

pytestmark = [pytest.mark.e2e, pytest.mark.netns]
log = logging.getLogger(__name__)

SSH_WAIT_S = 420.0
DATA_MIB = 8


@pytest.fixture
def one_zone_lab(guest_image: Path) -> Iterator[Lab]:
    """`labcloud lab up --hosts 2 --azs 1`: h1 and h2 both in lab-1a, so a volume may move between them."""
    with running_lab(hosts=2, azs=1, extra_env={"LABCLOUD_SEED_IMAGE": str(guest_image)}) as made:
        yield made


def _admin(lab: Lab, *argv: str) -> None:
    done = lab.cli("exec", "--", sys.executable, "-m", "controller.cli.main", *argv)
    assert done.returncode == 0, done.stderr


def _server_on(lab: Lab, host: str, other: str, name: str, net: tuple[str, str, str]) -> Any:
    """A server placed on `host` (the other host disabled while it is scheduled)."""
    ecs = lab.ecs()
    _admin(lab, "host", "disable", other, "--reason", f"place {name}")
    try:
        with lab.entered():
            job_id, (server_id,) = journey.create_servers(
                ecs,
                name=name,
                image_id=journey.small_image_id(lab.ims()),
                flavor_id=journey.smallest_flavor_id(ecs),
                vpc_id=net[0],
                subnet_id=net[1],
                sg_id=net[2],
                key_name="move-key",
            )
            job = journey.wait_job(ecs, job_id, timeout=900)
            assert job.status == "SUCCESS", job
            server = journey.show(ecs, server_id)
    finally:
        _admin(lab, "host", "enable", other)
    assert server.os_ext_srv_att_rhost == host
    return server


def _login(lab: Lab, host: str, vpc_id: str, server: Any, key: Path) -> paramiko.SSHClient:
    return ssh.wait_for_ssh(lab.router_netns(host, vpc_id), journey.fixed_ip(server), key, timeout=SSH_WAIT_S)


def test_data_written_on_one_host_reads_back_on_another(one_zone_lab: Lab, keypair: tuple[str, Path]) -> None:
    lab = one_zone_lab
    public_key, key = keypair
    ecs, evs = lab.ecs(), lab.evs()
    with lab.entered():
        journey.import_keypair(ecs, "move-key", public_key)
        net = journey.create_network(
            lab.vpc(), name="mv", cidr="10.43.0.0/16", subnet_cidr="10.43.1.0/24", gateway="10.43.1.1"
        )
    server_a = _server_on(lab, "h1", "h2", "mv-a", net)
    server_b = _server_on(lab, "h2", "h1", "mv-b", net)
    option = CreateVolumeOption(availability_zone="lab-1a", size=1, volume_type="SSD", name="moving")
    created = evs.create_volume(CreateVolumeRequest(body=CreateVolumeRequestBody(volume=option)))
    (volume_id,) = created.volume_ids
    assert wait_evs_job(evs, created.job_id).status == "SUCCESS"
    on_h1 = lab.agent_state("h1") / "volumes" / f"{volume_id}.qcow2"
    on_h2 = lab.agent_state("h2") / "volumes" / f"{volume_id}.qcow2"

    client = _login(lab, "h1", net[0], server_a, key)
    try:
        with lab.entered():
            attach(ecs, server_a.id, volume_id)
        wait_in_guest(client, "test -e /sys/block/vdb", "the hot-plugged vdb on h1")
        written = guest(
            client,
            f"dd if=/dev/urandom of=/dev/vdb bs=1M count={DATA_MIB} 2>/dev/null && sync && "
            f"dd if=/dev/vdb bs=1M count={DATA_MIB} 2>/dev/null | sha256sum",
        ).split()[0]
        with lab.entered():
            detach(ecs, server_a.id, volume_id)
        wait_in_guest(client, "test ! -e /sys/block/vdb", "vdb leave the guest on h1")
    finally:
        client.close()
    assert on_h1.exists() and not on_h2.exists()

    started = time.monotonic()
    with lab.entered():
        job = attach(ecs, server_b.id, volume_id)  # the job moves the file from h1 to h2 first
    moved_in = time.monotonic() - started
    volume = evs.show_volume(ShowVolumeRequest(volume_id=volume_id)).volume
    assert (volume.status, [a.server_id for a in volume.attachments]) == ("in-use", [server_b.id]), job
    assert on_h2.exists() and not on_h1.exists()
    assert not list((lab.agent_state("h1") / "exports").glob("*"))

    client = _login(lab, "h2", net[0], server_b, key)
    try:
        wait_in_guest(client, "test -e /sys/block/vdb", "the moved vdb on h2")
        assert guest(client, "cat /sys/block/vdb/serial") == volume_id[:20]
        read_back = guest(client, f"dd if=/dev/vdb bs=1M count={DATA_MIB} 2>/dev/null | sha256sum").split()[0]
        assert read_back == written
    finally:
        client.close()
    log.info("attach with a move from h1 to h2: %.1f s", moved_in)

    with lab.entered():
        job = journey.wait_job(ecs, journey.delete(ecs, [server_a.id, server_b.id]), timeout=600)
        assert job.status == "SUCCESS", job
