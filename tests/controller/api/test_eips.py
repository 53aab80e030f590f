"""EIP v1 `publicips` through the official EIP SDK (`huaweicloudsdkeip.v2.EipClient`), against servers on a real
test-driver agent.

The agent there has no host networking, so what it is told is recorded at its service boundary (a spy on
`set_external`, behind the real HTTP call): every bind, unbind, server delete and SNAT switch must push the host
its whole external spec. The packets themselves are tested in tests/agent/net/test_external.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from huaweicloudsdkecs.v2 import (
    DeleteServersRequest,
    DeleteServersRequestBody,
    ListServerInterfacesRequest,
    ListServersDetailsRequest,
    PostPaidServerEip,
    PostPaidServerEipBandwidth,
    PostPaidServerPublicip,
    ServerId,
    ShowServerRequest,
)
from huaweicloudsdkeip.v2 import (
    CreatePublicipBandwidthOption,
    CreatePublicipOption,
    CreatePublicipRequest,
    CreatePublicipRequestBody,
    DeletePublicipRequest,
    EipClient,
    ListPublicipsRequest,
    ShowPublicipRequest,
    UpdatePublicipOption,
    UpdatePublicipRequest,
    UpdatePublicipsRequestBody,
)
from sqlmodel import Session, func, select

from agent.schemas import ExternalSpec
from controller.models.eip import Eip
from tests.controller.api.helpers import expect_error
from tests.controller.api.server_helpers import (
    Net,
    counts,
    create,
    create_and_wait,
    make_net,
    raw_request,
    row,
    server,
    wait_job,
)

POOL = ["203.0.113.100", "203.0.113.101", "203.0.113.102", "203.0.113.103"]


@pytest.fixture
def api_settings(seed_image_file: Path) -> dict[str, Any]:
    return {
        "seed_image": seed_image_file,
        "external_cidr": "203.0.113.0/24",
        "external_pool": f"{POOL[0]}-{POOL[-1]}",
        "external_gateway": "203.0.113.1",
        "quota_eips": 3,
    }


HOST_EXTERNAL = "203.0.113.10/24"


@pytest.fixture
def agent_host(agents):  # type: ignore[no-untyped-def]
    """One agent with an external network (reported: nothing is plumbed on a test-driver host)."""
    return agents.start(external_ip=HOST_EXTERNAL)


@pytest.fixture
def net(api) -> Net:  # type: ignore[no-untyped-def]
    return make_net(api)


@pytest.fixture
def pushed(agent_host) -> list[ExternalSpec]:  # type: ignore[no-untyped-def]
    """Every external spec the agent received (newest last)."""
    received: list[ExternalSpec] = []

    def record(spec: ExternalSpec) -> bool:
        received.append(spec)
        return True

    agent_host.service.set_external = record
    return received


def _eip(clients: Any) -> EipClient:
    return clients._build(EipClient)


def _create(eip: EipClient, **publicip: Any) -> Any:
    option = CreatePublicipOption(type=publicip.pop("type", "5_bgp"), **publicip)
    bandwidth = CreatePublicipBandwidthOption(share_type="PER", name="bw", size=10)
    body = CreatePublicipRequestBody(publicip=option, bandwidth=bandwidth)
    return eip.create_publicip(CreatePublicipRequest(body=body)).publicip


def _bind(eip: EipClient, eip_id: str, port_id: str) -> Any:
    body = UpdatePublicipsRequestBody(publicip=UpdatePublicipOption(port_id=port_id))
    return eip.update_publicip(UpdatePublicipRequest(publicip_id=eip_id, body=body)).publicip


def _eip_rows(api: Any) -> int:
    with Session(api.ctx.engine) as session:
        return int(session.exec(select(func.count()).select_from(Eip)).one())


def _port_of(api: Any, server_id: str) -> Any:
    """The server's only NIC, as ECS os-interface reports it."""
    nics = api.ecs().list_server_interfaces(ListServerInterfacesRequest(server_id=server_id))
    assert len(nics.interface_attachments) == 1
    return nics.interface_attachments[0]


def _listed_addresses(api: Any, server_id: str) -> list[tuple[str, str]]:
    """The server's (address, type) pairs as the server list shows them (rendered views are cached)."""
    (listed,) = [
        s for s in api.ecs().list_servers_details(ListServersDetailsRequest()).servers if s.id == server_id
    ]
    return [(a.addr, a.os_ext_ip_stype) for nets in listed.addresses.values() for a in nets]


def test_allocate_bind_unbind_release_through_the_sdk(api, agent_host, net, pushed) -> None:  # type: ignore[no-untyped-def]
    eip = _eip(api)
    created = _create(eip)
    assert (created.status, created.type, created.public_ip_address) == ("DOWN", "5_bgp", POOL[0])
    assert created.bandwidth_size == 10
    (server_id,), job = create_and_wait(api.ecs(), server(net))
    assert job.status == "SUCCESS"
    nic = _port_of(api, server_id)
    # os-interface as ECS-API.md §4 says: port, network (subnet), MAC, state, fixed IPs with their subnet.
    assert nic.net_id == net.subnet_id and nic.port_state == "ACTIVE"
    assert nic.fixed_ips[0].subnet_id == net.subnet_id and nic.mac_addr.count(":") == 5
    fixed = nic.fixed_ips[0].ip_address
    assert pushed and pushed[-1].floating_ips == [] and pushed[-1].snat_vpcs == [net.vpc_id]  # after create
    assert _listed_addresses(api, server_id) == [(fixed, "fixed")]

    bound = _bind(eip, created.id, nic.port_id)
    assert (bound.status, bound.port_id, bound.private_ip_address) == ("ACTIVE", nic.port_id, fixed)
    spec = pushed[-1]
    assert [(f.eip, f.port_id, f.vpc_id, f.fixed_ip) for f in spec.floating_ips] == [
        (POOL[0], nic.port_id, net.vpc_id, fixed)
    ]
    shown = eip.show_publicip(ShowPublicipRequest(publicip_id=created.id)).publicip
    assert (shown.status, shown.port_id, shown.public_ip_address) == ("ACTIVE", nic.port_id, POOL[0])
    listed = eip.list_publicips(ListPublicipsRequest(port_id=[nic.port_id])).publicips
    assert [p.id for p in listed] == [created.id]
    assert _bind(eip, created.id, nic.port_id).status == "ACTIVE"  # binding again to the same port: no change
    assert _listed_addresses(api, server_id) == [(fixed, "fixed"), (POOL[0], "floating")]

    versions = [s.version for s in pushed]
    unbound = _bind(eip, created.id, "")
    assert (unbound.status, unbound.port_id) == ("DOWN", None)
    assert pushed[-1].floating_ips == [] and pushed[-1].version > max(versions)
    assert _listed_addresses(api, server_id) == [(fixed, "fixed")]

    eip.delete_publicip(DeletePublicipRequest(publicip_id=created.id))
    assert eip.list_publicips(ListPublicipsRequest()).publicips == []

    # The VPC's shared SNAT (a labcloud field the VPC SDK does not model): switching it pushes the host.
    body = json.dumps({"vpc": {"enable_shared_snat": False}}).encode()
    response = raw_request(api, "PUT", f"/v1/{api.project_id}/vpcs/{net.vpc_id}", body)
    assert response.status_code == 200 and response.json()["vpc"]["enable_shared_snat"] is False
    assert pushed[-1].snat_vpcs == []


def test_bad_requests_quota_and_conflicts_change_nothing(api, agent_host, net, pushed) -> None:  # type: ignore[no-untyped-def]
    eip = _eip(api)
    cases = [
        ({"type": "6_bgp"}, "type"),
        ({"ip_version": 6}, "ip_version"),
        ({"ip_address": "203.0.113.50"}, "not in the EIP pool"),
        ({"ip_address": "not-an-ip"}, "ip_address"),
    ]
    for fields, words in cases:
        exc = expect_error(lambda f=fields: _create(eip, **f), 400, "VPC.0002")
        assert words in exc.error_msg
    assert _eip_rows(api) == 0

    first = _create(eip, ip_address=POOL[2])
    assert first.public_ip_address == POOL[2]
    exc = expect_error(lambda: _create(eip, ip_address=POOL[2]), 409, "VPC.1303")
    assert "already in use" in exc.error_msg
    _create(eip)
    _create(eip)
    exc = expect_error(lambda: _create(eip), 403, "VPC.0105")
    assert "eips" in exc.error_msg
    assert _eip_rows(api) == 3

    # Another project: the last address, then the pool is empty; A's EIPs and ports are not B's to see or use.
    other = api.new_project("team-b")
    eip_b = _eip(other)
    assert _create(eip_b).public_ip_address == POOL[3]
    expect_error(lambda: _create(eip_b), 409, "VPC.1304")
    expect_error(lambda: eip_b.show_publicip(ShowPublicipRequest(publicip_id=first.id)), 404, "VPC.1301")

    (s1,), _ = create_and_wait(api.ecs(), server(net, name="one"))
    (s2,), _ = create_and_wait(api.ecs(), server(net, name="two"))
    p1, p2 = _port_of(api, s1).port_id, _port_of(api, s2).port_id
    b_own = eip_b.list_publicips(ListPublicipsRequest()).publicips[0]
    expect_error(lambda: _bind(eip_b, b_own.id, p1), 404, "VPC.1302")  # a port of another project
    expect_error(lambda: _bind(eip, first.id, "no-such-port"), 404, "VPC.1302")
    _bind(eip, first.id, p1)
    exc = expect_error(lambda: _bind(eip, first.id, p2), 409, "VPC.1303")  # already bound elsewhere
    assert "unbind it first" in exc.error_msg
    second = eip.list_publicips(ListPublicipsRequest(public_ip_address=[POOL[0]])).publicips[0]
    expect_error(lambda: _bind(eip, second.id, p1), 409, "VPC.1303")  # the port already has one
    expect_error(lambda: eip.delete_publicip(DeletePublicipRequest(publicip_id=first.id)), 409, "VPC.1303")
    expect_error(lambda: eip.show_publicip(ShowPublicipRequest(publicip_id="nope")), 404, "VPC.1301")
    assert _eip_rows(api) == 4
    assert eip.show_publicip(ShowPublicipRequest(publicip_id=first.id)).publicip.port_id == p1
    assert [f.port_id for f in pushed[-1].floating_ips] == [p1]


def test_server_delete_unbinds_or_releases_its_eips(api, agent_host, net, pushed) -> None:  # type: ignore[no-untyped-def]
    eip = _eip(api)
    ecs = api.ecs()
    (keep,), _ = create_and_wait(ecs, server(net, name="keep"))
    (drop,), _ = create_and_wait(ecs, server(net, name="drop"))
    kept = _bind(eip, _create(eip).id, _port_of(api, keep).port_id)
    dropped = _bind(eip, _create(eip).id, _port_of(api, drop).port_id)
    for server_id, release in ((keep, False), (drop, True)):
        body = DeleteServersRequestBody(servers=[ServerId(id=server_id)], delete_publicip=release)
        assert wait_job(ecs, ecs.delete_servers(DeleteServersRequest(body=body)).job_id).status == "SUCCESS"
    left = eip.list_publicips(ListPublicipsRequest()).publicips
    assert [(p.id, p.status, p.port_id) for p in left] == [(kept.id, "DOWN", None)]
    assert dropped.id not in {p.id for p in left}
    assert pushed[-1].floating_ips == []


def test_no_external_network_means_no_eips(api, net) -> None:  # type: ignore[no-untyped-def]
    api.ctx.settings.external_cidr = None
    exc = expect_error(lambda: _create(_eip(api)), 400, "VPC.1305")
    assert "LABCLOUD_EXTERNAL_CIDR" in exc.error_msg
    assert _eip_rows(api) == 0


def _new_eip(delete_on_termination: bool | None = None, iptype: str = "5_bgp") -> PostPaidServerPublicip:
    bandwidth = PostPaidServerEipBandwidth(size=20, sharetype="PER", chargemode="traffic")
    return PostPaidServerPublicip(
        eip=PostPaidServerEip(iptype=iptype, bandwidth=bandwidth), delete_on_termination=delete_on_termination
    )


def _addresses(api: Any, server_id: str) -> list[tuple[str, str, str]]:
    """(type, address, port id) of every address ServerDetail lists."""
    detail = api.ecs().show_server(ShowServerRequest(server_id=server_id)).server
    return sorted(
        (a.os_ext_ip_stype, a.addr, a.os_ext_ip_sport_id)
        for group in detail.addresses.values()
        for a in group
    )


def test_publicip_in_server_create_binds_after_build_and_lists_a_floating_address(  # type: ignore[no-untyped-def]
    api, agent_host, net, pushed
) -> None:
    eip, ecs = _eip(api), api.ecs()
    # A new EIP per server (`publicip.eip`), released with its server (delete_on_termination).
    (new_owner,), job = create_and_wait(ecs, server(net, name="new", publicip=_new_eip(True)))
    assert job.status == "SUCCESS", job.fail_reason
    nic = _port_of(api, new_owner)
    (allocated,) = eip.list_publicips(ListPublicipsRequest(port_id=[nic.port_id])).publicips
    assert (allocated.status, allocated.type, allocated.bandwidth_size) == ("ACTIVE", "5_bgp", 20)
    fixed = nic.fixed_ips[0].ip_address
    assert _addresses(api, new_owner) == [
        ("fixed", fixed, nic.port_id),
        ("floating", allocated.public_ip_address, nic.port_id),
    ]
    assert [(f.eip, f.fixed_ip) for f in pushed[-1].floating_ips] == [(allocated.public_ip_address, fixed)]

    # An existing EIP (`publicip.id`), kept by the project when its server goes.
    existing = _create(eip)
    (old_owner,), job = create_and_wait(
        ecs, server(net, name="old", publicip=PostPaidServerPublicip(id=existing.id))
    )
    assert job.status == "SUCCESS", job.fail_reason
    shown = eip.show_publicip(ShowPublicipRequest(publicip_id=existing.id)).publicip
    assert (shown.status, shown.port_id) == ("ACTIVE", _port_of(api, old_owner).port_id)
    assert {f.eip for f in pushed[-1].floating_ips} == {
        allocated.public_ip_address,
        existing.public_ip_address,
    }

    for server_id in (new_owner, old_owner):
        body = DeleteServersRequestBody(servers=[ServerId(id=server_id)], delete_publicip=False)
        assert wait_job(ecs, ecs.delete_servers(DeleteServersRequest(body=body)).job_id).status == "SUCCESS"
    left = eip.list_publicips(ListPublicipsRequest()).publicips
    assert [(p.id, p.status) for p in left] == [(existing.id, "DOWN")]  # the new one went with its server
    assert pushed[-1].floating_ips == []


def test_bad_publicip_in_server_create_changes_nothing(api, agent_host, net) -> None:  # type: ignore[no-untyped-def]
    eip, ecs = _eip(api), api.ecs()
    bound = _create(eip)
    (owner,), _ = create_and_wait(ecs, server(net, name="owner"))
    _bind(eip, bound.id, _port_of(api, owner).port_id)
    free = _create(eip)
    both = PostPaidServerPublicip(id=free.id, eip=_new_eip().eip)
    cases = [
        (server(net, publicip=both), 400, "Ecs.0005", "not both"),
        (server(net, publicip=PostPaidServerPublicip()), 400, "Ecs.0005", "either id"),
        (server(net, publicip=PostPaidServerPublicip(id="nope")), 400, "Ecs.0005", "does not exist"),
        (server(net, publicip=PostPaidServerPublicip(id=bound.id)), 400, "Ecs.0005", "already bound"),
        (server(net, publicip=PostPaidServerPublicip(id=free.id), count=2), 400, "Ecs.0005", "count > 1"),
        (server(net, publicip=_new_eip(iptype="6_bgp")), 400, "Ecs.0005", "iptype"),
        # quota 3: two EIPs exist, so two more are one too many (and the pool has room)
        (server(net, publicip=_new_eip(), count=2), 403, "VPC.0105", "eips"),
    ]
    before, rows = counts(api), _eip_rows(api)
    for body, status, code, words in cases:
        exc = expect_error(lambda b=body: create(ecs, b), status, code)
        assert words in exc.error_msg, exc.error_msg
    assert (counts(api), _eip_rows(api)) == (before, rows)
    assert eip.show_publicip(ShowPublicipRequest(publicip_id=free.id)).publicip.status == "DOWN"


def test_eips_bind_only_on_hosts_with_an_external_network(api, agents, net, pushed) -> None:  # type: ignore[no-untyped-def]
    """A host without an external network: binding to its ports is refused (409), and a create that asked
    for an EIP there fails with the reason and releases the EIP it had allocated."""
    bare = agents.start("noext", availability_zone="lab-1b")
    eip, ecs = _eip(api), api.ecs()
    (plain,), job = create_and_wait(ecs, server(net, name="plain", availability_zone="lab-1b"))
    assert job.status == "SUCCESS"
    free = _create(eip)
    before = _eip_rows(api)
    exc = expect_error(lambda: _bind(eip, free.id, _port_of(api, plain).port_id), 409, "VPC.1306")
    assert "no external network" in exc.error_msg and bare.host_id in exc.error_msg
    assert eip.show_publicip(ShowPublicipRequest(publicip_id=free.id)).publicip.port_id is None
    assert _eip_rows(api) == before

    (failed,), job = create_and_wait(
        ecs, server(net, name="wants-eip", availability_zone="lab-1b", publicip=_new_eip())
    )
    assert job.status == "FAIL"
    assert "no external network" in (job.fail_reason or "") + str(job.entities)
    gone = row(api, failed)
    assert gone.status == "ERROR" and "no external network" in (gone.fault_message or "")
    assert _eip_rows(api) == before  # the EIP allocated for it was released
