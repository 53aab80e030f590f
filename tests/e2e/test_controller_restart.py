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

from tests.e2e import journey
from tests.support.crash import daemon_pid, kill_9
from tests.support.keys import public_key

pytestmark = pytest.mark.e2e


def test_a_create_interrupted_by_a_controller_crash_finishes_after_restart(cloud: Any) -> None:
    public = public_key()
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
    agent = daemon_pid(Path(cloud.home), "agent")
    os.kill(agent, signal.SIGSTOP)
    try:
        with cloud.entered():
            deadline = time.monotonic() + 60
            while journey.show_job(ecs, job_id).status != "RUNNING":
                assert time.monotonic() < deadline, "the create job never started"
                time.sleep(0.05)
        # The controller's worker dies with the job RUNNING and the lease held.
        kill_9(daemon_pid(Path(cloud.home), "controller"), "the controller")
    finally:
        os.kill(agent, signal.SIGCONT)
    cloud.run("up")  # starts what is not running: here, the controller

    with cloud.entered():
        job = journey.wait_job(ecs, job_id, timeout=300)
        assert job.status == "SUCCESS", (job.error_code, job.fail_reason)
        assert journey.show(ecs, server_id).status == "ACTIVE"
        assert journey.wait_job(ecs, journey.delete(ecs, [server_id])).status == "SUCCESS"
