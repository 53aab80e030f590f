"""The reconciler against a real controller and real agents on libvirt's test driver.

Drift is made behind labcloud's back on the agent's own libvirt connection (the test driver keeps its domains per
connection, so a second connection would see an empty host). Tests call `run_once` themselves; they wait only
where a heartbeat has to carry the news, with generous timeouts.
"""

from __future__ import annotations

import subprocess
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import libvirt
import pytest
from huaweicloudsdkecs.v2 import ShowServerRequest
from sqlalchemy import update
from sqlmodel import col

from agent.storage.layout import instance_paths, volume_path
from agent.virt.domain_xml import METADATA_NS, domain_name
from controller.db import session_scope
from controller.models.common import utcnow
from controller.models.host import Host
from controller.models.job import INIT, RUNNING, Job
from controller.models.server import Server
from controller.models.volume import Volume
from controller.reconciler import (
    DOMAIN_MISSING,
    HOST_DOWN,
    TASK_TIMEOUT,
    Orphan,
    OrphanVolume,
    Report,
    run_once,
)
from controller.services.hosts import host_state
from tests.controller.api.server_helpers import create_and_wait, make_net, row, server
from tests.support.waiting import wait_for


@pytest.fixture
def api_settings(seed_image_file: Path) -> dict[str, Any]:
    # No settle window: a heartbeat reports a guest's power change at once (nothing else acts on these servers).
    return {"seed_image": seed_image_file, "power_settle_seconds": 0.0}


def boot(api: Any, count: int = 1) -> list[str]:
    net = make_net(api)
    ids, job = create_and_wait(api.ecs(), server(net, count=count))
    assert job.status == "SUCCESS", job
    return list(ids)


def conn(agent_host: Any) -> libvirt.virConnect:
    """The agent's own libvirt connection: the only one that sees its test-driver domains."""
    return agent_host.service._host._connection()


def reconcile_until(api: Any, check: Callable[[Report], bool]) -> Report:
    """Run passes until one satisfies `check` (a heartbeat landing mid-pass defers a server to the next pass)."""
    found: list[Report] = []

    def one_pass() -> bool:
        found.append(run_once(api.ctx))
        return check(found[-1])

    wait_for("a reconciliation pass", one_pass)
    return found[-1]


def show(api: Any, server_id: str) -> Any:
    return api.ecs().show_server(ShowServerRequest(server_id=server_id)).server


def test_a_domain_destroyed_behind_our_back_shows_shutoff(api, agent_host) -> None:  # type: ignore[no-untyped-def]
    (sid,) = boot(api)
    conn(agent_host).lookupByName(domain_name(sid)).destroy()
    wait_for("SHUTOFF from a heartbeat", lambda: row(api, sid).status == "SHUTOFF")
    assert show(api, sid).status == "SHUTOFF"
    report = run_once(api.ctx)  # nothing left for the reconciler: the domain exists, just powered off
    assert not report.changed and report.orphans == []
    assert row(api, sid).status == "SHUTOFF"


def test_an_undefined_domain_is_error_with_a_fault_then_recovers(api, agent_host) -> None:  # type: ignore[no-untyped-def]
    (sid,) = boot(api)
    dom = conn(agent_host).lookupByName(domain_name(sid))
    xml = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    dom.destroy()
    dom.undefine()

    reconcile_until(api, lambda r: sid in r.missing)
    shown = show(api, sid)
    assert shown.status == "ERROR"
    assert shown.fault["details"] == DOMAIN_MISSING
    assert f"host {agent_host.host_id} reports no domain" in shown.fault["message"]
    assert run_once(api.ctx).missing == []  # said once

    conn(agent_host).defineXML(xml).create()  # the domain is back (an operator restored it)
    report = run_once(api.ctx)
    assert report.recovered == [sid]
    shown = show(api, sid)
    assert shown.status == "ACTIVE"
    assert shown.fault is None
    assert row(api, sid).fault_code is None


def _orphan_xml(template: str, orphan_id: str) -> str:
    """A labcloud-looking domain for a server id the database never had."""
    root = ET.fromstring(template)
    root.find("name").text = domain_name(orphan_id)  # type: ignore[union-attr]
    root.find("uuid").text = str(uuid.uuid4())  # type: ignore[union-attr]
    meta = root.find(f"metadata/{{{METADATA_NS}}}server/{{{METADATA_NS}}}id")
    assert meta is not None
    meta.text = orphan_id
    return ET.tostring(root, encoding="unicode")


def test_orphan_domains_are_reported_then_deleted_by_policy(api, agent_host) -> None:  # type: ignore[no-untyped-def]
    (sid,) = boot(api)
    libvirt_conn = conn(agent_host)
    template = libvirt_conn.lookupByName(domain_name(sid)).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    orphan_id = str(uuid.uuid4())
    libvirt_conn.defineXML(_orphan_xml(template, orphan_id))

    assert api.ctx.settings.reconcile_orphans == "report"
    report = run_once(api.ctx)
    assert report.orphans == [Orphan(agent_host.host_id, orphan_id, "shutoff")]
    assert report.orphans_deleted == [] and not report.changed
    libvirt_conn.lookupByName(domain_name(orphan_id))  # still there

    api.ctx.settings.reconcile_orphans = "delete"
    report = run_once(api.ctx)
    assert report.orphans_deleted == [orphan_id]
    with pytest.raises(libvirt.libvirtError):
        libvirt_conn.lookupByName(domain_name(orphan_id))
    assert libvirt_conn.lookupByName(domain_name(sid)).isActive()  # the owned server is untouched
    assert row(api, sid).status == "ACTIVE"
    assert run_once(api.ctx).orphans == []


def test_orphan_disks_are_reported_then_deleted_by_policy(api, agent_host) -> None:  # type: ignore[no-untyped-def]
    """A server's disks left on the host with no domain and no spec (a server long deleted, files copied in
    behind labcloud's back) are an orphan like a domain: reported, then removed with `delete`."""
    (sid,) = boot(api)
    orphan_id = str(uuid.uuid4())
    leftover = instance_paths(agent_host.settings.state_dir, orphan_id)
    leftover.dir.mkdir()
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(leftover.root_disk), "1G"], check=True)

    assert api.ctx.settings.reconcile_orphans == "report"
    report = run_once(api.ctx)
    assert report.orphans == [Orphan(agent_host.host_id, orphan_id, "missing")]
    assert report.orphans_deleted == [] and not report.changed
    assert leftover.root_disk.exists()

    api.ctx.settings.reconcile_orphans = "delete"
    report = run_once(api.ctx)
    assert report.orphans_deleted == [orphan_id]
    assert not leftover.dir.exists()
    assert instance_paths(agent_host.settings.state_dir, sid).root_disk.exists()  # the owned server's stays
    assert row(api, sid).status == "ACTIVE"
    assert run_once(api.ctx).orphans == []


def _volume_file(agent_host: Any, volume_id: str) -> Path:
    path = volume_path(agent_host.settings.state_dir, volume_id)
    path.parent.mkdir(exist_ok=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), "1G"], check=True)
    return path


def _volume_row(api: Any, host_id: str, status: str) -> str:
    with session_scope(api.ctx.engine) as session:
        volume = Volume(
            project_id=api.project_id, size=1, availability_zone="lab-1a", status=status, host_id=host_id
        )
        session.add(volume)
        session.flush()
        return volume.id


def test_orphan_volume_files_are_reported_then_deleted_by_policy(api, agent_host) -> None:  # type: ignore[no-untyped-def]
    """A volume file no volume placed on the host owns (an id the database never had; a stale copy of a volume
    that lives on another host) is reported, then removed with `delete`; the files of volumes placed here, and
    of a volume busy moving here, are left alone."""
    host_id = agent_host.host_id
    unknown = str(uuid.uuid4())
    stale = _volume_row(api, "another-host", "available")
    placed = _volume_row(api, host_id, "in-use")
    moving = _volume_row(api, "another-host", "attaching")
    files = {vid: _volume_file(agent_host, vid) for vid in (unknown, stale, placed, moving)}

    assert api.ctx.settings.reconcile_orphans == "report"
    report = run_once(api.ctx)
    assert sorted(report.orphan_volumes) == sorted(
        [OrphanVolume(host_id, unknown), OrphanVolume(host_id, stale)]
    )
    assert report.orphan_volumes_deleted == [] and all(f.exists() for f in files.values())

    api.ctx.settings.reconcile_orphans = "delete"
    report = run_once(api.ctx)
    assert sorted(report.orphan_volumes_deleted) == sorted([unknown, stale])
    assert [vid for vid, f in files.items() if f.exists()] == [placed, moving]
    assert run_once(api.ctx).orphan_volumes == []


def _stub_server(api: Any, status: str, task: str | None) -> str:
    """A row only (no host, no ports): what a controller that died mid-task leaves behind."""
    with session_scope(api.ctx.engine) as session:
        stub = Server(
            project_id=api.project_id,
            name="stub",
            status=status,
            task_state=task,
            flavor_id="s6.nano.1",
            image_id="none",
            availability_zone="lab-1a",
            vpc_id="none",
            root_volume_size=1,
        )
        session.add(stub)
    return stub.id


def _hold(api: Any, server_id: str, status: str, lease_age: float | None = None) -> None:
    """An unfinished job naming the server, of a kind no handler runs, so it stays as written."""
    with session_scope(api.ctx.engine) as session:
        lease = utcnow() - timedelta(seconds=lease_age) if lease_age is not None else None
        payload = {"server_id": server_id}
        session.add(
            Job(project_id=api.project_id, kind="testHold", status=status, payload=payload, lease_until=lease)
        )


def test_servers_stuck_past_the_timeout_without_a_job_become_error(api, agent_host) -> None:  # type: ignore[no-untyped-def]
    (sid,) = boot(api)
    with session_scope(api.ctx.engine) as session:  # its stop job was lost with a crashed controller
        session.exec(update(Server).where(col(Server.id) == sid).values(task_state="powering-off"))  # type: ignore[call-overload]
    building = _stub_server(api, "BUILD", "spawning")
    held = _stub_server(api, "ACTIVE", "rebooting")
    _hold(api, held, RUNNING, lease_age=3600)  # the queue re-claims an expired lease: its job, not ours
    queued = _stub_server(api, "BUILD", "spawning")
    _hold(api, queued, INIT)

    assert run_once(api.ctx).stuck == []  # nothing is past the default 600 s
    api.ctx.settings.task_timeout_seconds = 0.0
    report = run_once(api.ctx)
    assert sorted(report.stuck) == sorted([sid, building])
    shown = show(api, sid)
    assert shown.status == "ERROR"
    assert shown.fault["details"] == TASK_TIMEOUT
    assert "stuck in ACTIVE/powering-off" in shown.fault["message"]
    assert row(api, sid).task_state is None
    assert (row(api, building).status, row(api, building).fault_code) == ("ERROR", TASK_TIMEOUT)
    assert (row(api, held).status, row(api, held).task_state) == ("ACTIVE", "rebooting")
    assert (row(api, queued).status, row(api, queued).task_state) == ("BUILD", "spawning")
    assert run_once(api.ctx).stuck == []


def _host(api: Any, host_id: str) -> Host:
    with session_scope(api.ctx.engine) as session:
        host = session.get(Host, host_id)
    assert host is not None
    return host


def test_a_silent_host_shows_its_servers_error_until_it_returns(api, agents) -> None:  # type: ignore[no-untyped-def]
    host = agents.start()
    running, stopped = boot(api, count=2)
    conn(host).lookupByName(domain_name(stopped)).destroy()
    wait_for("SHUTOFF from a heartbeat", lambda: row(api, stopped).status == "SHUTOFF")

    agents.stop_serving(host)  # no API, no heartbeat; its domains live on
    dead_after = api.ctx.settings.host_dead_seconds
    with session_scope(api.ctx.engine) as session:  # as if the silence had lasted past host_dead_seconds
        session.exec(  # type: ignore[call-overload]
            update(Host)
            .where(col(Host.id) == host.host_id)
            .values(last_heartbeat=utcnow() - timedelta(seconds=dead_after + 60))
        )
    report = run_once(api.ctx)
    assert report.hosts_down == [host.host_id]
    assert sorted(report.host_down) == sorted([running, stopped])
    for sid in (running, stopped):
        shown = show(api, sid)
        assert shown.status == "ERROR"
        assert shown.host_status == "DOWN"
        assert shown.fault["details"] == HOST_DOWN
        assert f"host {host.host_id}" in shown.fault["message"] and "is down" in shown.fault["message"]
    assert run_once(api.ctx).host_down == []

    agents.serve_again(host)
    wait_for("a heartbeat", lambda: host_state(_host(api, host.host_id), dead_after) == "up")
    report = run_once(api.ctx)  # nothing else moves ERROR servers, so one pass sees both
    assert report.hosts_down == []
    assert sorted(report.recovered) == sorted([running, stopped])
    assert (show(api, running).status, show(api, stopped).status) == ("ACTIVE", "SHUTOFF")
    assert show(api, running).host_status == "UP"
    assert row(api, running).fault_code is None and row(api, stopped).fault_code is None


class TestLoop:
    @pytest.fixture
    def api_settings(self) -> dict[str, Any]:
        return {"reconcile_seconds": 0.05, "task_timeout_seconds": 0.0}

    def test_the_controller_runs_passes_on_its_own(self, api) -> None:  # type: ignore[no-untyped-def]
        stuck = _stub_server(api, "BUILD", "spawning")
        wait_for("the reconciler loop", lambda: row(api, stuck).status == "ERROR")
        assert row(api, stuck).fault_code == TASK_TIMEOUT
