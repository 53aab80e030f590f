"""Placement policy through the API, with real test-driver agents: an image that needs hardware virtualisation
(tag `accelerator=kvm`) lands only on a KVM host and, with none available, fails with the reason and leaks
nothing; the overcommit ratios come from the controller's settings (vCPU, RAM, disk), and parallel creates for
a host's last slots never over-commit it."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from huaweicloudsdkecs.v2 import ShowServerRequest
from huaweicloudsdkims.v2 import GlanceShowImageRequest
from sqlmodel import Session, select

from controller.models.network import Port
from tests.controller.api.server_helpers import Net, counts, create_and_wait, make_net, row, server
from tests.controller.api.test_admin_hosts import client_for
from tests.controller.api.test_image_manage import new_record, upload


@pytest.fixture
def api_settings(seed_image_file: Path) -> dict[str, Any]:
    return {"seed_image": seed_image_file}


@pytest.fixture
def net(api) -> Net:  # type: ignore[no-untyped-def]
    return make_net(api)


PARALLEL = 10


def domains(host: Any) -> list[str]:
    return sorted(s.id for s in host.service.host_info().servers)


def test_an_image_that_needs_kvm_runs_only_on_kvm_hosts(api, agents, net, seed_image_file) -> None:  # type: ignore[no-untyped-def]
    # The TCG host has more free RAM, which the weights prefer: only the image's need keeps it out.
    tcg = agents.start("tcg", memory_mib=16384, accelerator="tcg")
    kvm = agents.start("kvm", memory_mib=8192, accelerator="kvm")
    image = new_record(api, name="needs-kvm", tags=["accelerator=kvm"])
    upload(api, image.id, seed_image_file.read_bytes())
    shown = api.ims().glance_show_image(GlanceShowImageRequest(image_id=image.id))
    assert (shown.status, shown.tags) == ("active", ["accelerator=kvm"])
    ecs = api.ecs()

    (on_kvm,), job = create_and_wait(ecs, server(net, name="needs-kvm", image_ref=image.id))
    assert job.status == "SUCCESS", job.fail_reason
    (anywhere,), job = create_and_wait(ecs, server(net, name="plain"))
    assert job.status == "SUCCESS", job.fail_reason
    assert (row(api, on_kvm).host_id, row(api, anywhere).host_id) == (kvm.host_id, tcg.host_id)
    assert (domains(kvm), domains(tcg)) == ([on_kvm], [anywhere])

    # With the KVM host disabled, no host fits: the job fails with every host's reason, nothing is left.
    with client_for(api) as client:
        client.post(f"/v1/admin/hosts/{kvm.host_id}/disable", {"reason": "maintenance"})
    before = counts(api)
    (nowhere,), job = create_and_wait(ecs, server(net, name="nowhere", image_ref=image.id))
    assert job.status == "FAIL" and job.error_code == "Ecs.0209", job.fail_reason
    assert "No valid host" in job.fail_reason
    assert f"{tcg.host_id}: accelerator tcg, the image needs kvm" in job.fail_reason
    assert f"{kvm.host_id}: disabled" in job.fail_reason
    failed = row(api, nowhere)
    assert (failed.status, failed.host_id) == ("ERROR", None)
    shown_fault = ecs.show_server(ShowServerRequest(server_id=nowhere)).server.fault
    assert "accelerator tcg, the image needs kvm" in shown_fault["message"]
    with Session(api.ctx.engine) as session:
        assert session.exec(select(Port).where(Port.server_id == nowhere)).all() == []
    assert counts(api).ports == before.ports
    assert (domains(kvm), domains(tcg)) == ([on_kvm], [anywhere])


class TestOvercommitFromSettings:
    @pytest.fixture
    def api_settings(self, seed_image_file: Path) -> dict[str, Any]:
        # No vCPU overcommit (the default is 4), RAM overcommitted twice (the default is none).
        return {"seed_image": seed_image_file, "cpu_allocation_ratio": 1.0, "ram_allocation_ratio": 2.0}

    def test_the_ratios_decide_what_fits(self, api, agents, net) -> None:  # type: ignore[no-untyped-def]
        host = agents.start(cores=4, memory_mib=8192)
        with client_for(api) as admin:
            admin.post("/v1/admin/flavors", {"flavor": {"name": "wide.8", "vcpus": 8, "ram": 256}})
            admin.post("/v1/admin/flavors", {"flavor": {"name": "tall.12g", "vcpus": 1, "ram": 12288}})
        ecs = api.ecs()
        before = counts(api)
        (wide,), job = create_and_wait(ecs, server(net, name="wide", flavor_ref="wide.8"))
        assert job.status == "FAIL" and job.error_code == "Ecs.0209", job.fail_reason
        assert f"{host.host_id}: needs 8 vCPUs, 4 free" in job.fail_reason  # 4 cores x 1.0
        assert (row(api, wide).status, row(api, wide).host_id) == ("ERROR", None)
        assert counts(api).ports == before.ports and domains(host) == []
        # 12 GiB on an 8 GiB host fits only because RAM is overcommitted twice.
        (tall,), job = create_and_wait(ecs, server(net, name="tall", flavor_ref="tall.12g"))
        assert job.status == "SUCCESS", job.fail_reason
        assert domains(host) == [tall]

    def test_parallel_creates_for_the_last_slots_never_overcommit(self, api, agents, net) -> None:  # type: ignore[no-untyped-def]
        host = agents.start(cores=4, memory_mib=8192)  # 4 vCPUs at ratio 1.0: room for 4 one-vCPU servers
        barrier = threading.Barrier(PARALLEL)

        def one(i: int) -> Any:
            ecs = api.ecs()  # one SDK client per thread
            barrier.wait()
            return create_and_wait(ecs, server(net, name=f"race-{i}"))

        with ThreadPoolExecutor(max_workers=PARALLEL) as pool:
            results = list(pool.map(one, range(PARALLEL)))
        placed = sorted(sid for (sid,), job in results if job.status == "SUCCESS")
        failed = [job for _, job in results if job.status != "SUCCESS"]
        assert len(placed) == 4, [j.fail_reason for j in failed]
        assert {(j.status, j.error_code) for j in failed} == {("FAIL", "Ecs.0209")}
        assert all("needs 1 vCPUs, 0 free" in j.fail_reason for j in failed), [j.fail_reason for j in failed]
        assert domains(host) == placed


class TestDiskRatio:
    @pytest.fixture
    def api_settings(self, seed_image_file: Path) -> dict[str, Any]:
        # Test-driver hosts report the real size of this machine's disk: a tiny ratio makes it too small.
        return {"seed_image": seed_image_file, "disk_allocation_ratio": 0.0001}

    def test_a_host_without_disk_room_is_no_valid_host(self, api, agent_host, net) -> None:  # type: ignore[no-untyped-def]
        before = counts(api)
        (sid,), job = create_and_wait(api.ecs(), server(net, name="no-room"))
        assert job.status == "FAIL" and job.error_code == "Ecs.0209", job.fail_reason
        assert f"{agent_host.host_id}: needs 2 GiB disk" in job.fail_reason
        assert (row(api, sid).status, row(api, sid).host_id) == ("ERROR", None)
        assert counts(api).ports == before.ports and domains(agent_host) == []
