"""Peer and remote-port computation for VPC overlays: the pure function, then the same from a real database."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session

from agent.schemas import RemotePort
from controller.db import create_schema, make_engine, session_scope
from controller.models.host import Host
from controller.models.network import Port
from controller.models.server import Server
from controller.services import networks, overlay
from controller.services.overlay import PlacedPort

UNDERLAY = {"h1": "10.254.0.11", "h2": "10.254.0.12", "h3": "10.254.0.13", "solo": None}


def _placed(host: str, n: int) -> PlacedPort:
    return PlacedPort(host_id=host, ip=f"10.0.0.{n}", mac=f"fa:16:3e:00:00:{n:02x}")


def test_peers_are_the_other_hosts_with_ports_and_remote_ports_are_theirs() -> None:
    placed = [_placed("h2", 20), _placed("h1", 10), _placed("h3", 30), _placed("h2", 21), _placed("h1", 11)]
    spec = overlay.overlay_for("h1", placed, UNDERLAY, 7)
    assert spec.version == 7
    assert spec.peers == ["10.254.0.12", "10.254.0.13"]
    assert spec.remote_ports == [
        RemotePort(ip="10.0.0.20", mac="fa:16:3e:00:00:14"),
        RemotePort(ip="10.0.0.21", mac="fa:16:3e:00:00:15"),
        RemotePort(ip="10.0.0.30", mac="fa:16:3e:00:00:1e"),
    ]


def test_a_host_alone_in_a_vpc_floods_to_nobody() -> None:
    spec = overlay.overlay_for("h1", [_placed("h1", 10), _placed("h1", 11)], UNDERLAY, 1)
    assert spec.peers == [] and spec.remote_ports == []


def test_hosts_without_an_underlay_are_nobodys_peer_and_peer_with_nobody() -> None:
    placed = [_placed("h1", 10), _placed("solo", 40)]
    assert overlay.overlay_for("h1", placed, UNDERLAY, 1).peers == []
    assert overlay.overlay_for("solo", placed, UNDERLAY, 1).peers == ["10.254.0.11"]
    # Two hosts reporting the same address (a misconfiguration) never make a host its own peer.
    same = {"h1": "10.254.0.11", "h9": "10.254.0.11"}
    assert overlay.overlay_for("h1", [_placed("h1", 1), _placed("h9", 2)], same, 1).peers == []


def test_an_unplaced_view_lists_every_port_as_remote() -> None:
    placed = [_placed("h1", 10), _placed("h2", 20)]
    spec = overlay.overlay_for(None, placed, UNDERLAY, 1)
    assert spec.peers == ["10.254.0.11", "10.254.0.12"]
    assert [p.ip for p in spec.remote_ports] == ["10.0.0.10", "10.0.0.20"]


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = make_engine(f"sqlite:///{tmp_path / 'overlay.db'}")
    create_schema(engine)
    yield engine
    engine.dispose()


def _server(session: Session, vpc_id: str, subnet_id: str, host: str | None, n: int, status: str) -> None:
    server = Server(
        project_id="p1",
        name=f"s{n}",
        status=status,
        flavor_id="f",
        image_id="i",
        host_id=host,
        availability_zone="lab-1a",
        vpc_id=vpc_id,
        root_volume_size=1,
    )
    session.add(server)
    session.flush()
    session.add(
        Port(
            project_id="p1",
            vpc_id=vpc_id,
            subnet_id=subnet_id,
            ip_address=f"10.8.1.{n}",
            mac_address=f"fa:16:3e:00:01:{n:02x}",
            server_id=server.id,
        )
    )


def test_network_spec_carries_the_overlay_from_placed_servers(engine: Engine) -> None:
    with session_scope(engine) as session:
        for host_id in ("h1", "h2", "h3"):
            session.add(
                Host(
                    id=host_id,
                    hostname=host_id,
                    url=f"http://{UNDERLAY[host_id]}:8779",
                    accelerator="tcg",
                    vcpus=2,
                    memory_mib=1024,
                    disk_gib=10,
                    availability_zone="lab-1a",
                    underlay_ip=UNDERLAY[host_id],
                )
            )
        vpc = networks.create_vpc(session, "p1", name="v", cidr="10.8.0.0/16")
        other = networks.create_vpc(session, "p1", name="w", cidr="10.8.0.0/16")
        subnet = networks.create_subnet(
            session, "p1", vpc_id=vpc.id, name="a", cidr="10.8.1.0/24", gateway_ip="10.8.1.1"
        )
        _server(session, vpc.id, subnet.id, "h1", 10, "ACTIVE")
        _server(session, vpc.id, subnet.id, "h2", 20, "BUILD")  # placed, still building: already a peer
        _server(session, vpc.id, subnet.id, "h3", 30, "DELETED")  # gone: not a peer
        _server(session, vpc.id, subnet.id, None, 40, "BUILD")  # not placed yet: nowhere to reach it
    with Session(engine) as session:
        spec = networks.network_spec(session, vpc.id, "h1")
        assert networks.network_spec(session, other.id, "h1").overlay.peers == []
        assert networks.network_spec(session, vpc.id, "h3").overlay.peers == ["10.254.0.11", "10.254.0.12"]
    assert spec.vni == vpc.vni != other.vni
    assert spec.overlay.peers == ["10.254.0.12"]
    assert spec.overlay.remote_ports == [RemotePort(ip="10.8.1.20", mac="fa:16:3e:00:01:14")]
    assert spec.overlay.version > 0
