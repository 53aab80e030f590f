"""Quotas through the official SDK and the admin API against a real controller on SQLite: the limits
document, refusals that create nothing, and 50 parallel creates against a quota of 10."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from huaweicloudsdkcore.exceptions.exceptions import ClientRequestException
from huaweicloudsdkecs.v2 import (
    NovaCreateKeypairOption,
    NovaCreateKeypairRequest,
    NovaCreateKeypairRequestBody,
    ShowServerLimitsRequest,
)
from huaweicloudsdkvpc.v2 import ListSecurityGroupsRequest
from sqlmodel import Session, select

from controller.cli.client import ApiCallError
from controller.models.keypair import Keypair
from tests.controller.api.helpers import create_security_group, expect_error
from tests.controller.api.server_helpers import Net, counts, create, create_and_wait, make_net, server
from tests.controller.api.test_admin_hosts import client_for
from tests.support.postgres import on_both_databases

PARALLEL = 50
QUOTA = 10


@pytest.fixture
def api_settings(seed_image_file: Path) -> dict[str, Any]:
    return {"seed_image": seed_image_file}


@pytest.fixture
def net(api) -> Net:  # type: ignore[no-untyped-def]
    return make_net(api)


def set_quota(api: Any, project_id: str, **limits: int | None) -> dict[str, Any]:
    with client_for(api) as client:
        return dict(client.put(f"/v1/admin/projects/{project_id}/quotas", {"quota": limits}))


def limits(clients: Any) -> Any:
    return clients.ecs().show_server_limits(ShowServerLimitsRequest()).absolute


def test_limits_answer_the_sdk_model_with_defaults_and_usage(api, net) -> None:  # type: ignore[no-untyped-def]
    settings = api.ctx.settings
    absolute = limits(api)
    assert (absolute.max_total_instances, absolute.max_total_cores, absolute.max_total_ram_size) == (
        settings.quota_instances,
        settings.quota_cores,
        settings.quota_ram_mib,
    )
    assert (absolute.total_instances_used, absolute.total_cores_used, absolute.total_ram_used) == (0, 0, 0)
    assert absolute.max_security_groups == settings.quota_security_groups
    assert absolute.max_total_keypairs == settings.quota_key_pairs
    assert absolute.limit_by_flavor == []
    for key in ("max_total_instances", "total_ram_used", "max_server_meta", "total_spot_cores_used"):
        assert type(getattr(absolute, key)) is int, key

    create(api.ecs(), server(net, count=2, is_auto_rename=True))  # s6.nano.1: 1 vCPU, 128 MiB each
    absolute = limits(api)
    assert (absolute.total_instances_used, absolute.total_cores_used, absolute.total_ram_used) == (2, 2, 256)
    assert absolute.total_security_groups_used == 1  # the default group the create made


def test_quota_admin_api(api) -> None:  # type: ignore[no-untyped-def]
    tenant = api.new_project("tenant-q")
    doc = set_quota(api, tenant.project_id, instances=3, ram=-1)
    assert doc["quota"]["instances"] == 3 and doc["quota"]["ram"] == -1
    assert doc["quota"]["cores"] == api.ctx.settings.quota_cores
    assert doc["usage"] == {
        "instances": 0,
        "cores": 0,
        "ram": 0,
        "security_groups": 0,
        "key_pairs": 0,
        "volumes": 0,
        "gigabytes": 0,
        "eips": 0,
    }
    absolute = limits(tenant)
    assert (absolute.max_total_instances, absolute.max_total_ram_size) == (3, -1)
    assert limits(api).max_total_instances == api.ctx.settings.quota_instances  # other projects unchanged
    # Only the keys given change; null goes back to the default.
    doc = set_quota(api, tenant.project_id, instances=None)
    assert doc["quota"]["instances"] == api.ctx.settings.quota_instances and doc["quota"]["ram"] == -1

    with client_for(api) as client:
        for path, body, status in (
            ("/v1/admin/projects/nosuch/quotas", {"quota": {"instances": 1}}, 404),
            (f"/v1/admin/projects/{tenant.project_id}/quotas", {"quota": {"instances": -2}}, 400),
            (f"/v1/admin/projects/{tenant.project_id}/quotas", {"quota": {"instances": "5"}}, 400),
            (f"/v1/admin/projects/{tenant.project_id}/quotas", {"quota": {"floating_ips": 5}}, 400),
        ):
            with pytest.raises(ApiCallError) as info:
                client.put(path, body)
            assert info.value.status == status, (path, body)
    with client_for(api, tenant) as client:
        for call in (
            lambda: client.get(f"/v1/admin/projects/{tenant.project_id}/quotas"),
            lambda: client.put(f"/v1/admin/projects/{tenant.project_id}/quotas", {"quota": {"cores": 99}}),
        ):
            with pytest.raises(ApiCallError) as info:
                call()
            assert (info.value.status, info.value.code) == (403, "Ecs.0003")
    assert limits(tenant).max_total_cores == api.ctx.settings.quota_cores


def test_over_quota_creates_are_403_and_create_nothing(api, agent_host, net) -> None:  # type: ignore[no-untyped-def]
    ecs = api.ecs()
    set_quota(api, api.project_id, instances=3, cores=40, ram=384)
    _, job = create_and_wait(ecs, server(net, count=2, is_auto_rename=True))
    assert job.status == "SUCCESS", job.fail_reason
    before = counts(api)
    exc = expect_error(lambda: create(ecs, server(net, count=2, is_auto_rename=True)), 403, "Ecs.0105")
    assert "instances" in exc.error_msg and "2 of 3" in exc.error_msg
    assert create(ecs, server(net), dry_run=True).job_id is None  # a third server fits 3 instances, 384 MiB
    set_quota(api, api.project_id, ram=300)
    exc = expect_error(lambda: create(ecs, server(net), dry_run=True), 403, "Ecs.0105")  # dry runs check too
    assert "ram" in exc.error_msg and "256 MiB of 300 MiB" in exc.error_msg
    set_quota(api, api.project_id, ram=None, cores=2)
    exc = expect_error(lambda: create(ecs, server(net)), 403, "Ecs.0105")
    assert "cores" in exc.error_msg
    assert counts(api) == before
    set_quota(api, api.project_id, cores=-1)
    assert len(create(ecs, server(net, name="third")).server_ids) == 1


@on_both_databases()
def test_fifty_parallel_creates_against_a_quota_of_ten(api, net) -> None:  # type: ignore[no-untyped-def]
    set_quota(api, api.project_id, instances=QUOTA)
    barrier = threading.Barrier(PARALLEL)
    results: list[Any] = []
    lock = threading.Lock()

    def one(i: int) -> None:
        ecs = api.ecs()  # one SDK client per thread
        barrier.wait()
        try:
            outcome: Any = create(ecs, server(net, name=f"p{i}"))
        except ClientRequestException as exc:
            outcome = exc
        with lock:
            results.append(outcome)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(PARALLEL)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    accepted = [r for r in results if not isinstance(r, ClientRequestException)]
    refused = [r for r in results if isinstance(r, ClientRequestException)]
    assert len(results) == PARALLEL
    assert {(e.status_code, e.error_code) for e in refused} <= {(403, "Ecs.0105")}
    assert len(accepted) == QUOTA  # every create is valid, so exactly the quota gets through
    assert counts(api).servers == QUOTA  # (their jobs fail for want of a host, but the servers count)
    assert sorted(sid for r in accepted for sid in r.server_ids) == sorted(server_ids(api))
    assert limits(api).total_instances_used == QUOTA


def server_ids(api: Any) -> list[str]:
    from controller.models.server import Server

    with Session(api.ctx.engine) as session:
        return list(session.exec(select(Server.id)).all())


def test_security_group_and_key_pair_quotas(api) -> None:  # type: ignore[no-untyped-def]
    tenant = api.new_project("tenant-k")
    set_quota(api, tenant.project_id, security_groups=2, key_pairs=1)
    vpc = tenant.vpc()
    create_security_group(vpc, "one")
    create_security_group(vpc, "two")
    expect_error(lambda: create_security_group(vpc, "three"), 403, "VPC.0105")
    names = {g.name for g in vpc.list_security_groups(ListSecurityGroupsRequest()).security_groups}
    assert names == {"one", "two", "default"}  # the project's default group is made on demand, never refused

    ecs = tenant.ecs()

    def new_key(name: str) -> Any:
        body = NovaCreateKeypairRequestBody(keypair=NovaCreateKeypairOption(name=name))
        return ecs.nova_create_keypair(NovaCreateKeypairRequest(body=body))

    new_key("k1")
    expect_error(lambda: new_key("k2"), 403, "Ecs.0105")
    with Session(api.ctx.engine) as session:  # the refused key was rolled back, savepoint and all
        keys = session.exec(select(Keypair.name).where(Keypair.project_id == tenant.project_id)).all()
    assert keys == ["k1"]
    absolute = limits(tenant)
    assert (absolute.total_security_groups_used, absolute.max_security_groups) == (3, 2)
