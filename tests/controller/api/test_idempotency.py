"""`X-Client-Token` on create through the official SDK against a real controller and a test-driver agent:
a retry replays the same job and servers (one VM), another body with the token is 409, tokens expire."""

from __future__ import annotations

import threading
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from huaweicloudsdkecs.v2 import (
    CreatePostPaidServersRequest,
    CreatePostPaidServersRequestBody,
    CreateServersRequest,
    CreateServersRequestBody,
    PostPaidServer,
    PrePaidServer,
    PrePaidServerNic,
    PrePaidServerRootVolume,
)
from sqlalchemy import update
from sqlmodel import Session, col

from controller.models.common import utcnow
from controller.models.quota import ClientToken
from tests.controller.api.helpers import expect_error
from tests.controller.api.server_helpers import Net, counts, make_net, server, wait_job
from tests.support.postgres import on_both_databases

PARALLEL = 10


@pytest.fixture
def api_settings(seed_image_file: Path) -> dict[str, Any]:
    return {"seed_image": seed_image_file}


@pytest.fixture
def net(api) -> Net:  # type: ignore[no-untyped-def]
    return make_net(api)


def create(ecs: Any, body: PostPaidServer, token: str | None, *, dry_run: bool | None = None) -> Any:
    request = CreatePostPaidServersRequest(
        x_client_token=token, body=CreatePostPaidServersRequestBody(server=body, dry_run=dry_run)
    )
    return ecs.create_post_paid_servers(request)


def test_same_token_and_body_replays_the_answer(api, agent_host, net) -> None:  # type: ignore[no-untyped-def]
    ecs = api.ecs()
    body = server(net, count=2, is_auto_rename=True)
    first = create(ecs, body, "token-1")
    assert wait_job(ecs, first.job_id).status == "SUCCESS"
    after_first = counts(api)
    again = create(ecs, server(net, count=2, is_auto_rename=True), "token-1")
    assert (again.job_id, again.server_ids) == (first.job_id, first.server_ids)
    assert counts(api) == after_first
    assert len(agent_host.service.host_info().servers) == 2  # one set of VMs

    # The v1.1 path with the same body and token is the same request.
    prepaid = PrePaidServer(
        image_ref=net.image_id,
        flavor_ref=body.flavor_ref,
        name="web",
        vpcid=net.vpc_id,
        nics=[PrePaidServerNic(subnet_id=net.subnet_id)],
        root_volume=PrePaidServerRootVolume(volumetype="SSD", size=2),
        count=2,
        is_auto_rename=True,
    )
    v11 = ecs.create_servers(
        CreateServersRequest(x_client_token="token-1", body=CreateServersRequestBody(server=prepaid))
    )
    assert (v11.job_id, v11.server_ids) == (first.job_id, first.server_ids)

    # Without a token, or with another one, the same body creates new servers.
    other = create(ecs, body, "token-2")
    assert other.job_id != first.job_id and not set(other.server_ids) & set(first.server_ids)
    assert counts(api).servers == after_first.servers + 2


def test_same_token_with_another_body_is_409(api, net) -> None:  # type: ignore[no-untyped-def]
    ecs = api.ecs()
    first = create(ecs, server(net), "tok")
    before = counts(api)
    exc = expect_error(lambda: create(ecs, server(net, name="other"), "tok"), 409, "Ecs.0213")
    assert first.job_id in exc.error_msg
    after = counts(api)  # (ports are not compared: the first job fails for want of a host and frees its own)
    assert (after.servers, after.jobs) == (before.servers, before.jobs)
    # Tokens are per project: another tenant may use the same one.
    tenant = api.new_project("tenant-t")
    tenant_net = make_net(api, clients=tenant)
    answer = create(tenant.ecs(), server(tenant_net), "tok")
    assert answer.job_id != first.job_id


def test_refused_and_dry_run_creates_do_not_use_up_the_token(api, net) -> None:  # type: ignore[no-untyped-def]
    ecs = api.ecs()
    expect_error(lambda: create(ecs, server(net, name="bad name"), "t"), 400, "Ecs.0005")
    assert create(ecs, server(net), "t", dry_run=True).job_id is None
    with Session(api.ctx.engine) as session:
        assert session.get(ClientToken, (api.project_id, "t")) is None
    assert create(ecs, server(net), "t").job_id
    expect_error(lambda: create(ecs, server(net), "x" * 65), 400, "Ecs.0005")


def test_an_expired_token_creates_again(api, net) -> None:  # type: ignore[no-untyped-def]
    ecs = api.ecs()
    first = create(ecs, server(net), "old")
    hours = api.ctx.settings.client_token_hours
    with Session(api.ctx.engine) as session:  # age the record past its lifetime
        session.exec(
            update(ClientToken)  # type: ignore[call-overload]
            .where(col(ClientToken.token) == "old")
            .values(created_at=utcnow() - timedelta(hours=hours, minutes=1))
        )
        session.commit()
    second = create(ecs, server(net, name="new-body"), "old")
    assert second.job_id != first.job_id
    replay = create(ecs, server(net, name="new-body"), "old")
    assert replay.job_id == second.job_id


@on_both_databases()
def test_parallel_retries_with_one_token_make_one_set_of_servers(api, net) -> None:  # type: ignore[no-untyped-def]
    barrier = threading.Barrier(PARALLEL)
    answers: list[Any] = []
    lock = threading.Lock()

    def one() -> None:
        ecs = api.ecs()
        barrier.wait()
        answer = create(ecs, server(net, count=3, is_auto_rename=True), "burst")
        with lock:
            answers.append(answer)

    threads = [threading.Thread(target=one) for _ in range(PARALLEL)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(answers) == PARALLEL
    assert len({(a.job_id, tuple(a.server_ids)) for a in answers}) == 1
    assert counts(api).servers == 3
