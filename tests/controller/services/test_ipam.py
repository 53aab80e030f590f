"""IPAM on real databases (SQLite and PostgreSQL): address choice, validation, release, concurrent allocation
in threads."""

from __future__ import annotations

import ipaddress
import re
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, select

from controller.db import create_schema, make_engine, session_scope
from controller.errors import BadRequest, Conflict
from controller.models.network import Port, Subnet
from controller.services import ipam, networks
from tests.support.postgres import on_both_databases

pytestmark = on_both_databases()

PROJECT = "p1"


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url)
    create_schema(engine)
    yield engine
    engine.dispose()


def make_subnet(engine: Engine, cidr: str = "10.0.0.0/24", gateway: str = "10.0.0.1") -> Subnet:
    with session_scope(engine) as session:
        vpc = networks.create_vpc(session, PROJECT, name="v", cidr="10.0.0.0/16")
        return networks.create_subnet(
            session, PROJECT, vpc_id=vpc.id, name="s", cidr=cidr, gateway_ip=gateway
        )


def allocate(engine: Engine, subnet: Subnet, server_id: str, ip: str | None = None, groups: Any = ()) -> Port:
    with session_scope(engine) as session:
        return ipam.allocate_port(
            session,
            project_id=PROJECT,
            subnet=subnet,
            ip_address=ip,
            security_group_ids=list(groups),
            server_id=server_id,
        )


def release(engine: Engine, server_id: str) -> list[Port]:
    with session_scope(engine) as session:
        return ipam.release_ports(session, server_id)


def all_ports(engine: Engine) -> list[Port]:
    with Session(engine) as session:
        return list(session.exec(select(Port)).all())


def test_automatic_addresses_start_at_10_and_fill_gaps(engine: Engine) -> None:
    subnet = make_subnet(engine)
    first = [allocate(engine, subnet, f"s{i}").ip_address for i in range(3)]
    assert first == ["10.0.0.10", "10.0.0.11", "10.0.0.12"]
    release(engine, "s1")
    assert allocate(engine, subnet, "s9").ip_address == "10.0.0.11"


def test_a_port_carries_its_vpc_groups_and_a_local_mac(engine: Engine) -> None:
    subnet = make_subnet(engine)
    port = allocate(engine, subnet, "s1", groups=["g1", "g2"])
    assert (port.vpc_id, port.subnet_id, port.project_id, port.server_id) == (
        subnet.vpc_id,
        subnet.id,
        PROJECT,
        "s1",
    )
    assert port.security_group_ids == ["g1", "g2"] and port.device_owner == "compute:lab-1a"
    assert re.fullmatch(r"fa:16:3e(:[0-9a-f]{2}){3}", port.mac_address)


def test_a_requested_free_address_is_used(engine: Engine) -> None:
    subnet = make_subnet(engine)
    assert allocate(engine, subnet, "s1", ip="10.0.0.2").ip_address == "10.0.0.2"
    assert allocate(engine, subnet, "s2", ip="10.0.0.254").ip_address == "10.0.0.254"


@pytest.mark.parametrize(
    ("ip", "fragment"),
    [
        ("10.0.1.5", "not inside"),
        ("10.0.0.0", "network or broadcast"),
        ("10.0.0.255", "network or broadcast"),
        ("10.0.0.1", "gateway"),
        ("10.0.0.300", "not a valid"),
        ("10.0.0.10", "already in use"),
    ],
)
def test_bad_requested_addresses_are_400(engine: Engine, ip: str, fragment: str) -> None:
    subnet = make_subnet(engine)
    taken = allocate(engine, subnet, "s0")
    with pytest.raises(BadRequest) as info:
        allocate(engine, subnet, "s1", ip=ip)
    assert info.value.status == 400 and fragment in info.value.message
    assert [p.id for p in all_ports(engine)] == [taken.id]


def test_tiny_subnets_start_after_the_gateway_and_run_out_with_409(engine: Engine) -> None:
    subnet = make_subnet(engine, cidr="10.0.5.0/29", gateway="10.0.5.1")
    ips = [allocate(engine, subnet, f"s{i}").ip_address for i in range(5)]
    assert ips == [f"10.0.5.{i}" for i in range(2, 7)]
    with pytest.raises(Conflict):
        allocate(engine, subnet, "one-too-many")
    assert len(all_ports(engine)) == 5


def test_100_allocate_release_cycles_never_leak_or_duplicate(engine: Engine) -> None:
    subnet = make_subnet(engine)
    steady = allocate(engine, subnet, "steady")
    seen: set[str] = set()
    for cycle in range(100):
        ports = [allocate(engine, subnet, f"cycle-{cycle}-{n}") for n in range(cycle % 3 + 1)]
        live = [p.ip_address for p in all_ports(engine)]
        assert len(live) == len(set(live)) == len(ports) + 1
        seen.update(p.ip_address for p in ports)
        for port in ports:
            assert [p.id for p in release(engine, port.server_id or "")] == [port.id]
    assert [p.id for p in all_ports(engine)] == [steady.id]
    # Released addresses are reused: three at most were ever live beside the steady one.
    assert seen == {"10.0.0.11", "10.0.0.12", "10.0.0.13"}


def test_release_of_a_server_without_ports_is_empty(engine: Engine) -> None:
    make_subnet(engine)
    assert release(engine, "nobody") == []


def test_the_database_refuses_a_duplicate_address(engine: Engine) -> None:
    subnet = make_subnet(engine)
    port = allocate(engine, subnet, "s1")
    with pytest.raises(IntegrityError), session_scope(engine) as session:
        session.add(
            Port(
                project_id=PROJECT,
                vpc_id=subnet.vpc_id,
                subnet_id=subnet.id,
                ip_address=port.ip_address,
                mac_address=ipam.random_mac(),
            )
        )
    with pytest.raises(IntegrityError), session_scope(engine) as session:
        session.add(
            Port(
                project_id=PROJECT,
                vpc_id=subnet.vpc_id,
                subnet_id=subnet.id,
                ip_address="10.0.0.99",
                mac_address=port.mac_address,
            )
        )


def test_an_insert_that_loses_the_race_is_retried(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    """Force the race the unique constraint arbitrates: the first choice is an address another transaction
    already holds (as after a concurrent commit on PostgreSQL); the insert fails and the next choice wins."""
    subnet = make_subnet(engine)
    holder = allocate(engine, subnet, "holder")
    real = ipam._lowest_free
    choices: list[str] = []

    def stale_first(session: Session, sub: Subnet, network: ipaddress.IPv4Network) -> str:
        choice = holder.ip_address if not choices else real(session, sub, network)
        choices.append(choice)
        return choice

    monkeypatch.setattr(ipam, "_lowest_free", stale_first)
    port = allocate(engine, subnet, "late")
    assert choices == ["10.0.0.10", "10.0.0.11"] and port.ip_address == "10.0.0.11"
    assert sorted(p.ip_address for p in all_ports(engine)) == ["10.0.0.10", "10.0.0.11"]


def test_threads_allocating_at_once_get_distinct_addresses(engine: Engine) -> None:
    subnet = make_subnet(engine)
    threads, per_thread = 8, 12
    barrier = threading.Barrier(threads)
    results: list[str] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def worker(n: int) -> None:
        try:
            barrier.wait()
            for i in range(per_thread):
                ip = allocate(engine, subnet, f"t{n}-{i}").ip_address
                with lock:
                    results.append(ip)
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    pool = [threading.Thread(target=worker, args=(n,)) for n in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    assert errors == []
    assert len(results) == len(set(results)) == threads * per_thread
    expected = {str(ipaddress.IPv4Address("10.0.0.10") + i) for i in range(threads * per_thread)}
    assert set(results) == expected
    assert len({p.mac_address for p in all_ports(engine)}) == threads * per_thread


def test_threads_requesting_the_same_address_get_it_once(engine: Engine) -> None:
    subnet = make_subnet(engine)
    threads = 8
    barrier = threading.Barrier(threads)
    won: list[str] = []
    refused: list[str] = []

    def worker(n: int) -> None:
        barrier.wait()
        try:
            allocate(engine, subnet, f"t{n}", ip="10.0.0.50")
            won.append(f"t{n}")
        except BadRequest as exc:
            refused.append(exc.message)

    pool = [threading.Thread(target=worker, args=(n,)) for n in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    assert len(won) == 1 and len(refused) == threads - 1
    assert all("already in use" in m for m in refused)
    assert [(p.ip_address, p.server_id) for p in all_ports(engine)] == [("10.0.0.50", won[0])]
