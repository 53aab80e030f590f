"""`AgentService.update_network` (a subnet update pushed by the controller) and the `PUT /v1/networks/{vpc}`
route, on the libvirt test driver with a recording network: what is stored and what the network layer is asked."""

from __future__ import annotations

from fastapi.testclient import TestClient

from agent.main import create_app
from agent.schemas import ImageRef, NetworkSpec, OverlaySpec, SubnetSpec
from tests.agent.test_service import Rig, make_spec


class NetworkRecorder:
    """Wraps the rig's network to remember every `ensure_network` call."""

    def __init__(self, rig: Rig) -> None:
        self.ensured: list[NetworkSpec] = []
        original = rig.network.ensure_network

        def ensure(spec: NetworkSpec) -> None:
            self.ensured.append(spec)
            original(spec)

        rig.network.ensure_network = ensure  # type: ignore[method-assign]


def _updated(spec: NetworkSpec, *, dns: list[str], dhcp: bool, version: int) -> NetworkSpec:
    (subnet,) = spec.subnets
    changed = subnet.model_copy(update={"dns": dns, "dhcp_enable": dhcp})
    return spec.model_copy(update={"subnets": [changed], "overlay": OverlaySpec(version=version)})


def test_update_network_rewrites_the_specs_that_use_the_vpc_and_the_host(rig: Rig) -> None:
    image: ImageRef = rig.image
    rig.service.ensure_server(make_spec(image, "srv-1", vpc="vpc-a", n=1))
    rig.service.ensure_server(make_spec(image, "srv-2", vpc="vpc-b", n=2))
    (current,) = rig.stored_spec("srv-1").networks
    recorder = NetworkRecorder(rig)

    pushed = _updated(current, dns=["10.10.0.53"], dhcp=False, version=5)
    assert rig.service.update_network(pushed) is True

    assert rig.stored_spec("srv-1").networks == [pushed]
    assert rig.stored_spec("srv-2").networks[0].vpc_id == "vpc-b"  # another VPC's server is left alone
    assert recorder.ensured == [pushed]
    assert sorted(bp.port.id for bp in rig.network.ports) == ["port-srv-1", "port-srv-2"]  # DHCP hosts follow

    # An older overlay view in a later push never replaces the newer one the spec has.
    stale = _updated(current, dns=["10.10.0.54"], dhcp=True, version=3)
    rig.service.update_network(stale)
    (stored,) = rig.stored_spec("srv-1").networks
    assert stored.subnets[0].dns == ["10.10.0.54"] and stored.overlay.version == 5


def test_update_network_of_a_vpc_this_host_lacks_changes_nothing(rig: Rig) -> None:
    rig.service.ensure_server(make_spec(rig.image, "srv-1", vpc="vpc-a"))
    before = rig.stored_spec("srv-1")
    recorder = NetworkRecorder(rig)
    other = NetworkSpec(
        vpc_id="vpc-z",
        vni=9,
        cidr="10.9.0.0/16",
        subnets=[SubnetSpec(id="s", cidr="10.9.1.0/24", gateway_ip="10.9.1.1")],
    )
    assert rig.service.update_network(other) is False
    assert rig.stored_spec("srv-1") == before and recorder.ensured == []
    assert rig.network.network_ids() == ["vpc-a"]


def test_put_network_route(rig: Rig) -> None:
    rig.service.ensure_server(make_spec(rig.image, "srv-1", vpc="vpc-a"))
    (current,) = rig.stored_spec("srv-1").networks
    pushed = _updated(current, dns=["10.10.0.53"], dhcp=True, version=7)
    headers = {"Authorization": "Bearer t0ken"}
    with TestClient(create_app(rig.settings, service=rig.service)) as client:
        ok = client.put("/v1/networks/vpc-a", json=pushed.model_dump(mode="json"), headers=headers)
        assert ok.status_code == 204, ok.text
        mismatch = client.put("/v1/networks/vpc-b", json=pushed.model_dump(mode="json"), headers=headers)
        assert mismatch.status_code == 400 and "vpc-b" in mismatch.json()["message"]
        unauthorized = client.put("/v1/networks/vpc-a", json=pushed.model_dump(mode="json"))
        assert unauthorized.status_code == 401
    assert rig.stored_spec("srv-1").networks == [pushed]


def test_resync_and_repair_use_the_newest_copy_of_each_network(rig: Rig) -> None:
    """Two servers stored at different times carry different copies of their VPC (a push missed in between):
    the copy the controller stamped last wins, whatever the order of the spec files."""
    old = make_spec(rig.image, "srv-b", vpc="vpc-a", n=1)
    (net,) = old.networks
    old = old.model_copy(update={"networks": [_updated(net, dns=["10.10.0.1"], dhcp=True, version=10)]})
    new = make_spec(rig.image, "srv-a", vpc="vpc-a", n=2)
    newest = _updated(net, dns=["10.10.0.2"], dhcp=True, version=20)
    new = new.model_copy(update={"networks": [newest]})
    rig.service.ensure_server(old)
    rig.service.ensure_server(new)
    recorder = NetworkRecorder(rig)

    rig.service.resync()
    rig.service.repair_networks()
    assert recorder.ensured == [newest, newest]
