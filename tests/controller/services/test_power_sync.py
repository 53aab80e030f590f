"""Heartbeat power reports move settled servers between ACTIVE and SHUTOFF, and nothing else."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from sqlmodel import Session

from agent.schemas import ServerState
from controller.db import create_schema, make_engine, session_scope
from controller.models.common import utcnow
from controller.models.server import Server
from controller.services.power_sync import apply_power_report


def _server(status: str, *, task: str | None = None, age: float = 60, host: str = "h1") -> Server:
    return Server(
        project_id="p",
        name="s",
        status=status,
        task_state=task,
        flavor_id="f",
        image_id="i",
        host_id=host,
        availability_zone="az",
        vpc_id="v",
        root_volume_size=1,
        updated_at=utcnow() - timedelta(seconds=age),
    )


def test_only_settled_servers_on_the_reporting_host_follow_the_guest(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    create_schema(engine)
    rows = {
        "powered_off": _server("ACTIVE"),
        "started": _server("SHUTOFF"),
        "busy": _server("ACTIVE", task="rebooting"),
        "fresh": _server("ACTIVE", age=1),
        "elsewhere": _server("ACTIVE", host="h2"),
        "building": _server("BUILD"),
    }
    with session_scope(engine) as session:
        for row in rows.values():
            session.add(row)
    reports = [ServerState(id=rows["started"].id, power="running")] + [
        ServerState(id=rows[k].id, power="shutoff")
        for k in ("powered_off", "busy", "fresh", "elsewhere", "building")
    ]
    with session_scope(engine) as session:
        assert apply_power_report(session, "h1", reports) == 2
    with Session(engine) as session:
        status = {k: session.get(Server, r.id).status for k, r in rows.items()}  # type: ignore[union-attr]
    assert status == {
        "powered_off": "SHUTOFF",
        "started": "ACTIVE",
        "busy": "ACTIVE",
        "fresh": "ACTIVE",
        "elsewhere": "ACTIVE",
        "building": "BUILD",
    }
    engine.dispose()


def test_a_destroyed_or_crashed_guest_is_shutoff_after_the_configured_settle_window(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    create_schema(engine)
    destroyed, crashed, fresh = _server("ACTIVE", age=6), _server("ACTIVE", age=6), _server("ACTIVE", age=1)
    with session_scope(engine) as session:
        session.add_all([destroyed, crashed, fresh])
    reports = [
        ServerState(id=destroyed.id, power="shutoff"),  # what libvirt says after `virsh destroy`
        ServerState(id=crashed.id, power="crashed"),
        ServerState(id=fresh.id, power="shutoff"),
    ]
    with session_scope(engine) as session:
        assert apply_power_report(session, "h1", reports, settle=timedelta(seconds=5)) == 2
    with Session(engine) as session:
        status = [session.get(Server, r.id).status for r in (destroyed, crashed, fresh)]  # type: ignore[union-attr]
    assert status == ["SHUTOFF", "SHUTOFF", "ACTIVE"]
    engine.dispose()
