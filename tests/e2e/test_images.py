"""Private images from a real guest: a file written over SSH is in an image captured while the guest runs
(libvirt's point-in-time backup job) and in one captured after it stopped (qemu-img of the overlay); a new server
booted from the live capture finds the file over SSH. The image cannot be deleted while that server uses it.
"""

from __future__ import annotations

import logging
import secrets
import subprocess
import time
from pathlib import Path
from typing import Any

import paramiko
import pytest
from huaweicloudsdkcore.exceptions.exceptions import ClientRequestException
from huaweicloudsdkims.v2 import (
    CreateImageRequest,
    CreateImageRequestBody,
    GlanceDeleteImageRequest,
    GlanceShowImageRequest,
)
from huaweicloudsdkims.v2 import ShowJobRequest as ImsShowJobRequest

from tests.e2e import journey
from tests.support import ssh

pytestmark = pytest.mark.e2e
log = logging.getLogger(__name__)

WAIT_S = 600.0  # generous: TCG guests on a noisy machine


def guest(client: paramiko.SSHClient, command: str) -> str:
    result = ssh.run(client, command)
    assert result.exit_status == 0, f"{command!r} exited {result.exit_status}: {result.stderr}"
    return result.stdout.strip()


def capture(ims: Any, server_id: str, name: str) -> Any:
    job_id = ims.create_image(
        CreateImageRequest(body=CreateImageRequestBody(name=name, instance_id=server_id))
    ).job_id
    deadline = time.monotonic() + WAIT_S
    while True:
        job = ims.show_job(ImsShowJobRequest(job_id=job_id))
        if job.status in ("SUCCESS", "FAIL"):
            break
        assert time.monotonic() < deadline, f"image job {job_id} still {job.status}"
        time.sleep(1.0)
    assert job.status == "SUCCESS", job.fail_reason
    log.info("image job %s (%s) ran %s .. %s", job_id, name, job.begin_time, job.end_time)
    return job


def test_images_from_a_running_and_a_stopped_guest(cloud: Any, keypair: tuple[str, Path]) -> None:
    public_key, key_path = keypair
    ecs, vpc, ims = cloud.ecs(), cloud.vpc(), cloud.ims()
    with cloud.entered():
        journey.import_keypair(ecs, "img-key", public_key)
        vpc_id, subnet_id, sg_id = journey.create_network(
            vpc, name="img", cidr="10.34.0.0/16", subnet_cidr="10.34.1.0/24", gateway="10.34.1.1"
        )
        flavor_id = journey.smallest_flavor_id(ecs)
        net = {"vpc_id": vpc_id, "subnet_id": subnet_id, "sg_id": sg_id, "key_name": "img-key"}
        job_id, (source_id,) = journey.create_servers(
            ecs, name="source", image_id=journey.small_image_id(ims), flavor_id=flavor_id, **net
        )
        assert journey.wait_job(ecs, job_id).status == "SUCCESS"
        source_ip = journey.fixed_ip(journey.show(ecs, source_id))

    live_token, stopped_token = secrets.token_hex(16), secrets.token_hex(16)
    client = ssh.wait_for_ssh(cloud.ns, source_ip, key_path, timeout=WAIT_S)
    try:
        guest(client, f"echo {live_token} > /root/live-marker && sync")
        # Captured while running: the guest keeps writing during the copy, and keeps answering.
        guest(client, "(while true; do date >> /root/busy; sync; sleep 0.2; done) >/dev/null 2>&1 &")
        with cloud.entered():
            live_job = capture(ims, source_id, "from-running")
            live_image = ims.glance_show_image(GlanceShowImageRequest(image_id=live_job.entities.image_id))
        assert (live_image.status, live_image.visibility) == ("active", "private")
        assert guest(client, "cat /root/live-marker") == live_token
        guest(client, f"echo {stopped_token} > /root/stopped-marker && sync")
    finally:
        client.close()

    # Captured after a stop: byte for byte the overlay chain of the root disk.
    with cloud.entered():
        assert journey.wait_job(ecs, journey.stop(ecs, [source_id])).status == "SUCCESS"
        stopped_job = capture(ims, source_id, "from-stopped")
    stored = Path(cloud.home) / "controller" / "images" / f"{stopped_job.entities.image_id}.qcow2"
    root = Path(cloud.home) / "agent" / "instances" / source_id / "root.qcow2"
    same = subprocess.run(
        ["qemu-img", "compare", "-U", str(root), str(stored)], capture_output=True, text=True
    )
    assert same.returncode == 0, same.stdout + same.stderr

    # A new server from the live capture boots and has the file written before it.
    with cloud.entered():
        job_id, (copy_id,) = journey.create_servers(
            ecs, name="copy", image_id=live_image.id, flavor_id=flavor_id, **net
        )
        assert journey.wait_job(ecs, job_id).status == "SUCCESS"
        copy_ip = journey.fixed_ip(journey.show(ecs, copy_id))
    client = ssh.wait_for_ssh(cloud.ns, copy_ip, key_path, timeout=WAIT_S)
    try:
        assert guest(client, "cat /root/live-marker") == live_token
        assert guest(client, "test -e /root/stopped-marker || echo absent") == "absent"
        assert guest(client, "hostname") != ""
    finally:
        client.close()

    # The image under a live server cannot be deleted; once the server is gone it can.
    with cloud.entered():
        with pytest.raises(ClientRequestException) as info:
            ims.glance_delete_image(GlanceDeleteImageRequest(image_id=live_image.id))
        assert (info.value.status_code, info.value.error_code) == (409, "IMG.0035")
        assert journey.wait_job(ecs, journey.delete(ecs, [copy_id, source_id])).status == "SUCCESS"
        ims.glance_delete_image(GlanceDeleteImageRequest(image_id=live_image.id))
        ims.glance_delete_image(GlanceDeleteImageRequest(image_id=stopped_job.entities.image_id))
    assert not stored.exists()
