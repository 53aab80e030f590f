"""Self-healing overlays: a host that missed an overlay push is given the current view by the reconciler.

Two real agents (libvirt's test driver, a `NullNetwork` that records the overlay views it is given and reports
their digests like a multi-host agent) in zones lab-1a and lab-1b with fake underlay addresses. One is taken
off the air while a server comes or goes on the other, so it misses the push; once it is back, one reconciler
pass must push it the current view, and the next pass (everything converged) must push nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from huaweicloudsdkecs.v2 import DeleteServersRequest, DeleteServersRequestBody, ServerId
from sqlmodel import Session, select

from agent.schemas import OverlaySpec, RemotePort
from controller.models.network import Port
from controller.reconciler import run_once
from tests.controller.api.server_helpers import create_and_wait, make_net, server, wait_job
from tests.controller.conftest import AgentFactory, AgentHost

H1_VTEP, H2_VTEP = "10.254.0.11", "10.254.0.12"


@pytest.fixture
def api_settings(seed_image_file: Path) -> dict[str, Any]:
    return {"seed_image": seed_image_file}


def test_digest_ignores_order_case_and_version() -> None:
    a = OverlaySpec(
        version=1,
        peers=["10.0.0.2", "10.0.0.1"],
        remote_ports=[RemotePort(ip="10.1.0.5", mac="FA:16:3E:00:00:01"), RemotePort(ip="10.1.0.4", mac="x")],
    )
    b = OverlaySpec(
        version=99,
        peers=["10.0.0.1", "10.0.0.2"],
        remote_ports=[RemotePort(ip="10.1.0.4", mac="x"), RemotePort(ip="10.1.0.5", mac="fa:16:3e:00:00:01")],
    )
    assert a.digest() == b.digest()
    assert a.digest() != OverlaySpec(peers=["10.0.0.1"], remote_ports=a.remote_ports).digest()
    assert a.digest() != OverlaySpec(peers=a.peers, remote_ports=a.remote_ports[:1]).digest()


def _reported(host: AgentHost) -> dict[str, str]:
    """The overlay digests the agent itself reports (what its heartbeats and `GET /v1/host` carry)."""
    return host.service.host_info().overlays


def _port(api: Any, server_id: str) -> RemotePort:
    with Session(api.ctx.engine) as session:
        port = session.exec(select(Port).where(Port.server_id == server_id)).one()
    return RemotePort(ip=port.ip_address, mac=port.mac_address)


def test_a_host_that_missed_overlay_pushes_is_repaired_by_the_reconciler(
    api: Any, agents: AgentFactory
) -> None:
    h1 = agents.start("h1", availability_zone="lab-1a", underlay_ip=H1_VTEP)
    h2 = agents.start("h2", availability_zone="lab-1b", underlay_ip=H2_VTEP)
    ecs = api.ecs()
    net = make_net(api)
    ids, job = create_and_wait(ecs, server(net, name="a", availability_zone="lab-1a"))
    assert job.status == "SUCCESS", job
    a = ids[0]
    assert _reported(h1) == {net.vpc_id: OverlaySpec().digest()}  # alone in the VPC: floods to nobody
    assert run_once(api.ctx).overlays_repaired == []

    # h1 is off the air while b comes up on h2: it misses the push that would add h2 to its flood list.
    agents.stop_serving(h1)
    ids, job = create_and_wait(ecs, server(net, name="b", availability_zone="lab-1b"))
    assert job.status == "SUCCESS", job
    b = ids[0]
    assert run_once(api.ctx).overlays_repaired == []  # h1 does not answer: skipped, nothing pushed
    agents.serve_again(h1)
    want_h1 = OverlaySpec(peers=[H2_VTEP], remote_ports=[_port(api, b)])
    assert _reported(h1) == {net.vpc_id: OverlaySpec().digest()}, "h1 should still have its stale view"
    assert _reported(h2) == {net.vpc_id: OverlaySpec(peers=[H1_VTEP], remote_ports=[_port(api, a)]).digest()}

    report = run_once(api.ctx)
    assert report.overlays_repaired == [f"{h1.host_id}/{net.vpc_id}"]
    assert _reported(h1) == {net.vpc_id: want_h1.digest()}
    assert run_once(api.ctx).overlays_repaired == []  # converged: no push at all

    # h1 is away again while b is deleted: it keeps flooding to h2 until the reconciler sees it back. h2
    # keeps b's network a while with no port left in the VPC: it should flood to nobody, and missed that too
    # (the delete's push goes only to hosts with ports).
    agents.stop_serving(h1)
    done = wait_job(ecs, _delete(ecs, b))
    assert done.status == "SUCCESS", done
    agents.serve_again(h1)
    assert _reported(h1) == {net.vpc_id: want_h1.digest()}
    report = run_once(api.ctx)
    assert sorted(report.overlays_repaired) == sorted(
        [f"{h1.host_id}/{net.vpc_id}", f"{h2.host_id}/{net.vpc_id}"]
    )
    assert _reported(h1) == {net.vpc_id: OverlaySpec().digest()}
    assert _reported(h2) == {net.vpc_id: OverlaySpec().digest()}
    assert run_once(api.ctx).overlays_repaired == []


def _delete(ecs: Any, server_id: str) -> str:
    body = DeleteServersRequestBody(servers=[ServerId(id=server_id)], delete_volume=True)
    return str(ecs.delete_servers(DeleteServersRequest(body=body)).job_id)
