"""ECS servers end to end through the official SDK: a real controller, a real agent on libvirt's test driver.

create → ACTIVE → stop → start → reboot → delete, the ServerDetail shape and types, listing filters and
paging, NICs, console output, the 409s of the transition table and another tenant's view (404).
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest
from huaweicloudsdkecs.v2 import (
    BatchRebootServersRequest,
    BatchRebootServersRequestBody,
    BatchRebootSeversOption,
    BatchStartServersOption,
    BatchStartServersRequest,
    BatchStartServersRequestBody,
    BatchStopServersOption,
    BatchStopServersRequest,
    BatchStopServersRequestBody,
    CreateServersRequest,
    CreateServersRequestBody,
    DeleteServersRequest,
    DeleteServersRequestBody,
    ListServerInterfacesRequest,
    ListServersDetailsRequest,
    PostPaidServerTag,
    PrePaidServer,
    PrePaidServerNic,
    PrePaidServerRootVolume,
    ServerId,
    ShowServerConsoleOutputRequest,
    ShowServerRequest,
)
from sqlalchemy import event, text
from sqlmodel import Session, select

from controller.db import make_engine
from controller.logs import request_id_var
from controller.models.network import Port, SecurityGroup
from controller.models.server import Server
from tests.controller.api.helpers import expect_error
from tests.controller.api.server_helpers import (
    FLAVOR,
    Net,
    counts,
    create,
    create_and_wait,
    make_net,
    row,
    server,
    wait_job,
)
from tests.support.postgres import on_both_databases
from tests.support.waiting import wait_for


@pytest.fixture
def api_settings(seed_image_file: Path) -> dict[str, Any]:
    return {"seed_image": seed_image_file}


@pytest.fixture
def net(api) -> Net:  # type: ignore[no-untyped-def]
    return make_net(api)


def ids(*server_ids: str) -> list[ServerId]:
    return [ServerId(id=sid) for sid in server_ids]


def start(ecs: Any, *server_ids: str) -> Any:
    body = BatchStartServersRequestBody(os_start=BatchStartServersOption(servers=ids(*server_ids)))
    return ecs.batch_start_servers(BatchStartServersRequest(body=body))


def stop(ecs: Any, *server_ids: str, kind: str | None = None) -> Any:
    body = BatchStopServersRequestBody(os_stop=BatchStopServersOption(servers=ids(*server_ids), type=kind))
    return ecs.batch_stop_servers(BatchStopServersRequest(body=body))


def reboot(ecs: Any, *server_ids: str, kind: str = "SOFT") -> Any:
    body = BatchRebootServersRequestBody(reboot=BatchRebootSeversOption(servers=ids(*server_ids), type=kind))
    return ecs.batch_reboot_servers(BatchRebootServersRequest(body=body))


def delete(ecs: Any, *server_ids: str) -> Any:
    body = DeleteServersRequestBody(servers=ids(*server_ids), delete_publicip=False, delete_volume=True)
    return ecs.delete_servers(DeleteServersRequest(body=body))


def show(ecs: Any, server_id: str) -> Any:
    return ecs.show_server(ShowServerRequest(server_id=server_id)).server


@on_both_databases()
def test_lifecycle_create_stop_start_reboot_delete(api, agent_host, net) -> None:  # type: ignore[no-untyped-def]
    ecs = api.ecs()
    user_data = base64.b64encode(b"#cloud-config\nhostname: ignored\n").decode()
    body = server(
        net,
        name="web_1.a",
        admin_pass="Passw0rd!x",
        user_data=user_data,
        metadata={"role": "web"},
        server_tags=[PostPaidServerTag(key="env", value="lab")],
        description="first",
    )
    (server_id,), job = create_and_wait(ecs, body)
    assert job.status == "SUCCESS", job.fail_reason
    assert job.job_type == "createServer" and job.entities.sub_jobs_total == 1
    assert job.entities.sub_jobs[0].entities.server_id == server_id
    assert job.entities.sub_jobs[0].job_type == "createSingleServer"

    detail = show(ecs, server_id)
    assert (detail.status, detail.os_ext_st_svm_state, detail.os_ext_st_spower_state) == (
        "ACTIVE",
        "active",
        1,
    )
    assert detail.os_ext_st_stask_state == ""
    assert (detail.name, detail.description, detail.metadata, detail.tags) == (
        "web_1.a",
        "first",
        {"role": "web"},
        ["env=lab"],
    )
    assert (detail.flavor.id, detail.flavor.vcpus, detail.flavor.ram, detail.flavor.disk) == (
        FLAVOR,
        "1",
        "128",
        "2",
    )
    assert detail.image.id == net.image_id
    assert detail.os_ext_srv_att_rhost == agent_host.host_id
    assert detail.os_ext_srv_att_rinstance_name == f"lc-{server_id}"
    assert detail.os_ext_srv_att_rhostname == "web-1-a"
    assert detail.os_ext_a_zavailability_zone == "lab-1a"
    assert detail.tenant_id == api.project_id and detail.locked is False and detail.host_id
    assert detail.os_srv_us_glaunched_at.endswith("Z") and detail.created.endswith("Z")
    assert detail.os_extended_volumesvolumes_attached == [] and detail.fault is None
    assert [g.name for g in detail.security_groups] == ["default"]
    (address,) = detail.addresses[net.vpc_id]
    assert (address.version, address.os_ext_ip_stype, address.addr) == ("4", "fixed", "10.20.1.10")
    port_id = address.os_ext_ip_sport_id
    assert address.os_ext_ips_ma_cmac_addr.startswith("fa:16:3e:")

    # The agent got the whole spec: decoded user data, the admin password, the port.
    spec = agent_host.service._specs.get(server_id)
    assert spec is not None
    assert spec.user_data == "#cloud-config\nhostname: ignored\n" and spec.admin_pass == "Passw0rd!x"
    assert [p.id for p in spec.ports] == [port_id] and spec.hostname == "web-1-a"
    assert row(api, server_id).admin_pass is None  # kept only until the create job ended

    nics = ecs.list_server_interfaces(ListServerInterfacesRequest(server_id=server_id))
    (nic,) = nics.interface_attachments
    assert (nic.port_id, nic.net_id, nic.fixed_ips[0].ip_address) == (port_id, net.subnet_id, "10.20.1.10")
    assert nics.attachable_quantity.free_nic == 11

    assert isinstance(
        ecs.show_server_console_output(ShowServerConsoleOutputRequest(server_id=server_id)).output, str
    )

    job = wait_job(ecs, stop(ecs, server_id).job_id)
    assert job.status == "SUCCESS" and job.job_type == "batchStopServers", job.fail_reason
    detail = show(ecs, server_id)
    assert (detail.status, detail.os_ext_st_spower_state, detail.os_ext_st_svm_state) == (
        "SHUTOFF",
        4,
        "stopped",
    )
    assert agent_host.service.server_state(server_id).power == "shutoff"

    job = wait_job(ecs, start(ecs, server_id).job_id)
    assert job.status == "SUCCESS" and job.job_type == "batchStartServers", job.fail_reason
    assert show(ecs, server_id).status == "ACTIVE"
    assert agent_host.service.server_state(server_id).power == "running"

    for kind in ("SOFT", "HARD"):
        job = wait_job(ecs, reboot(ecs, server_id, kind=kind).job_id)
        assert job.status == "SUCCESS" and job.job_type == "batchRebootServers", job.fail_reason
        assert show(ecs, server_id).status == "ACTIVE"

    job = wait_job(ecs, delete(ecs, server_id).job_id)
    assert job.status == "SUCCESS" and job.job_type == "deleteServers", job.fail_reason
    expect_error(lambda: show(ecs, server_id), 404, "Ecs.0114")
    assert ecs.list_servers_details(ListServersDetailsRequest()).count == 0
    assert counts(api).ports == 0
    assert row(api, server_id).status == "DELETED" and row(api, server_id).deleted_at is not None
    assert agent_host.service._specs.get(server_id) is None
    with pytest.raises(Exception, match="not found"):
        agent_host.service.server_state(server_id)


def test_v11_create_with_count_auto_rename_and_fixed_ip(api, agent_host, net) -> None:  # type: ignore[no-untyped-def]
    ecs = api.ecs()
    body = PrePaidServer(
        image_ref=net.image_id,
        flavor_ref=FLAVOR,
        name="batch",
        vpcid=net.vpc_id,
        nics=[PrePaidServerNic(subnet_id=net.subnet_id)],
        root_volume=PrePaidServerRootVolume(volumetype="SATA"),
        count=3,
        is_auto_rename=True,
    )
    response = ecs.create_servers(CreateServersRequest(body=CreateServersRequestBody(server=body)))
    assert response.order_id == "" and len(response.server_ids) == 3
    job = wait_job(ecs, response.job_id)
    assert job.status == "SUCCESS" and job.entities.sub_jobs_total == 3, job.fail_reason
    listed = ecs.list_servers_details(ListServersDetailsRequest()).servers
    assert sorted(s.name for s in listed) == ["batch-0001", "batch-0002", "batch-0003"]
    assert {s.status for s in listed} == {"ACTIVE"}
    assert {s.flavor.disk for s in listed} == {"1"}  # the image's min_disk when no size is given

    same = server(net, name="twin", count=2)
    names = [show(ecs, sid).name for sid in create_and_wait(ecs, same)[0]]
    assert names == ["twin", "twin"]

    fixed = server(
        net,
        name="fixed",
        nics=[server(net).nics[0].__class__(subnet_id=net.subnet_id, ip_address="10.20.1.200")],
    )
    (fixed_id,), job = create_and_wait(ecs, fixed)
    assert job.status == "SUCCESS"
    assert show(ecs, fixed_id).addresses[net.vpc_id][0].addr == "10.20.1.200"


def test_list_filters_and_paging(api, agent_host, net) -> None:  # type: ignore[no-untyped-def]
    ecs = api.ecs()
    made = {}
    for i, (name, tag) in enumerate([("alpha", "a"), ("beta", "b"), ("gamma", "a"), ("alphabet", "b")]):
        body = server(
            net,
            name=name,
            server_tags=[PostPaidServerTag(key="team", value=tag)],
            nics=[server(net).nics[0].__class__(subnet_id=net.subnet_id, ip_address=f"10.20.1.{20 + i}")],
        )
        (made[name],), job = create_and_wait(ecs, body)
        assert job.status == "SUCCESS", job.fail_reason
    wait_job(ecs, stop(ecs, made["beta"]).job_id)

    def names(**query: Any) -> tuple[int, list[str]]:
        answer = ecs.list_servers_details(ListServersDetailsRequest(**query))
        return answer.count, [s.name for s in answer.servers]

    assert names() == (4, ["alphabet", "gamma", "beta", "alpha"])  # newest first
    assert names(name="alpha") == (2, ["alphabet", "alpha"])
    assert names(status="SHUTOFF") == (1, ["beta"])
    assert names(status="DELETED") == (0, [])
    assert names(flavor=FLAVOR)[0] == 4 and names(flavor="s6.large.2") == (0, [])
    assert names(ip="10.20.1.2") == (4, ["alphabet", "gamma", "beta", "alpha"])
    assert names(ip_eq="10.20.1.21") == (1, ["beta"])
    assert names(ip_eq="10.20.1.2") == (0, [])
    assert names(server_id=made["gamma"]) == (1, ["gamma"])
    assert names(tags="team=a") == (2, ["gamma", "alpha"])
    assert names(not_tags="team=a") == (2, ["alphabet", "beta"])
    assert names(limit=3) == (4, ["alphabet", "gamma", "beta"])
    assert names(limit=3, offset=2) == (4, ["alpha"])
    assert names(limit=1, offset=1, tags="team=b") == (2, ["alphabet"])
    assert names(limit=1, offset=2, tags="team=b") == (2, ["beta"])
    assert names(limit=2, offset=9) == (4, [])
    expect_error(lambda: names(limit=1001), 400, "Ecs.0005")
    expect_error(lambda: names(limit=0), 400, "Ecs.0005")


def test_conflicting_actions_answer_409_and_change_nothing(api, agent_host, net) -> None:  # type: ignore[no-untyped-def]
    ecs = api.ecs()
    (a, b), job = create_and_wait(ecs, server(net, count=2))
    assert job.status == "SUCCESS"
    jobs_before = counts(api).jobs

    err = expect_error(lambda: start(ecs, a), 409, "Ecs.0104")
    assert "ACTIVE" in err.error_msg and "cannot be started" in err.error_msg
    assert counts(api).jobs == jobs_before

    wait_job(ecs, stop(ecs, a).job_id)
    expect_error(lambda: stop(ecs, a), 409, "Ecs.0104")
    expect_error(lambda: reboot(ecs, a), 409, "Ecs.0104")
    # One refusal in a batch refuses the whole batch: b must not have moved either.
    expect_error(lambda: stop(ecs, b, a), 409, "Ecs.0104")
    assert (row(api, b).status, row(api, b).task_state) == ("ACTIVE", None)
    assert counts(api).jobs == jobs_before + 2  # only the successful stop (parent + sub-job)

    # A second request while a task runs: hold the row in its task as a running job would.
    with Session(api.ctx.engine) as session:
        held = session.get(Server, b)
        assert held is not None
        held.task_state = "powering-off"
        session.add(held)
        session.commit()
    err = expect_error(lambda: delete(ecs, b), 409, "Ecs.0104")
    assert "busy" in err.error_msg
    expect_error(lambda: delete(ecs, a, b), 409, "Ecs.0104")
    assert (row(api, a).status, row(api, a).task_state) == ("SHUTOFF", None)


def test_unknown_or_foreign_servers_are_404(api, agent_host, net) -> None:  # type: ignore[no-untyped-def]
    ecs = api.ecs()
    (mine,), job = create_and_wait(ecs, server(net))
    assert job.status == "SUCCESS"
    other = api.new_project("other")
    theirs = other.ecs()
    before = counts(api)
    for call in (
        lambda: show(theirs, mine),
        lambda: delete(theirs, mine),
        lambda: stop(theirs, mine),
        lambda: theirs.list_server_interfaces(ListServerInterfacesRequest(server_id=mine)),
        lambda: theirs.show_server_console_output(ShowServerConsoleOutputRequest(server_id=mine)),
        lambda: delete(ecs, mine, "no-such-server"),
        lambda: start(ecs, "no-such-server"),
    ):
        err = expect_error(call, 404, "Ecs.0114")
        assert "could not be found" in err.error_msg
    assert theirs.list_servers_details(ListServersDetailsRequest()).count == 0
    assert counts(api) == before
    assert (row(api, mine).status, row(api, mine).task_state) == ("ACTIVE", None)


def test_agent_failure_ends_in_error_with_a_fault_and_no_ports(api, agent_host, net) -> None:  # type: ignore[no-untyped-def]
    from controller.models.image import Image

    with Session(api.ctx.engine) as session:
        seed = session.get(Image, net.image_id)
        assert seed is not None
        broken = Image(
            name="broken",
            owner=api.project_id,
            visibility="private",
            status="active",
            checksum="0" * 64,
            file_path=seed.file_path,
            size=seed.size,
            min_disk=1,
        )
        session.add(broken)
        session.commit()
        broken_id = broken.id
    ecs = api.ecs()
    (server_id,), job = create_and_wait(ecs, server(net, image_ref=broken_id))
    assert job.status == "FAIL" and job.error_code == "Ecs.0210"
    assert "sha256" in job.fail_reason and agent_host.host_id in job.fail_reason
    detail = show(ecs, server_id)
    assert (detail.status, detail.os_ext_st_stask_state, detail.os_ext_st_spower_state) == ("ERROR", "", 0)
    assert "sha256" in detail.fault["message"] and detail.fault["details"] == "Ecs.0210"
    assert detail.addresses == {}
    with Session(api.ctx.engine) as session:
        assert session.exec(select(Port).where(Port.server_id == server_id)).all() == []
    assert agent_host.service._specs.get(server_id) is None
    assert row(api, server_id).host_id is None and row(api, server_id).admin_pass is None

    # An ERROR server can be deleted.
    job = wait_job(ecs, delete(ecs, server_id).job_id)
    assert job.status == "SUCCESS"
    expect_error(lambda: show(ecs, server_id), 404, "Ecs.0114")


def test_no_host_ends_in_error_with_the_reason(api, net) -> None:  # type: ignore[no-untyped-def]
    ecs = api.ecs()
    (server_id,), job = create_and_wait(ecs, server(net))
    assert job.status == "FAIL" and job.error_code == "Ecs.0209"
    assert "No valid host" in job.fail_reason
    detail = show(ecs, server_id)
    assert detail.status == "ERROR" and "No valid host" in detail.fault["message"]
    assert counts(api).ports == 0


def test_dry_run_validates_and_creates_nothing(api, net) -> None:  # type: ignore[no-untyped-def]
    ecs = api.ecs()
    before = counts(api)
    with Session(api.ctx.engine) as session:
        groups = len(session.exec(select(SecurityGroup)).all())
    response = create(ecs, server(net), dry_run=True)
    assert response.job_id is None and response.server_ids is None
    assert counts(api) == before
    with Session(api.ctx.engine) as session:  # not even the default group a real create would make
        assert len(session.exec(select(SecurityGroup)).all()) == groups


def test_listing_costs_the_same_queries_for_one_or_twenty_servers(api, agents, net) -> None:  # type: ignore[no-untyped-def]
    agents.start(cores=8)
    ecs = api.ecs()
    statements: list[str] = []

    def count(conn, cursor, statement, *args) -> None:  # type: ignore[no-untyped-def]
        statements.append((request_id_var.get(), statement))

    def queries_for_listing() -> int:
        """The statements run while serving the listing request (by its request id: job workers and agent
        heartbeats use the same engine meanwhile)."""
        statements.clear()
        event.listen(api.ctx.engine, "before_cursor_execute", count)
        try:
            ecs.list_servers_details(ListServersDetailsRequest(limit=50))
        finally:
            event.remove(api.ctx.engine, "before_cursor_execute", count)
        (listing,) = {rid for rid, sql in statements if "ORDER BY server.created_at DESC" in sql}
        return sum(1 for rid, _ in statements if rid == listing)

    (_first,), job = create_and_wait(ecs, server(net))
    assert job.status == "SUCCESS"
    one = queries_for_listing()
    _more, job = create_and_wait(ecs, server(net, count=19, name="many", is_auto_rename=True))
    assert job.status == "SUCCESS"
    twenty = queries_for_listing()
    assert ecs.list_servers_details(ListServersDetailsRequest()).count == 20
    assert twenty == one, "listing must fetch ports, flavors, groups and hosts in bulk"


@on_both_databases()
def test_listing_shows_what_another_controller_changed(api, agent_host, net) -> None:  # type: ignore[no-untyped-def]
    """Listings are cached (services.server_view_cache): a write by another process, straight to the database,
    shows in the next listing, and so does a host turning unavailable, which changes no stamped row."""
    ecs = api.ecs()
    (server_id,), job = create_and_wait(ecs, server(net))
    assert job.status == "SUCCESS"

    def listed() -> Any:
        (only,) = ecs.list_servers_details(ListServersDetailsRequest()).servers
        return only

    assert (listed().id, listed().host_status) == (server_id, "UP")
    other = make_engine(api.ctx.engine.url.render_as_string(hide_password=False))
    try:
        with other.begin() as conn:
            conn.execute(text("UPDATE server SET name = 'renamed' WHERE id = :id"), {"id": server_id})
        assert listed().name == "renamed"
        with other.begin() as conn:
            conn.execute(text("UPDATE host SET enabled = false"))
        assert listed().host_status == "MAINTENANCE"
    finally:
        other.dispose()


def test_cached_views_turn_down_when_the_heartbeats_stop(api, agents, net, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A host going silent stamps nothing: cached views still show it DOWN once its last heartbeat is older
    than host_dead_seconds, and UP again after its next heartbeat."""
    host = agents.start()
    monkeypatch.setattr(api.ctx.settings, "host_dead_seconds", 3.0)
    ecs = api.ecs()
    (server_id,), job = create_and_wait(ecs, server(net))
    assert job.status == "SUCCESS"

    def statuses() -> tuple[str, str]:
        (listed,) = ecs.list_servers_details(ListServersDetailsRequest()).servers
        return listed.host_status, show(ecs, server_id).host_status

    assert statuses() == ("UP", "UP")
    agents.stop_serving(host)
    wait_for("the host shown DOWN", lambda: statuses() == ("DOWN", "DOWN"), timeout=30)
    agents.serve_again(host)
    wait_for("the host shown UP", lambda: statuses() == ("UP", "UP"), timeout=30)
