"""Quota limits, usage and enforcement on real databases: SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from controller.config import Settings
from controller.db import create_schema, make_engine, session_scope
from controller.errors import NotFound, QuotaExceeded
from controller.models.keypair import Keypair
from controller.models.network import SecurityGroup
from controller.models.project import Project
from controller.models.server import Server
from controller.models.volume import Volume
from controller.services import flavors, quotas
from tests.support.postgres import on_both_databases

pytestmark = on_both_databases()

SETTINGS = Settings(quota_instances=3, quota_cores=4, quota_ram_mib=1024, quota_volumes=2, quota_gigabytes=10)


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url)
    create_schema(engine)
    with session_scope(engine) as session:
        flavors.seed_flavors(session)
        session.add(Project(id="p1", name="one"))
        session.add(Project(id="p2", name="two"))
    yield engine
    engine.dispose()


def _server(project: str, flavor: str = "s6.small.1", status: str = "ACTIVE") -> Server:
    return Server(
        project_id=project,
        name="s",
        status=status,
        flavor_id=flavor,
        image_id="i",
        availability_zone="az",
        vpc_id="v",
        root_volume_size=1,
    )


def test_limits_are_the_defaults_until_overridden(engine: Engine) -> None:
    with session_scope(engine) as session:
        assert quotas.get_limits(session, SETTINGS, "p1") == quotas.Limits(3, 4, 1024, 100, 100, 2, 10, 10)
        quotas.set_limits(session, "p1", {"instances": 10, "ram": -1})
        quotas.set_limits(session, "p1", {"cores": 8})
    with session_scope(engine) as session:
        assert quotas.get_limits(session, SETTINGS, "p1") == quotas.Limits(10, 8, -1, 100, 100, 2, 10, 10)
        assert quotas.get_limits(session, SETTINGS, "p2") == quotas.Limits(3, 4, 1024, 100, 100, 2, 10, 10)
        quotas.set_limits(session, "p1", {"instances": None})
        assert quotas.get_limits(session, SETTINGS, "p1").instances == 3
        with pytest.raises(NotFound):
            quotas.set_limits(session, "nosuch", {"instances": 1})


def test_usage_counts_live_servers_of_the_project(engine: Engine) -> None:
    with session_scope(engine) as session:
        small = flavors.get_flavor(session, "s6.small.1")
        session.add(_server("p1"))
        session.add(_server("p1", status="ERROR"))  # an ERROR server still holds its quota
        session.add(_server("p1", status="DELETED"))
        session.add(_server("p2"))
        session.add(SecurityGroup(project_id="p1", name="g"))
        session.add(Keypair(project_id="p1", name="k", public_key="ssh-ed25519 AAAA", fingerprint="f"))
        session.add_all([_volume("p1", 3), _volume("p1", 5), _volume("p1", 7, "deleted"), _volume("p2", 1)])
    with Session(engine) as session:
        used = quotas.get_usage(session, "p1")
    assert used == quotas.Limits(2, 2 * small.vcpus, 2 * small.ram_mib, 1, 1, 2, 8, 0)


def test_volumes_over_either_limit_are_refused(engine: Engine) -> None:
    with session_scope(engine) as session:
        session.add_all([_volume("p1", 4), _volume("p1", 4)])
        session.flush()
        quotas.check_volumes_added(session, SETTINGS, "p1", count=2, gigabytes=8)
        with pytest.raises(QuotaExceeded) as info:  # 8 + 3 GiB > 10
            quotas.check_volumes_added(session, SETTINGS, "p1", count=0, gigabytes=3, growing=3)
        assert info.value.code == "EVS.0105" and "8 GiB of 10 GiB already used" in info.value.message
        session.add(_volume("p1", 1))
        session.flush()
        with pytest.raises(QuotaExceeded, match="volumes: requested 1, 2 of 2"):
            quotas.check_volumes_added(session, SETTINGS, "p1", count=1, gigabytes=1)
        quotas.set_limits(session, "p1", {"volumes": -1, "gigabytes": -1})
        quotas.check_volumes_added(session, SETTINGS, "p1", count=1, gigabytes=1, growing=1000)


def _volume(project: str, size: int, status: str = "available") -> Volume:
    return Volume(project_id=project, size=size, availability_zone="az", status=status)


def test_servers_over_any_limit_are_refused_and_unlimited_is_never(engine: Engine) -> None:
    with session_scope(engine) as session:
        small = flavors.get_flavor(session, "s6.small.1")
    settings = Settings(quota_instances=2, quota_cores=100, quota_ram_mib=small.ram_mib * 100)
    with pytest.raises(QuotaExceeded) as info, session_scope(engine) as session:
        for _ in range(3):
            session.add(_server("p1"))
        session.flush()
        quotas.check_servers_added(session, settings, "p1", count=3, vcpus=3, ram_mib=3 * small.ram_mib)
    assert info.value.code == "Ecs.0105" and "instances: requested 3, 0 of 2" in info.value.message
    with Session(engine) as session:  # rolled back with the transaction
        assert session.exec(select(Server)).all() == []
    with session_scope(engine) as session:
        quotas.set_limits(session, "p1", {"instances": -1})
        for _ in range(3):
            session.add(_server("p1"))
        session.flush()
        quotas.check_servers_added(session, settings, "p1", count=3, vcpus=3, ram_mib=3 * small.ram_mib)


def test_lock_project_lets_a_savepoint_roll_back_with_the_transaction(engine: Engine) -> None:
    # Without a write first, pysqlite's SAVEPOINT opens (and its RELEASE commits) a transaction of its own.
    settings = Settings(quota_key_pairs=0)
    with pytest.raises(QuotaExceeded), session_scope(engine) as session:
        quotas.lock_project(session, "p1")
        with session.begin_nested():
            session.add(Keypair(project_id="p1", name="k", public_key="ssh-ed25519 AAAA", fingerprint="f"))
        quotas.check_added(session, settings, "p1", "key_pairs")
    with Session(engine) as session:
        assert session.exec(select(Keypair)).all() == []
