"""`labcloud eip create|list|show|bind|unbind|delete` against a real controller with an external network and a
real test-driver agent; the database and what the agent was pushed are the oracles."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from huaweicloudsdkecs.v2 import ListServerInterfacesRequest
from sqlmodel import Session, select

from agent.schemas import ExternalSpec
from controller.models.eip import Eip
from tests.controller.api.server_helpers import create_and_wait, make_net, server
from tests.controller.cli.conftest import rows

POOL = ["203.0.113.100", "203.0.113.101", "203.0.113.102"]


@pytest.fixture
def api_settings(seed_image_file: Path) -> dict[str, Any]:
    return {
        "seed_image": seed_image_file,
        "external_cidr": "203.0.113.0/24",
        "external_pool": f"{POOL[0]}-{POOL[-1]}",
        "external_gateway": "203.0.113.1",
    }


@pytest.fixture
def pushed(agents) -> list[ExternalSpec]:  # type: ignore[no-untyped-def]
    """Every external spec the agent (a host with an external network) received, newest last."""
    host = agents.start(external_ip="203.0.113.10/24")
    received: list[ExternalSpec] = []

    def record(spec: ExternalSpec) -> bool:
        received.append(spec)
        return True

    host.service.set_external = record
    return received


def _eips(api: Any) -> dict[str, str | None]:
    """address -> bound port id, from the database."""
    with Session(api.ctx.engine) as session:
        return {e.public_ip_address: e.port_id for e in session.exec(select(Eip)).all()}


def test_eip_lifecycle_through_the_cli(cli, api, pushed) -> None:  # type: ignore[no-untyped-def]
    net = make_net(api)
    (server_id,), job = create_and_wait(api.ecs(), server(net, name="web"))
    assert job.status == "SUCCESS"
    (nic,) = (
        api.ecs()
        .list_server_interfaces(ListServerInterfacesRequest(server_id=server_id))
        .interface_attachments
    )
    fixed = nic.fixed_ips[0].ip_address

    code, out, _ = cli("eip", "create", "--alias", "front")
    assert code == 0 and f"EIP {POOL[0]} (" in out
    assert _eips(api) == {POOL[0]: None}

    code, out, _ = cli("eip", "bind", POOL[0], "web")  # by address and server name
    assert code == 0 and f"bound to server web ({fixed})" in out
    assert _eips(api) == {POOL[0]: nic.port_id}
    assert [(f.eip, f.port_id, f.fixed_ip) for f in pushed[-1].floating_ips] == [
        (POOL[0], nic.port_id, fixed)
    ]

    code, out, _ = cli("eip", "list")
    assert code == 0
    assert out.splitlines()[0].split()[:3] == ["ID", "ADDRESS", "STATUS"]
    ((eip_id, address, status, ip, port, alias, size),) = rows(out)
    assert (address, status, ip, port, alias, size) == (POOL[0], "ACTIVE", fixed, nic.port_id, "front", "5")

    code, out, _ = cli("eip", "show", eip_id)  # by id
    assert code == 0 and json.loads(out)["port_id"] == nic.port_id

    code, out, _ = cli("eip", "unbind", eip_id)
    assert code == 0 and "unbound" in out
    assert _eips(api) == {POOL[0]: None} and pushed[-1].floating_ips == []

    # Allocated and bound in one go; a server that does not exist allocates nothing.
    code, out, err = cli("eip", "create", "--server", "no-such-server")
    assert code == 1 and out == "" and "no-such-server" in err
    assert _eips(api) == {POOL[0]: None}
    code, out, _ = cli("eip", "create", "--server", server_id, "--address", POOL[2])
    assert code == 0 and f"EIP {POOL[2]} bound to server web" in out
    assert _eips(api) == {POOL[0]: None, POOL[2]: nic.port_id}

    # The port has an EIP already: the API's 409 is the CLI's error, and the binding stays as it was.
    code, out, err = cli("eip", "bind", POOL[0], "web")
    assert code == 1 and "error VPC.1303" in err
    assert _eips(api) == {POOL[0]: None, POOL[2]: nic.port_id}

    code, out, err = cli("eip", "delete", POOL[2])  # still bound: refused, nothing changes
    assert code == 1 and "unbind it first" in err
    assert _eips(api) == {POOL[0]: None, POOL[2]: nic.port_id}
    assert cli("eip", "unbind", POOL[2])[0] == 0
    for address in (POOL[0], POOL[2]):
        code, out, _ = cli("eip", "delete", address)
        assert code == 0 and f"EIP {address} released" in out
    assert _eips(api) == {}
    code, _, err = cli("eip", "show", POOL[0])
    assert code == 1 and f"no EIP with id or address '{POOL[0]}'" in err
