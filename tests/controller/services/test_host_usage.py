"""Per-host usage counters on SQLite and PostgreSQL: parallel claims keep them equal to what the servers claim and
never past capacity; deletes, freed creates and undone resizes give back what they held; the reconciler heals
counters that drifted."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update
from sqlmodel import Session, col, select

from controller.config import Settings
from controller.context import ControllerContext
from controller.db import session_scope
from controller.jobs.handlers.servers import _land
from controller.main import build_context
from controller.models.common import utcnow
from controller.models.flavor import Flavor
from controller.models.host import Host
from controller.models.server import Server
from controller.reconciler import run_once
from controller.scheduler import SchedulerPolicy
from controller.services import host_usage
from controller.services.host_usage import Usage
from controller.services.servers import claim_host
from controller.state import BUILD, DELETED
from tests.support.postgres import on_both_databases

pytestmark = on_both_databases()

SPAWNING = "spawning"


@pytest.fixture
def ctx(database_url: str, tmp_path: Path) -> Iterator[ControllerContext]:
    context = build_context(Settings(home=tmp_path / "home", seed_image=None, database_url=database_url))
    with session_scope(context.engine) as session:
        session.add(Flavor(id="small", name="small", vcpus=1, ram_mib=256))
        session.add(Flavor(id="large", name="large", vcpus=2, ram_mib=1024))
    yield context
    context.engine.dispose()


def _hosts(ctx: ControllerContext, *specs: tuple[str, int]) -> None:
    with session_scope(ctx.engine) as session:
        for host_id, memory_mib in specs:
            session.add(
                Host(
                    id=host_id,
                    hostname=host_id,
                    url=f"http://{host_id}.invalid",
                    accelerator="tcg",
                    vcpus=8,
                    memory_mib=memory_mib,
                    disk_gib=100,
                    availability_zone="lab-1a",
                    last_heartbeat=utcnow(),
                )
            )


def _building(ctx: ControllerContext, count: int, flavor: str = "small", root_gib: int = 2) -> list[str]:
    servers = [
        Server(
            project_id="p",
            name=f"s{i}",
            flavor_id=flavor,
            image_id="i",
            availability_zone="lab-1a",
            vpc_id="v",
            root_volume_size=root_gib,
            status=BUILD,
            task_state=SPAWNING,
        )
        for i in range(count)
    ]
    with session_scope(ctx.engine) as session:
        session.add_all(servers)
    return [s.id for s in servers]


def _counters(ctx: ControllerContext) -> dict[str, Usage]:
    with Session(ctx.engine) as session:
        return {
            h.id: Usage(h.claimed_vcpus, h.claimed_ram_mib, h.claimed_disk_gib, h.claimed_servers)
            for h in session.exec(select(Host)).all()
        }


def _summed(ctx: ControllerContext) -> dict[str, Usage]:
    """What the live servers claim per host, summed the slow way."""
    totals: dict[str, Usage] = {}
    with Session(ctx.engine) as session:
        hosts = session.exec(select(Host.id)).all()
        for host_id in hosts:
            rows = session.exec(
                select(Flavor.vcpus, Flavor.ram_mib, Server.root_volume_size)
                .join(Server, col(Server.flavor_id) == col(Flavor.id))
                .where(Server.host_id == host_id, Server.status != DELETED)
            ).all()
            totals[host_id] = Usage(
                sum(r[0] for r in rows), sum(r[1] for r in rows), sum(r[2] for r in rows), len(rows)
            )
    return totals


def _claim_all(ctx: ControllerContext, server_ids: list[str]) -> dict[str, Any]:
    barrier = threading.Barrier(len(server_ids))
    results: dict[str, Any] = {}

    def claim(sid: str) -> None:
        barrier.wait()
        results[sid] = claim_host(ctx, sid, any_zone=True)

    threads = [threading.Thread(target=claim, args=(sid,)) for sid in server_ids]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_parallel_claims_keep_the_counters_exact_and_within_capacity(ctx: ControllerContext) -> None:
    # 2048 + 1024 + 512 MiB hold 14 servers of 256 MiB; 24 ask at once.
    _hosts(ctx, ("a", 2048), ("b", 1024), ("c", 512))
    server_ids = _building(ctx, 24)
    results = _claim_all(ctx, server_ids)

    placed = [r.host_id for r in results.values() if r.host_id]
    assert sorted(placed) == ["a"] * 8 + ["b"] * 4 + ["c"] * 2
    refused = [r.no_valid_host for r in results.values() if r.no_valid_host]
    assert len(refused) == 10 and all("needs 256 MiB RAM, 0 free" in r.message() for r in refused)
    assert (
        _counters(ctx)
        == _summed(ctx)
        == {
            "a": Usage(8, 2048, 16, 8),
            "b": Usage(4, 1024, 8, 4),
            "c": Usage(2, 512, 4, 2),
        }
    )
    with session_scope(ctx.engine) as session:
        assert host_usage.recompute(session) == []


def test_delete_free_and_undone_resize_give_back_the_claim(ctx: ControllerContext) -> None:
    _hosts(ctx, ("a", 4096))
    deleted, freed, resized = _building(ctx, 3)
    for sid in (deleted, freed, resized):
        assert claim_host(ctx, sid, any_zone=True).host_id == "a"
    assert _counters(ctx)["a"] == Usage(3, 768, 6, 3)

    with session_scope(ctx.engine) as session:  # the create job's end: ACTIVE changes no claim
        assert _land(session, resized, SPAWNING, {"status": "ACTIVE"})
        assert _land(session, freed, SPAWNING, {"status": "ERROR", "host_id": None})
        assert _land(session, deleted, SPAWNING, {"status": DELETED, "deleted_at": utcnow()})
    assert _counters(ctx)["a"] == Usage(1, 256, 2, 1)

    # A resize request grows the claim by the difference; the job's failure puts the old flavor back.
    with session_scope(ctx.engine) as session:
        session.exec(  # type: ignore[call-overload]
            update(Server)
            .where(col(Server.id) == resized)
            .values(flavor_id="large", root_volume_size=5, task_state="resize_prep")
        )
        assert host_usage.take(session, "a", Usage(1, 768, 3, 0), _policy())
    assert _counters(ctx)["a"] == Usage(2, 1024, 5, 1) == _summed(ctx)["a"]
    with session_scope(ctx.engine) as session:
        back = {"status": "ACTIVE", "flavor_id": "small", "root_volume_size": 2}
        assert _land(session, resized, "resize_prep", back)
    assert _counters(ctx)["a"] == Usage(1, 256, 2, 1) == _summed(ctx)["a"]
    # A landing that finds the server out of its task changes nothing, counters included.
    with session_scope(ctx.engine) as session:
        assert not _land(session, resized, SPAWNING, {"status": DELETED})
    assert _counters(ctx)["a"] == Usage(1, 256, 2, 1)


def test_take_refuses_growth_past_capacity_and_changes_nothing(ctx: ControllerContext) -> None:
    _hosts(ctx, ("a", 1024))
    with session_scope(ctx.engine) as session:
        assert host_usage.take(session, "a", Usage(30, 1000, 50, 1), _policy())
        assert not host_usage.take(session, "a", Usage(1, 25, 1, 1), _policy())  # RAM: 1025 > 1024
        assert not host_usage.take(session, "a", Usage(3, 0, 0, 0), _policy())  # vCPUs: 33 > 8 x 4
        assert host_usage.take(session, "a", Usage(-30, 24, -50, 0), _policy())  # only growth is checked
    assert _counters(ctx)["a"] == Usage(0, 1024, 0, 1)


def test_the_reconciler_heals_drifted_counters(ctx: ControllerContext) -> None:
    _hosts(ctx, ("a", 4096), ("b", 4096))
    for sid in _building(ctx, 4):
        assert claim_host(ctx, sid, any_zone=True).host_id is not None
    right = _counters(ctx)
    assert right == _summed(ctx)
    with session_scope(ctx.engine) as session:  # drift, as a write path that forgot the counters would leave
        session.exec(  # type: ignore[call-overload]
            update(Host).where(col(Host.id) == "a").values(claimed_ram_mib=0, claimed_servers=7)
        )
    report = run_once(ctx)
    assert report.usage_healed == ["a"]
    assert _counters(ctx) == right
    assert run_once(ctx).usage_healed == []


def _policy() -> SchedulerPolicy:
    return SchedulerPolicy()
