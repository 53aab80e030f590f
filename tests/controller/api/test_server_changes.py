"""Resize, reinstall and change OS through the official SDK: a real controller, a real agent on libvirt's test
driver and real qcow2 disks. The guest's own view (nproc, meminfo, SSH with the new key) is in
tests/e2e/test_server_changes.py."""

from __future__ import annotations

import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
from huaweicloudsdkecs.v2 import (
    BatchStopServersOption,
    BatchStopServersRequest,
    BatchStopServersRequestBody,
    ListResizeFlavorsRequest,
    NovaCreateKeypairOption,
    NovaCreateKeypairRequest,
    NovaCreateKeypairRequestBody,
    ServerId,
    ShowServerLimitsRequest,
    ShowServerRequest,
)
from sqlmodel import Session

from agent.storage.disks import image_info
from agent.storage.layout import instance_paths
from agent.storage.seed import read_seed
from controller.db import session_scope
from controller.models.image import Image
from controller.services import quotas
from tests.controller.api.helpers import expect_error
from tests.controller.api.server_helpers import (
    FLAVOR,
    Net,
    counts,
    create_and_wait,
    make_net,
    row,
    server,
    wait_job,
)
from tests.support.server_changes import add_flavor, change_os, reinstall, resize

GIB = 1024**3


@pytest.fixture
def api_settings(seed_image_file: Path) -> dict[str, Any]:
    return {"seed_image": seed_image_file}


@pytest.fixture
def net(api) -> Net:  # type: ignore[no-untyped-def]
    add_flavor(api.ctx.engine, "t2.resize.4", vcpus=2, ram_mib=512, disk_gib=4)
    add_flavor(api.ctx.engine, "t1.small.1", vcpus=1, ram_mib=256, disk_gib=1)
    return make_net(api)


def _domain(agent_host: Any, server_id: str) -> tuple[int, int]:
    """(vCPUs, memory MiB) of the domain's persistent definition, as libvirt holds it."""
    root = ET.fromstring(agent_host.service._host.domain_xml(server_id, inactive=True))
    memory = root.find("memory")
    assert memory is not None and memory.get("unit") == "KiB"
    return int(root.findtext("vcpu") or 0), int(memory.text or 0) // 1024


def _root(agent_host: Any, server_id: str) -> Path:
    return instance_paths(agent_host.settings.state_dir, server_id).root_disk


def _stop(ecs: Any, server_id: str) -> None:
    body = BatchStopServersRequestBody(os_stop=BatchStopServersOption(servers=[ServerId(id=server_id)]))
    assert (
        wait_job(ecs, ecs.batch_stop_servers(BatchStopServersRequest(body=body)).job_id).status == "SUCCESS"
    )


def test_resize_running_and_stopped_servers(api, agent_host, net) -> None:  # type: ignore[no-untyped-def]
    ecs = api.ecs()
    (sid,), job = create_and_wait(ecs, server(net))
    assert job.status == "SUCCESS", job.fail_reason
    assert _domain(agent_host, sid) == (1, 128)
    assert image_info(_root(agent_host, sid)).virtual_size == 2 * GIB
    offered = ecs.list_resize_flavors(ListResizeFlavorsRequest(instance_uuid=sid, source_flavor_id=FLAVOR))
    assert "t2.resize.4" in [f.id for f in offered.flavors]

    # A running server needs mode withStopServer; without it nothing changes.
    before = counts(api)
    err = expect_error(lambda: resize(ecs, sid, "t2.resize.4", mode=None), 409, "Ecs.0104")
    assert "withStopServer" in err.error_msg
    assert counts(api) == before and row(api, sid).flavor_id == FLAVOR
    # A dry run checks and changes nothing either.
    resize(ecs, sid, "t2.resize.4", dry_run=True)
    assert counts(api) == before and row(api, sid).flavor_id == FLAVOR

    job = wait_job(ecs, resize(ecs, sid, "t2.resize.4").job_id)
    assert (job.status, job.job_type) == ("SUCCESS", "resizeServer"), job.fail_reason
    detail = ecs.show_server(ShowServerRequest(server_id=sid)).server
    assert (detail.status, detail.flavor.id, detail.flavor.vcpus, detail.flavor.ram) == (
        "ACTIVE",
        "t2.resize.4",
        "2",
        "512",
    )
    assert detail.flavor.disk == "4" and row(api, sid).root_volume_size == 4
    assert _domain(agent_host, sid) == (2, 512)
    assert image_info(_root(agent_host, sid)).virtual_size == 4 * GIB
    assert agent_host.service.server_state(sid).power == "running"
    limits = ecs.show_server_limits(ShowServerLimitsRequest()).absolute
    assert (limits.total_cores_used, limits.total_ram_used) == (2, 512)

    # A stopped server is resized without mode and stays stopped; a smaller flavor RAM is fine, the disk stays.
    _stop(ecs, sid)
    job = wait_job(ecs, resize(ecs, sid, "s6.micro.1", mode=None).job_id)
    assert job.status == "SUCCESS", job.fail_reason
    assert ecs.show_server(ShowServerRequest(server_id=sid)).server.status == "SHUTOFF"
    assert _domain(agent_host, sid) == (1, 256)
    assert image_info(_root(agent_host, sid)).virtual_size == 4 * GIB
    assert agent_host.service.server_state(sid).power == "shutoff"


def test_resize_refusals_change_nothing(api, agent_host, net) -> None:  # type: ignore[no-untyped-def]
    ecs = api.ecs()
    (sid,), job = create_and_wait(ecs, server(net))
    assert job.status == "SUCCESS", job.fail_reason
    before = counts(api)
    # A root disk never shrinks: t1.small.1 has a 1 GiB root disk, the server 2 GiB.
    err = expect_error(lambda: resize(ecs, sid, "t1.small.1"), 400, "Ecs.0005")
    assert "cannot shrink" in err.error_msg
    expect_error(lambda: resize(ecs, sid, FLAVOR), 400, "Ecs.0005")  # the flavor it has
    expect_error(lambda: resize(ecs, sid, "m9.huge"), 404, "Ecs.0038")
    expect_error(lambda: resize(ecs, "no-such-server", "t2.resize.4"), 404, "Ecs.0114")
    other = api.new_project("other")
    expect_error(lambda: resize(other.ecs(), sid, "t2.resize.4"), 404, "Ecs.0114")
    # list_resize_flavors offers for the server only what a resize would take: not its own flavor, not a
    # smaller root disk; unknown and foreign servers are 404.
    offered = {f.id for f in ecs.list_resize_flavors(ListResizeFlavorsRequest(instance_uuid=sid)).flavors}
    assert "t2.resize.4" in offered and not offered & {FLAVOR, "t1.small.1"}
    everything = {f.id for f in ecs.list_resize_flavors(ListResizeFlavorsRequest()).flavors}
    assert {FLAVOR, "t1.small.1", "t2.resize.4"} <= everything
    for client, uuid in ((other.ecs(), sid), (ecs, "no-such-server")):
        expect_error(
            lambda c=client, u=uuid: c.list_resize_flavors(ListResizeFlavorsRequest(instance_uuid=u)),
            404,
            "Ecs.0114",
        )
    # Quota: the growth in cores is what counts.
    with Session(api.ctx.engine) as session:
        quotas.set_limits(session, api.project_id, {"cores": 1})
        session.commit()
    err = expect_error(lambda: resize(ecs, sid, "t2.resize.4"), 403, "Ecs.0105")
    assert "cores" in err.error_msg
    assert counts(api) == before
    current = row(api, sid)
    assert (current.flavor_id, current.root_volume_size, current.status, current.task_state) == (
        FLAVOR,
        2,
        "ACTIVE",
        None,
    )
    assert _domain(agent_host, sid) == (1, 128)


def test_resize_failing_on_the_host_goes_back_to_the_old_flavor(api, agent_host, net) -> None:  # type: ignore[no-untyped-def]
    ecs = api.ecs()
    (sid,), job = create_and_wait(ecs, server(net))
    assert job.status == "SUCCESS", job.fail_reason
    # The host's disk is bigger than the database knows (an operator grew it): the host refuses to shrink.
    subprocess.run(["qemu-img", "resize", "-q", str(_root(agent_host, sid)), "8G"], check=True)
    job = wait_job(ecs, resize(ecs, sid, "t2.resize.4").job_id)
    assert job.status == "FAIL" and job.error_code == "Ecs.0210"
    assert "cannot shrink" in job.fail_reason
    current = row(api, sid)
    assert (current.status, current.task_state, current.flavor_id, current.root_volume_size) == (
        "ACTIVE",
        None,
        FLAVOR,
        2,
    )
    assert "cannot shrink" in (current.fault_message or "")
    assert _domain(agent_host, sid) == (1, 128)
    assert agent_host.service.server_state(sid).power == "running"


def test_reinstall_and_change_os(api, agent_host, net) -> None:  # type: ignore[no-untyped-def]
    ecs = api.ecs()
    first = _keypair(ecs, "first")
    second = _keypair(ecs, "second")
    (sid,), job = create_and_wait(ecs, server(net, key_name="first"))
    assert job.status == "SUCCESS", job.fail_reason
    paths = instance_paths(agent_host.settings.state_dir, sid)
    old_root = paths.root_disk.stat().st_ino
    assert read_seed(paths.seed)["meta-data"].count(first.public_key.split()[1]) == 1
    ip_before = row(api, sid)
    addresses_before = ecs.show_server(ShowServerRequest(server_id=sid)).server.addresses

    before = counts(api)
    expect_error(lambda: reinstall(ecs, sid, mode=None, keyname="second"), 409, "Ecs.0104")
    expect_error(lambda: reinstall(ecs, sid, keyname="second", adminpass="Passw0rd!x"), 400, "Ecs.0005")
    expect_error(lambda: reinstall(ecs, sid, keyname="nobody"), 400, "Ecs.0005")
    expect_error(lambda: change_os(ecs, sid, "no-such-image"), 404, "IMG.0027")
    # Another project's server, and another project's private image: 404 as if they did not exist.
    other = api.new_project("other")
    expect_error(lambda: reinstall(other.ecs(), sid, keyname="second"), 404, "Ecs.0114")
    with session_scope(api.ctx.engine) as session:
        foreign = Image(name="theirs", owner=other.project_id, status="active", visibility="private")
        session.add(foreign)
    expect_error(lambda: change_os(ecs, sid, foreign.id, keyname="second"), 404, "IMG.0027")
    assert counts(api) == before

    job = wait_job(ecs, reinstall(ecs, sid, keyname="second").job_id)
    assert (job.status, job.job_type) == ("SUCCESS", "reinstallServer"), job.fail_reason
    detail = ecs.show_server(ShowServerRequest(server_id=sid)).server
    assert (detail.status, detail.key_name, detail.id) == ("ACTIVE", "second", sid)
    assert detail.addresses == addresses_before  # the same port, MAC and fixed IP
    assert paths.root_disk.stat().st_ino != old_root  # a new overlay replaced the old one
    assert not any(p.name.startswith("root.next") for p in paths.dir.iterdir())
    meta = read_seed(paths.seed)["meta-data"]
    assert second.public_key.split()[1] in meta and first.public_key.split()[1] not in meta
    assert f"{sid}-" in meta.splitlines()[0]  # a new instance id: cloud-init runs again
    assert agent_host.service.server_state(sid).power == "running"
    after = row(api, sid)
    assert (after.host_id, after.vpc_id) == (ip_before.host_id, ip_before.vpc_id)

    # Change OS (here to the same image, through the other path), stopped, with a password instead of a key.
    _stop(ecs, sid)
    job = wait_job(ecs, change_os(ecs, sid, net.image_id, mode=None, adminpass="Passw0rd!x").job_id)
    assert (job.status, job.job_type) == ("SUCCESS", "changeServerOs"), job.fail_reason
    current = row(api, sid)
    assert (current.status, current.key_name, current.admin_pass) == ("ACTIVE", None, None)
    assert agent_host.service._specs.get(sid).ssh_keys == []  # type: ignore[union-attr]
    assert "Passw0rd!x" in read_seed(paths.seed)["user-data"]


def _keypair(ecs: Any, name: str) -> Any:
    body = NovaCreateKeypairRequestBody(keypair=NovaCreateKeypairOption(name=name))
    return ecs.nova_create_keypair(NovaCreateKeypairRequest(body=body)).keypair
