"""Server groups through the official SDK: create/list/show/delete, members joined by `os:scheduler_hints`,
and anti-affinity placement against two real test-driver agents (a third member has nowhere to go)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from huaweicloudsdkcore.exceptions.exceptions import ClientRequestException
from huaweicloudsdkecs.v2 import (
    CreateServerGroupOption,
    CreateServerGroupRequest,
    CreateServerGroupRequestBody,
    DeleteServerGroupRequest,
    ListServerGroupsRequest,
    PostPaidServerSchedulerHints,
    ShowServerGroupRequest,
)
from sqlmodel import Session, func, select

from controller.models.network import Port
from controller.models.server_group import ServerGroup, ServerGroupMember
from tests.controller.api.server_helpers import Net, counts, create, create_and_wait, make_net, row, server


@pytest.fixture
def api_settings(seed_image_file: Path) -> dict[str, Any]:
    return {"seed_image": seed_image_file}


def new_group(ecs: Any, name: str = "web", policies: list[str] | None = None) -> Any:
    option = CreateServerGroupOption(name=name, policies=policies or ["anti-affinity"])
    body = CreateServerGroupRequestBody(server_group=option)
    return ecs.create_server_group(CreateServerGroupRequest(body=body)).server_group


def show(ecs: Any, group_id: str) -> Any:
    return ecs.show_server_group(ShowServerGroupRequest(server_group_id=group_id)).server_group


def group_rows(api: Any) -> int:
    with Session(api.ctx.engine) as session:
        return int(session.exec(select(func.count()).select_from(ServerGroup)).one())


def refused(call: Any) -> tuple[int, str]:
    with pytest.raises(ClientRequestException) as info:
        call()
    return info.value.status_code, info.value.error_code


def test_create_show_list_delete(api) -> None:  # type: ignore[no-untyped-def]
    ecs = api.ecs()
    first = new_group(ecs, "first")
    assert (first.name, first.policies, first.members, first.metadata) == ("first", ["anti-affinity"], [], {})
    second = new_group(ecs, "second")
    assert show(ecs, first.id).name == "first"
    listed = ecs.list_server_groups(ListServerGroupsRequest())
    assert [g.id for g in listed.server_groups] == [first.id, second.id]
    page = ecs.list_server_groups(ListServerGroupsRequest(limit=1))
    assert [g.id for g in page.server_groups] == [first.id]
    rest = ecs.list_server_groups(ListServerGroupsRequest(limit=1, marker=page.page_info.next_marker))
    assert [g.id for g in rest.server_groups] == [second.id]

    ecs.delete_server_group(DeleteServerGroupRequest(server_group_id=first.id))
    assert refused(lambda: show(ecs, first.id)) == (404, "Ecs.0114")
    assert refused(lambda: ecs.delete_server_group(DeleteServerGroupRequest(server_group_id=first.id))) == (
        404,
        "Ecs.0114",
    )
    assert [g.id for g in ecs.list_server_groups(ListServerGroupsRequest()).server_groups] == [second.id]


def test_another_project_sees_nothing(api) -> None:  # type: ignore[no-untyped-def]
    group = new_group(api.ecs())
    other = api.new_project("tenant-b").ecs()
    assert refused(lambda: show(other, group.id)) == (404, "Ecs.0114")
    assert refused(lambda: other.delete_server_group(DeleteServerGroupRequest(server_group_id=group.id))) == (
        404,
        "Ecs.0114",
    )
    assert other.list_server_groups(ListServerGroupsRequest()).server_groups == []
    assert show(api.ecs(), group.id).id == group.id


@pytest.mark.parametrize(
    ("name", "policies"),
    [
        ("web", ["affinity"]),
        ("web", ["soft-anti-affinity"]),
        ("web", ["anti-affinity", "affinity"]),
        ("", ["anti-affinity"]),
        ("x" * 256, ["anti-affinity"]),
    ],
)
def test_bad_groups_are_refused(api, name: str, policies: list[str]) -> None:  # type: ignore[no-untyped-def]
    assert refused(lambda: new_group(api.ecs(), name, policies)) == (400, "Ecs.0005")
    assert group_rows(api) == 0


def test_unknown_group_hint_creates_nothing(api, agent_host) -> None:  # type: ignore[no-untyped-def]
    net = make_net(api)
    foreign = new_group(api.new_project("tenant-c").ecs())
    before = counts(api)
    for group_id in ("no-such-group", foreign.id):
        hints = PostPaidServerSchedulerHints(group=group_id)
        body = server(net, osscheduler_hints=hints)
        assert refused(lambda b=body: create(api.ecs(), b)) == (400, "Ecs.0005")
    assert counts(api) == before


def test_anti_affinity_spreads_members_and_refuses_a_third(api, agents) -> None:  # type: ignore[no-untyped-def]
    started = [agents.start("h1"), agents.start("h2")]
    hosts = {a.host_id for a in started}
    net: Net = make_net(api)
    ecs = api.ecs()
    group = new_group(ecs)
    hints = PostPaidServerSchedulerHints(group=group.id)
    # Both in one request: the two placements run as concurrent jobs and must still see each other.
    pair, job = create_and_wait(ecs, server(net, name="pair", count=2, osscheduler_hints=hints))
    assert job.status == "SUCCESS", job.fail_reason
    assert {row(api, s).host_id for s in pair} == hosts
    assert set(show(ecs, group.id).members) == set(pair)

    # A server outside the group still goes anywhere.
    (free,), job = create_and_wait(ecs, server(net, name="free"))
    assert job.status == "SUCCESS", job.fail_reason

    before = counts(api)
    (third,), job = create_and_wait(ecs, server(net, name="third", osscheduler_hints=hints))
    assert job.status == "FAIL" and job.error_code == "Ecs.0209"
    assert "No valid host" in job.fail_reason
    for host_id in hosts:
        assert (
            f"{host_id}: already holds a member of anti-affinity server group {group.id}" in job.fail_reason
        )
    failed = row(api, third)
    assert (failed.status, failed.host_id, failed.admin_pass) == ("ERROR", None, None)
    with Session(api.ctx.engine) as session:  # nothing leaked: no port, no domain on either host
        assert session.exec(select(Port).where(Port.server_id == third)).all() == []
    assert counts(api).ports == before.ports
    placed = [s.id for agent in started for s in agent.service.host_info().servers]
    assert sorted(placed) == sorted([*pair, free])

    ecs.delete_server_group(DeleteServerGroupRequest(server_group_id=group.id))
    with Session(api.ctx.engine) as session:
        assert session.exec(select(ServerGroupMember)).all() == []
