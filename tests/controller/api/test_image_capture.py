"""Private images from servers (`create_image` with `instance_id`) through the official IMS SDK, on a real
controller and a real agent over libvirt's test driver with real qcow2 files: the stopped server's root disk is
flattened on the host, copied into the store and verified; a new server is built on it. The live copy of a
running guest needs a real QEMU: tests/e2e/test_images.py."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
from huaweicloudsdkims.v2 import (
    CreateDataImage,
    CreateImageRequest,
    CreateImageRequestBody,
    GlanceShowImageRequest,
)

from agent.storage.layout import instance_paths
from controller.db import session_scope
from controller.models.image import KILLED, Image
from controller.models.server import Server
from tests.controller.api.helpers import expect_error
from tests.controller.api.server_helpers import create_and_wait, make_net, server
from tests.controller.api.test_image_import import count, image_row, store_files
from tests.controller.api.test_image_import import wait_job as wait_ims_job
from tests.controller.api.test_volumes import stopped_server


@pytest.fixture
def api_settings(seed_image_file: Path) -> dict[str, Any]:
    return {"seed_image": seed_image_file}


def capture(clients: Any, server_id: str, name: str = "golden", **extra: Any) -> Any:
    body = CreateImageRequestBody(name=name, instance_id=server_id, **extra)
    return clients.ims().create_image(CreateImageRequest(body=body))


def same_content(a: Path, b: Path) -> None:
    out = subprocess.run(["qemu-img", "compare", "-U", str(a), str(b)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_an_image_from_a_stopped_server_holds_its_disk_and_boots(api: Any, agent_host: Any) -> None:
    server_id = stopped_server(api)
    root = instance_paths(agent_host.settings.state_dir, server_id).root_disk
    write = ["qemu-io", "-f", "qcow2", "-c", "write -P 0x61 0 1M", str(root)]
    subprocess.run(write, check=True, capture_output=True)

    job = wait_ims_job(api, capture(api, server_id).job_id)
    assert job.status == "SUCCESS", job.fail_reason
    assert job.job_type == "createImageByInstance"
    image_id = job.entities.image_id
    shown = api.ims().glance_show_image(GlanceShowImageRequest(image_id=image_id))
    assert (shown.status, shown.visibility, shown.owner) == ("active", "private", api.project_id)
    assert shown.min_disk == 2  # the server's root disk
    assert shown.data_origin == f"instance,{server_id}"
    same_content(root, Path(str(image_row(api, image_id).file_path)))
    assert not list((agent_host.settings.state_dir / "exports").iterdir())  # the export was removed

    # A new server is built on it: its overlay shows the captured content.
    net = make_net(api, cidr="10.30.0.0/16", subnet_cidr="10.30.1.0/24", gateway="10.30.1.1")
    (new_id,), created = create_and_wait(api.ecs(), server(net, image_ref=image_id))
    assert created.status == "SUCCESS", created
    same_content(root, instance_paths(agent_host.settings.state_dir, new_id).root_disk)


def test_capture_of_unknown_foreign_or_busy_servers_is_refused(api: Any, agent_host: Any) -> None:
    server_id = stopped_server(api)
    before = (count(api, Image), store_files(api))
    expect_error(lambda: capture(api, "nope"), 404, "Ecs.0114")
    expect_error(lambda: capture(api.new_project("other"), server_id), 404, "Ecs.0114")
    data = [CreateDataImage(name="d", volume_id="v")]
    expect_error(lambda: capture(api, server_id, data_images=data), 400, "IMG.0001")
    with session_scope(api.ctx.engine) as session:
        row = session.get(Server, server_id)
        assert row is not None
        row.status = "ERROR"
        session.add(row)
    exc = expect_error(lambda: capture(api, server_id), 409, "Ecs.0104")
    assert "ACTIVE or SHUTOFF" in exc.error_msg
    assert (count(api, Image), store_files(api)) == before


def test_a_failed_capture_kills_the_image_and_leaves_nothing(api: Any, agent_host: Any) -> None:
    server_id = stopped_server(api)
    before = store_files(api)
    instance_paths(agent_host.settings.state_dir, server_id).root_disk.unlink()  # the host lost the disk
    job = wait_ims_job(api, capture(api, server_id).job_id)
    assert job.status == "FAIL"
    assert "exporting the root disk" in job.fail_reason and agent_host.host_id in job.fail_reason
    image = image_row(api, job.entities.image_id)
    assert (image.status, image.file_path) == (KILLED, None)
    assert store_files(api) == before
    assert not list((agent_host.settings.state_dir / "exports").iterdir())
