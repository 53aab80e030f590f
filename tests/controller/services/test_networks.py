"""The networks service on a real SQLite database: agent specs, default group, counters, project scoping."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from agent.schemas import NetworkSpec, OverlaySpec, RuleSpec, SubnetSpec
from controller.db import create_schema, make_engine, session_scope
from controller.errors import BadRequest, NotFound
from controller.models.network import SecurityGroup
from controller.services import ipam, networks

P1, P2 = "p1", "p2"


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = make_engine(f"sqlite:///{tmp_path / 'net.db'}")
    create_schema(engine)
    yield engine
    engine.dispose()


def run_in_threads(count: int, fn: Callable[[int], Any]) -> tuple[list[Any], list[BaseException]]:
    barrier = threading.Barrier(count)
    results: list[Any] = []
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        barrier.wait()
        try:
            results.append(fn(n))
        except BaseException as exc:  # collected for the assertion
            errors.append(exc)

    pool = [threading.Thread(target=worker, args=(n,)) for n in range(count)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return results, errors


def test_network_spec_has_the_vpc_and_its_subnets(engine: Engine) -> None:
    with session_scope(engine) as session:
        vpc = networks.create_vpc(session, P1, name="v", cidr="10.8.0.0/16")
        a = networks.create_subnet(
            session,
            P1,
            vpc_id=vpc.id,
            name="a",
            cidr="10.8.1.0/24",
            gateway_ip="10.8.1.1",
            primary_dns="10.8.1.2",
            secondary_dns="10.8.1.3",
        )
        b = networks.create_subnet(
            session, P1, vpc_id=vpc.id, name="b", cidr="10.8.2.0/24", gateway_ip="10.8.2.1", dhcp_enable=False
        )
    with Session(engine) as session:
        spec = networks.network_spec(session, vpc.id)
    assert spec == NetworkSpec(
        vpc_id=vpc.id,
        vni=1,
        cidr="10.8.0.0/16",
        subnets=[
            SubnetSpec(
                id=a.id,
                cidr="10.8.1.0/24",
                gateway_ip="10.8.1.1",
                dhcp_enable=True,
                dns=["10.8.1.2", "10.8.1.3"],
                mtu=1450,
            ),
            SubnetSpec(
                id=b.id, cidr="10.8.2.0/24", gateway_ip="10.8.2.1", dhcp_enable=False, dns=[], mtu=1450
            ),
        ],
        overlay=OverlaySpec(version=spec.overlay.version),  # no server placed yet: nobody to peer with
    )
    with Session(engine) as session, pytest.raises(NotFound):
        networks.network_spec(session, "no-such-vpc")


def test_security_group_specs_carry_rules_members_and_remote_groups(engine: Engine) -> None:
    with session_scope(engine) as session:
        vpc = networks.create_vpc(session, P1, name="v", cidr="10.8.0.0/16")
        subnet = networks.create_subnet(
            session, P1, vpc_id=vpc.id, name="s", cidr="10.8.1.0/24", gateway_ip="10.8.1.1"
        )
        web = networks.create_security_group(session, P1, name="web")
        db = networks.create_security_group(session, P1, name="db")
        lonely = networks.create_security_group(session, P1, name="lonely")
        ssh = networks.create_rule(
            session,
            P1,
            security_group_id=web.id,
            direction="ingress",
            protocol="tcp",
            port_range_min=22,
            remote_ip_prefix="0.0.0.0/0",
        )
        networks.create_rule(
            session,
            P1,
            security_group_id=web.id,
            direction="ingress",
            protocol="tcp",
            port_range_min=8080,
            port_range_max=8090,
            remote_group_id=db.id,
        )
        for server, ip, groups in (
            ("s1", "10.8.1.20", [web.id]),
            ("s2", "10.8.1.5", [web.id, db.id]),
            ("s3", "10.8.1.30", [db.id]),
        ):
            ipam.allocate_port(
                session,
                project_id=P1,
                subnet=subnet,
                ip_address=ip,
                security_group_ids=groups,
                server_id=server,
            )
    with Session(engine) as session:
        specs = networks.security_group_specs(session, [web.id, web.id, lonely.id])
    assert [s.id for s in specs] == [web.id, lonely.id, db.id]  # asked for (deduplicated), then remote groups
    web_spec, lonely_spec, db_spec = specs
    assert web_spec.member_ips == ["10.8.1.5", "10.8.1.20"]
    assert db_spec.member_ips == ["10.8.1.5", "10.8.1.30"] and lonely_spec.member_ips == []
    assert (
        RuleSpec(
            id=ssh.id,
            direction="ingress",
            protocol="tcp",
            port_range_min=22,
            port_range_max=22,
            remote_ip_prefix="0.0.0.0/0",
        )
        in web_spec.rules
    )
    kinds = {
        (r.direction, r.protocol, r.port_range_min, r.port_range_max, r.remote_group_id)
        for r in web_spec.rules
    }
    assert kinds == {
        ("egress", None, None, None, None),
        ("ingress", None, None, None, web.id),
        ("ingress", "tcp", 22, 22, None),
        ("ingress", "tcp", 8080, 8090, db.id),
    }
    with Session(engine) as session, pytest.raises(NotFound):
        networks.security_group_specs(session, [web.id, "no-such-group"])


def test_default_group_is_created_once_per_project_even_under_a_race(engine: Engine) -> None:
    def ensure(_: int) -> str:
        with session_scope(engine) as session:
            return networks.ensure_default_security_group(session, P1).id

    ids, errors = run_in_threads(8, ensure)
    assert errors == [] and len(set(ids)) == 1
    with session_scope(engine) as session:
        assert networks.ensure_default_security_group(session, P1).id == ids[0]
        other = networks.ensure_default_security_group(session, P2)
    assert other.id != ids[0]
    with Session(engine) as session:
        defaults = session.exec(select(SecurityGroup).where(SecurityGroup.name == "default")).all()
        assert sorted(g.project_id for g in defaults) == [P1, P2]
        rules = networks.rules_of(session, [ids[0]])[ids[0]]
    assert {(r.direction, r.remote_group_id) for r in rules} == {("egress", None), ("ingress", ids[0])}


def test_vnis_stay_unique_when_vpcs_are_created_at_once(engine: Engine) -> None:
    def create(n: int) -> int:
        with session_scope(engine) as session:
            return networks.create_vpc(session, P1, name=f"v{n}", cidr=f"10.{n}.0.0/16").vni

    vnis, errors = run_in_threads(8, create)
    assert errors == [] and sorted(vnis) == list(range(1, 9))


def test_lookups_are_scoped_to_the_project(engine: Engine) -> None:
    with session_scope(engine) as session:
        vpc = networks.create_vpc(session, P1, name="v", cidr="10.8.0.0/16")
        subnet = networks.create_subnet(
            session, P1, vpc_id=vpc.id, name="s", cidr="10.8.1.0/24", gateway_ip="10.8.1.1"
        )
        group = networks.create_security_group(session, P1, name="g")
    with Session(engine) as session:
        assert networks.get_vpc(session, P1, vpc.id).id == vpc.id
        assert networks.get_subnet(session, P1, subnet.id).id == subnet.id
        assert networks.get_security_group(session, P1, group.id).id == group.id
        for lookup, ident, code in (
            (networks.get_vpc, vpc.id, "VPC.0003"),
            (networks.get_subnet, subnet.id, "VPC.0202"),
            (networks.get_security_group, group.id, "VPC.0602"),
        ):
            with pytest.raises(NotFound) as info:
                lookup(session, P2, ident)
            assert (info.value.status, info.value.code) == (404, code)


def test_overlapping_subnets_created_at_once_are_refused_but_one(engine: Engine) -> None:
    with session_scope(engine) as session:
        vpc = networks.create_vpc(session, P1, name="v", cidr="10.8.0.0/16")

    def create(n: int) -> str:
        # Every candidate overlaps every other: 10.8.0.0/(17+n) all contain 10.8.0.0.
        with session_scope(engine) as session:
            return networks.create_subnet(
                session, P1, vpc_id=vpc.id, name=f"s{n}", cidr=f"10.8.0.0/{17 + n}", gateway_ip="10.8.0.1"
            ).id

    created, errors = run_in_threads(6, create)
    assert len(created) == 1 and len(errors) == 5
    assert all(isinstance(e, BadRequest) and "overlaps" in e.message for e in errors)
    with Session(engine) as session:
        assert [s.id for s in networks.subnets_of(session, vpc.id)] == created
