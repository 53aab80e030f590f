"""A controller killed in the middle of a create job: after a restart the job is resumed, never left RUNNING.

The agent is paused (SIGSTOP) while the job calls it, so the kill provably lands while the job is RUNNING; the
restarted controller takes the job over once the dead one's lease expires and re-runs its idempotent steps.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.e2e import journey

pytestmark = pytest.mark.e2e


def _pid(home: Path, name: str) -> int:
    return int((home / "run" / f"{name}.pid").read_text().split()[0])


def _kill_controller(home: Path) -> None:
    pid = _pid(home, "controller")
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    raise AssertionError(f"controller {pid} survived SIGKILL")


def test_a_create_interrupted_by_a_controller_crash_finishes_after_restart(cloud: Any) -> None:
    key = Ed25519PrivateKey.generate().public_key()
    public = key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    ecs, vpc, ims = cloud.ecs(), cloud.vpc(), cloud.ims()
    with cloud.entered():
        journey.import_keypair(ecs, "restart-key", public)
        vpc_id, subnet_id, sg_id = journey.create_network(
            vpc, name="restart", cidr="10.41.0.0/16", subnet_cidr="10.41.1.0/24", gateway="10.41.1.1"
        )
        job_id, (server_id,) = journey.create_servers(
            ecs,
            name="survivor",
            image_id=journey.small_image_id(ims),
            flavor_id=journey.smallest_flavor_id(ecs),
            vpc_id=vpc_id,
            subnet_id=subnet_id,
            sg_id=sg_id,
            key_name="restart-key",
        )
    agent = _pid(Path(cloud.home), "agent")
    os.kill(agent, signal.SIGSTOP)
    try:
        with cloud.entered():
            deadline = time.monotonic() + 60
            while journey.show_job(ecs, job_id).status != "RUNNING":
                assert time.monotonic() < deadline, "the create job never started"
                time.sleep(0.05)
        _kill_controller(Path(cloud.home))  # its worker dies with the job RUNNING and the lease held
    finally:
        os.kill(agent, signal.SIGCONT)
    cloud.run("up")  # starts what is not running: here, the controller

    with cloud.entered():
        job = journey.wait_job(ecs, job_id, timeout=300)
        assert job.status == "SUCCESS", (job.error_code, job.fail_reason)
        assert journey.show(ecs, server_id).status == "ACTIVE"
        assert journey.wait_job(ecs, journey.delete(ecs, [server_id])).status == "SUCCESS"
