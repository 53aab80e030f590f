"""Volumes that move between hosts: attaching an available volume to a server on another host of its zone moves
its file there (the source exports it, the target fetches it over HTTP), through the official SDKs against a
real controller and two real agents (libvirt's test driver). qemu-io and qemu-img on the hosts' files are the
oracles for the data."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from huaweicloudsdkecs.v2 import BatchStopServersOption, BatchStopServersRequest, BatchStopServersRequestBody
from huaweicloudsdkecs.v2 import ServerId as EcsServerId
from sqlmodel import Session

from agent import volume_moves as agent_volume_moves
from agent.api_token import load_or_create
from agent.client import AgentCallError, AgentClient
from agent.schemas import VolumeFetch
from controller.cli.client import ApiClient, Credentials
from controller.models.host import Host
from controller.models.server import Server
from controller.models.volume import Volume
from controller.services.hosts import host_state
from tests.agent.storage.test_snapshots import holds_pattern, same_data, write_pattern
from tests.controller.api.helpers import expect_error
from tests.controller.api.server_helpers import create_and_wait, make_net, server, wait_job
from tests.controller.api.test_snapshots import rows
from tests.controller.api.test_volumes import (
    attach,
    create_volume,
    detach,
    evs_client,
    show_volume,
    wait_volume,
)

WAIT_S = 180.0
HOST_DEAD_S = 4.0


@pytest.fixture
def api_settings(seed_image_file: Path) -> dict[str, Any]:
    return {"seed_image": seed_image_file, "host_dead_seconds": HOST_DEAD_S}


def admin_post(api: Any, path: str, body: dict[str, Any] | None = None) -> None:
    with ApiClient(Credentials(api.endpoint, api.ak, api.sk, api.project_id)) as client:
        client.post(path, body or {})


def server_on(api: Any, net: Any, name: str, host: Any, others: list[Any]) -> str:
    """A stopped server placed on `host` (the other hosts disabled meanwhile)."""
    ecs = api.ecs()
    for other in others:
        admin_post(api, f"/v1/admin/hosts/{other.host_id}/disable", {"reason": f"place {name}"})
    (server_id,), job = create_and_wait(ecs, server(net, name=name))
    assert job.status == "SUCCESS", job
    for other in others:
        admin_post(api, f"/v1/admin/hosts/{other.host_id}/enable")
    body = BatchStopServersRequestBody(os_stop=BatchStopServersOption(servers=[EcsServerId(id=server_id)]))
    assert (
        wait_job(ecs, ecs.batch_stop_servers(BatchStopServersRequest(body=body)).job_id).status == "SUCCESS"
    )
    assert db_row(api, Server, server_id).host_id == host.host_id
    return server_id


def db_row(api: Any, model: Any, row_id: str) -> Any:
    with Session(api.ctx.engine) as session:
        found = session.get(model, row_id)
    assert found is not None
    return found


def volume_file(host: Any, volume_id: str) -> Path:
    return Path(host.settings.state_dir) / "volumes" / f"{volume_id}.qcow2"


def leftovers(host: Any) -> list[str]:
    """Exports, partial downloads and volume files a move may leave on a host."""
    state = Path(host.settings.state_dir)
    found = [p for d in ("exports", "backups") if (state / d).is_dir() for p in (state / d).iterdir()]
    return sorted(str(p.relative_to(state)) for p in found)


def snapshot_of(path: Path, into: Path) -> Path:
    """An independent copy of a volume's data (qemu-img), to compare the moved file with."""
    subprocess.run(["qemu-img", "convert", "-O", "qcow2", str(path), str(into)], check=True)
    return into


def wait_host(api: Any, host: Any, state: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while host_state(db_row(api, Host, host.host_id), HOST_DEAD_S) != state:
        assert time.monotonic() < deadline, f"host {host.host_id} never {state}"
        time.sleep(0.2)


def wait_server_status(api: Any, server_id: str, status: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while db_row(api, Server, server_id).status != status:
        assert time.monotonic() < deadline, f"server {server_id} never {status}"
        time.sleep(0.2)


def agent_secrets(api: Any, *hosts: Any) -> set[str]:
    """Every secret that opens an agent's API: the join token, each agent's API token (as the agent keeps it
    and as the controller learned it from its heartbeats)."""
    found = {api.ctx.join_token}
    for host in hosts:
        found |= {load_or_create(host.settings.state_dir), db_row(api, Host, host.host_id).agent_token}
    return found


def refused(call: Callable[[], object]) -> bool:
    try:
        call()
    except AgentCallError as exc:
        return exc.status == 401
    return False


def test_attach_moves_the_volume_to_the_servers_host_and_back(
    api: Any, agents: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    host_a, host_b = agents.start("a"), agents.start("b")
    # What the target agents are sent to fetch with (the agents run in this process).
    sent: list[VolumeFetch] = []
    real_fetch = agent_volume_moves.fetch_volume

    def recording_fetch(svc: Any, volume_id: str, request: VolumeFetch) -> Any:
        sent.append(request)
        return real_fetch(svc, volume_id, request)

    monkeypatch.setattr(agent_volume_moves, "fetch_volume", recording_fetch)
    ecs, evs = api.ecs(), evs_client(api)
    net = make_net(api)
    server_a = server_on(api, net, "on-a", host_a, [host_b])
    server_b = server_on(api, net, "on-b", host_b, [host_a])
    (volume_id,) = create_volume(evs, size=2).volume_ids
    wait_volume(evs, volume_id, "available")

    # Data written on a (the guest's writes, as qemu-io on the host file), at both ends of the volume.
    assert wait_job(ecs, attach(ecs, server_a, volume_id).job_id).status == "SUCCESS"
    on_a, on_b = volume_file(host_a, volume_id), volume_file(host_b, volume_id)
    write_pattern(on_a, 0xA5)
    write_pattern(on_a, 0x5A, offset=2 * 1024**3 - 1024**2)
    assert wait_job(ecs, detach(ecs, server_a, volume_id).job_id).status == "SUCCESS"
    reference = snapshot_of(on_a, tmp_path / "reference.qcow2")

    # The controller calls each agent with the API token the agent reported; once it has, the shared join token
    # opens neither agent (every host registered with it holds it).
    secrets = agent_secrets(api, host_a, host_b)
    assert len(secrets) == 3
    for host in (host_a, host_b):
        with AgentClient(host.url, api.ctx.join_token) as joiner:
            assert refused(joiner.host_info)

    # A rerun's view: the target already got a whole copy (agent to agent over HTTP) before a crash; the move
    # keeps that copy instead of fetching it again. The target fetches with the export's own download token.
    client_a = AgentClient(host_a.url, db_row(api, Host, host_a.host_id).agent_token)
    client_b = AgentClient(host_b.url, db_row(api, Host, host_b.host_id).agent_token)
    export = client_a.export_volume(volume_id, f"move-{volume_id}")
    url, token = client_a.export_file_url(export.id), export.download_token
    assert token not in secrets
    fetched = client_b.fetch_volume(volume_id, VolumeFetch(url=url, token=token, checksum=export.checksum))
    # That token opens nothing else on either agent.
    for host in (host_a, host_b):
        with AgentClient(host.url, token) as holder:
            assert refused(holder.host_info) and refused(lambda: holder.get_volume(volume_id))
            assert refused(lambda: holder.delete_export(export.id))
            assert refused(lambda: holder.export_volume(volume_id, "move-other"))
    assert fetched.size_gib == 2 and same_data(on_b, reference)
    # A fetch whose bytes do not hash as announced leaves nothing behind and the copy as it was.
    bad = VolumeFetch(url=url, token=token, checksum="0" * 64)
    on_b.unlink()
    with pytest.raises(AgentCallError, match="sha256"):
        client_b.fetch_volume(volume_id, bad)
    assert not on_b.exists() and leftovers(host_b) == []
    client_b.fetch_volume(volume_id, VolumeFetch(url=url, token=token, checksum=export.checksum))
    staged_inode = on_b.stat().st_ino
    client_a.close()
    client_b.close()

    sent.clear()
    job = wait_job(ecs, attach(ecs, server_b, volume_id).job_id)
    assert job.status == "SUCCESS", job
    # b was sent the export's download token (the same export again), not a secret of either agent; the
    # export is gone now, and its token with it.
    assert [(f.url, f.token) for f in sent] == [(url, token)]
    with httpx.Client(trust_env=False) as http:
        assert http.get(url, headers={"Authorization": f"Bearer {token}"}).status_code == 401
    volume = show_volume(evs, volume_id)
    assert (volume.status, [a.server_id for a in volume.attachments]) == ("in-use", [server_b])
    assert db_row(api, Volume, volume_id).host_id == host_b.host_id
    assert on_b.stat().st_ino == staged_inode  # kept, not fetched again
    assert same_data(on_b, reference) and holds_pattern(on_b, 0xA5)
    assert holds_pattern(on_b, 0x5A, offset=2 * 1024**3 - 1024**2)
    assert not on_a.exists() and leftovers(host_a) == [] and leftovers(host_b) == []

    # Written on b, moved back to a. A stale copy a failed clean-up might have left on a is replaced.
    assert wait_job(ecs, detach(ecs, server_b, volume_id).job_id).status == "SUCCESS"
    write_pattern(on_b, 0xB6, offset=1024**3)
    reference_b = snapshot_of(on_b, tmp_path / "reference-b.qcow2")
    snapshot_of(reference, on_a)  # the old data, as a copy left behind would hold it
    sent.clear()
    assert wait_job(ecs, attach(ecs, server_a, volume_id).job_id).status == "SUCCESS"
    assert db_row(api, Volume, volume_id).host_id == host_a.host_id
    (back,) = sent
    assert back.url.startswith(host_b.url) and back.token not in secrets | {token}
    assert same_data(on_a, reference_b) and holds_pattern(on_a, 0xB6, offset=1024**3)
    assert not on_b.exists() and leftovers(host_a) == [] and leftovers(host_b) == []


def test_a_move_that_fails_leaves_the_volume_on_its_host(api: Any, agents: Any, tmp_path: Path) -> None:
    host_a, host_b = agents.start("a"), agents.start("b")
    ecs, evs = api.ecs(), evs_client(api)
    net = make_net(api)
    server_a = server_on(api, net, "on-a", host_a, [host_b])
    server_b = server_on(api, net, "on-b", host_b, [host_a])
    (volume_id,) = create_volume(evs).volume_ids
    wait_volume(evs, volume_id, "available")
    assert wait_job(ecs, attach(ecs, server_a, volume_id).job_id).status == "SUCCESS"
    on_a, on_b = volume_file(host_a, volume_id), volume_file(host_b, volume_id)
    write_pattern(on_a, 0xC3)
    assert wait_job(ecs, detach(ecs, server_a, volume_id).job_id).status == "SUCCESS"
    reference = snapshot_of(on_a, tmp_path / "reference.qcow2")

    # The source host is down: refused at once, nothing changed.
    agents.stop_serving(host_a)
    wait_host(api, host_a, "down")
    before = rows(api)
    exc = expect_error(lambda: attach(ecs, server_b, volume_id), 409, "EVS.2026")
    assert host_a.host_id in exc.error_msg and "down" in exc.error_msg
    assert rows(api) == before
    agents.serve_again(host_a)
    wait_host(api, host_a, "up")

    # The target goes away in the middle of the move (after the source exported the volume): the job fails
    # with the reason, the volume is available on a with its data, and b has nothing.
    agents.stop_serving(host_b)
    job = wait_job(ecs, attach(ecs, server_b, volume_id).job_id)
    assert job.status == "FAIL"
    assert host_b.host_id in job.fail_reason and volume_id in job.fail_reason, job.fail_reason
    volume = show_volume(evs, volume_id)
    assert (volume.status, volume.attachments) == ("available", [])
    assert db_row(api, Volume, volume_id).host_id == host_a.host_id
    assert same_data(on_a, reference) and holds_pattern(on_a, 0xC3)
    assert leftovers(host_a) == []  # the export was removed
    assert not on_b.exists() and leftovers(host_b) == []

    # Once b is back the same attach moves it.
    agents.serve_again(host_b)
    wait_host(api, host_b, "up")
    wait_server_status(api, server_b, "SHUTOFF")
    job = wait_job(ecs, attach(ecs, server_b, volume_id).job_id)
    assert job.status == "SUCCESS", job
    assert same_data(on_b, reference) and not on_a.exists()
