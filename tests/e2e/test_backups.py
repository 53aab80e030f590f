"""CBR backups on a real guest that keeps writing: a whole-server backup taken while a loop in the guest writes
a counter to its root disk and to its data volume, restored onto the server; a new volume from the volume's
disk backup; a restore onto an attached volume refused; and an agent killed with SIGKILL in the middle of a
backup.

The story, on one server with one data volume:

1. Data written before any backup: a random file on the root filesystem and random blocks on the volume; their
   sha256 over SSH are the oracle for every restore.
2. **kill -9 mid-backup.** A volume backup of the attached volume: the moment its copy is being staged (the
   hidden partial file libvirt's backup job writes appears under the agent's `backups/`), the agent is killed and
   started again the way `labcloud up` does. The backup ends `available` (the retried call aborted the dead
   agent's libvirt job and copied again) or `error` with a reason; the volume's data is intact (checksum in the
   guest) and no staged or partial file is left. Then once more, killed while the staged copy is being uploaded:
   again a defined end, nothing left in staging, no partial object in the controller's backup store.
3. **Crash-consistent whole-server backup.** A loop in the guest writes an increasing counter, first to the
   volume and then to a file on the root disk, syncing each; a server backup is taken while it runs.
4. Different data is written, then the server backup is restored onto the server (every disk, started again):
   the files written before the backup read back with their checksums, and the two counters are equal or the
   volume's is one ahead, because both disks were copied from one instant.
5. A new volume from the volume's disk backup (a child of the server backup), attached to the server, reads the
   checksum of the data written before the backup.
6. Restoring a volume backup onto the attached volume is refused with a 4xx, and nothing changes.
7. Detached and overwritten, the volume takes its volume backup back (restore): attached again, the guest reads
   the checksum of the data written before the backup.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paramiko
import pytest
from huaweicloudsdkcbr.v1 import (
    BackupRestoreServerMapping,
    CbrClient,
    CheckpointParam,
    CreateCheckpointRequest,
    ListBackupsRequest,
    ListOpLogsRequest,
    ShowBackupRequest,
    ShowCheckpointRequest,
    VaultBackup,
    VaultBackupReq,
)
from huaweicloudsdkcore.auth.credentials import BasicCredentials
from huaweicloudsdkcore.exceptions.exceptions import ClientRequestException
from huaweicloudsdkcore.http.http_config import HttpConfig
from huaweicloudsdkevs.v2 import ShowVolumeRequest

from tests.controller.api.test_backups import make_vault, restore
from tests.e2e import journey
from tests.e2e.test_snapshots import new_volume
from tests.e2e.test_volumes import WAIT_S, attach, detach, evs_client, guest, wait_in_guest
from tests.support import ssh
from tests.support.cloud import InNamespace

pytestmark = pytest.mark.e2e
log = logging.getLogger(__name__)

VOLUME_DATA_MIB = 48  # written before the backups; also what makes a copy last long enough to be killed in
COUNTER_SECTOR = 128 * 1024  # the volume's counter lives at 64 MiB, past the data
ROOT_FILE, ROOT_COUNTER = "/root/before.bin", "/root/counter"
POLL_S = 0.002
UPLOAD_TRIES = 10  # backups taken until one is caught mid-upload

# Each round writes the next number to the volume, then to the root disk, syncing both; so at any instant the
# volume holds the same number as the root disk or the one after it.
WRITER = (
    "i=0; while true; do i=$((i+1)); "
    f"echo $i | dd of=/dev/vdb bs=512 seek={COUNTER_SECTOR} count=1 conv=sync,fsync 2>/dev/null; "
    f"echo $i | dd of={ROOT_COUNTER} bs=512 count=1 conv=sync,notrunc,fsync 2>/dev/null; "
    "done"
)


def cbr_client(cloud: Any) -> CbrClient:
    client = (
        CbrClient.new_builder()
        .with_http_config(HttpConfig.get_default_config())
        .with_credentials(BasicCredentials(cloud.ak, cloud.sk, cloud.project_id))
        .with_endpoints([cloud.endpoint])
        .build()
    )
    return InNamespace(client, cloud.ns)  # type: ignore[return-value]


def _wait(what: str, check: Callable[[], bool], poll: float = 0.5) -> None:
    deadline = time.monotonic() + WAIT_S
    while not check():
        assert time.monotonic() < deadline, f"still waiting for {what} after {WAIT_S} s"
        time.sleep(poll)


def start_checkpoint(cbr: CbrClient, vault_id: str, name: str) -> str:
    body = VaultBackupReq(checkpoint=VaultBackup(vault_id=vault_id, parameters=CheckpointParam(name=name)))
    return str(cbr.create_checkpoint(CreateCheckpointRequest(body=body)).checkpoint.id)


def checkpoint_status(cbr: CbrClient, checkpoint_id: str) -> str:
    return str(cbr.show_checkpoint(ShowCheckpointRequest(checkpoint_id=checkpoint_id)).checkpoint.status)


def finished_backup(cbr: CbrClient, checkpoint_id: str) -> Any:
    """Wait for the checkpoint to end; its one top-level backup."""
    _wait("the checkpoint to end", lambda: checkpoint_status(cbr, checkpoint_id) != "protecting")
    listed = cbr.list_backups(ListBackupsRequest(checkpoint_id=checkpoint_id)).backups
    (top,) = [b for b in listed if not b.parent_id]
    return top


def catch_uploading(cbr: CbrClient, vault_id: str, store: Path) -> str:
    """A checkpoint whose staged copy is being uploaded right now (the store's hidden partial object is there).

    The upload of a few dozen MiB takes a fraction of a second, which a busy machine can let pass between two
    looks; a backup that ends unseen is simply taken again."""
    for attempt in range(UPLOAD_TRIES):
        checkpoint_id = start_checkpoint(cbr, vault_id, f"killed-upload-{attempt}")
        deadline = time.monotonic() + WAIT_S
        asked = time.monotonic()
        while not [p.name for p in store.iterdir() if p.name.startswith(".")]:
            assert time.monotonic() < deadline, "the upload never started"
            if time.monotonic() - asked > 0.5:  # an API call, so not at every look
                if checkpoint_status(cbr, checkpoint_id) != "protecting":
                    break
                asked = time.monotonic()
            time.sleep(POLL_S)
        else:
            return checkpoint_id
        log.info("backup %s ended before its upload was seen; again", checkpoint_id)
    pytest.fail(f"no upload was seen in {UPLOAD_TRIES} backups")


def sha(client: paramiko.SSHClient, command: str) -> str:
    return guest(client, f"{command} | sha256sum").split()[0]


def volume_data(client: paramiko.SSHClient, device: str = "vdb") -> str:
    return sha(client, f"dd if=/dev/{device} bs=1M count={VOLUME_DATA_MIB} 2>/dev/null")


def counters(client: paramiko.SSHClient) -> tuple[int, int]:
    """(root disk's counter, volume's counter)."""
    root = guest(client, f"head -c 512 {ROOT_COUNTER} | tr -d '\\000'")
    volume = guest(client, f"dd if=/dev/vdb bs=512 skip={COUNTER_SECTOR} count=1 2>/dev/null | tr -d '\\000'")
    return int(root or 0), int(volume or 0)


def staging_files(home: Path) -> list[str]:
    directory = home / "agent" / "backups"
    return sorted(p.name for p in directory.iterdir()) if directory.is_dir() else []


def _pid(home: Path, name: str) -> int:
    return int((home / "run" / f"{name}.pid").read_text().split()[0])


def _gone(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[0] in ("Z", "X")


def test_server_backup_while_writing_restore_volume_from_backup_and_agent_killed_mid_backup(
    cloud: Any, keypair: tuple[str, Path]
) -> None:
    public_key, key_path = keypair
    home = Path(cloud.home)
    ecs, vpc, ims, evs, cbr = cloud.ecs(), cloud.vpc(), cloud.ims(), evs_client(cloud), cbr_client(cloud)
    journey.import_keypair(ecs, "bk-key", public_key)
    vpc_id, subnet_id, sg_id = journey.create_network(
        vpc, name="bk", cidr="10.36.0.0/16", subnet_cidr="10.36.1.0/24", gateway="10.36.1.1"
    )
    job_id, (server_id,) = journey.create_servers(
        ecs,
        name="bk",
        image_id=journey.small_image_id(ims),
        flavor_id=journey.smallest_flavor_id(ecs),
        vpc_id=vpc_id,
        subnet_id=subnet_id,
        sg_id=sg_id,
        key_name="bk-key",
    )
    assert journey.wait_job(ecs, job_id).status == "SUCCESS"
    ip = journey.fixed_ip(journey.show(ecs, server_id))
    volume_id = new_volume(evs, "data")

    # --- 1. data written before any backup ---
    client = ssh.wait_for_ssh(cloud.ns, ip, key_path, timeout=WAIT_S)
    try:
        attach(ecs, server_id, volume_id)
        wait_in_guest(client, "test -e /sys/block/vdb", "the hot-plugged vdb")
        guest(client, f"dd if=/dev/urandom of=/dev/vdb bs=1M count={VOLUME_DATA_MIB} 2>/dev/null && sync")
        guest(client, f"dd if=/dev/urandom of={ROOT_FILE} bs=1M count=4 2>/dev/null && sync")
        guest(client, f"dd if=/dev/zero of={ROOT_COUNTER} bs=512 count=1 2>/dev/null && sync")
        volume_sum, root_sum = volume_data(client), sha(client, f"cat {ROOT_FILE}")
    finally:
        client.close()

    # --- 2. the agent killed while the volume's copy is being staged ---
    volume_vault = make_vault(cbr, "disk", [(volume_id, "OS::Cinder::Volume")], name="volumes")
    agent = _pid(home, "agent")
    killed_checkpoint = start_checkpoint(cbr, volume_vault.id, "killed")
    deadline = time.monotonic() + WAIT_S
    while not [name for name in staging_files(home) if name.endswith(".part")]:
        assert time.monotonic() < deadline, "the backup's copy never started"
        time.sleep(POLL_S)
    os.kill(agent, signal.SIGKILL)
    staged_at_kill = staging_files(home)
    status_at_kill = checkpoint_status(cbr, killed_checkpoint)
    _wait("the agent to die", lambda: _gone(agent), poll=0.01)
    log.info("agent killed mid-backup; staging held %s, checkpoint %s", staged_at_kill, status_at_kill)
    assert status_at_kill == "protecting"
    assert not [n for n in staged_at_kill if not n.endswith(".part")], "the copy was already staged"
    cloud.run("up")
    killed = finished_backup(cbr, killed_checkpoint)
    ops = cbr.list_op_logs(ListOpLogsRequest(operation_type="backup", resource_id=volume_id)).operation_logs
    (op,) = ops
    log.info("the killed backup ended %s (task %s: %s)", killed.status, op.status, op.error_info)
    assert killed.status in ("available", "error")
    if killed.status == "error":  # a defined end, with the reason in its task
        assert op.status == "failed" and op.error_info.message
        assert checkpoint_status(cbr, killed_checkpoint) == "error"
    else:
        assert (op.status, op.extra_info.common.progress) == ("success", 100)
    assert staging_files(home) == []

    # ... and again while the staged copy is being uploaded: the store is writing its hidden partial object.
    agent, store = _pid(home, "agent"), home / "backups"
    upload_checkpoint = catch_uploading(cbr, volume_vault.id, store)
    os.kill(agent, signal.SIGKILL)
    in_store_at_kill = sorted(p.name for p in store.iterdir())
    status_at_kill = checkpoint_status(cbr, upload_checkpoint)
    _wait("the agent to die", lambda: _gone(agent), poll=0.01)
    log.info("agent killed while uploading; the store held %s", in_store_at_kill)
    assert status_at_kill == "protecting"
    cloud.run("up")
    uploaded = finished_backup(cbr, upload_checkpoint)
    log.info("the backup killed while uploading ended %s", uploaded.status)
    assert uploaded.status in ("available", "error")
    assert staging_files(home) == []
    assert not [p.name for p in store.iterdir() if p.name.startswith(".")], "the store kept a partial upload"
    if uploaded.status == "available":
        assert (store / f"{uploaded.id}.qcow2").is_file()

    client = ssh.wait_for_ssh(cloud.ns, ip, key_path, timeout=WAIT_S)
    try:
        assert volume_data(client) == volume_sum  # the volume kept its data through the kills

        # --- 3. a whole-server backup while the guest writes ---
        guest(client, f"setsid sh -c '{WRITER}' >/dev/null 2>&1 </dev/null &")
        _wait("the writer to count", lambda: min(counters(client)) > 0)
        server_vault = make_vault(cbr, "server", [(server_id, "OS::Nova::Server")], name="servers")
        before = counters(client)
        top = finished_backup(cbr, start_checkpoint(cbr, server_vault.id, "live"))
        after = counters(client)
        assert top.status == "available", top
        log.info("server backup %s taken while the counters went from %s to %s", top.id, before, after)
        assert after[0] > before[0], "the guest did not write during the backup"
        assert staging_files(home) == []
        volume_bk = next(c for c in top.children if c.resource_id == volume_id)

        # --- 4. other data, then the server backup restored onto the server ---
        guest(client, f"dd if=/dev/urandom of={ROOT_FILE} bs=1M count=4 2>/dev/null && sync")
        guest(client, "dd if=/dev/urandom of=/dev/vdb bs=1M count=4 2>/dev/null && sync")
        assert sha(client, f"cat {ROOT_FILE}") != root_sum and volume_data(client) != volume_sum
    finally:
        client.close()
    mappings = [BackupRestoreServerMapping(backup_id=c.id, volume_id=c.resource_id) for c in top.children]
    restore(cbr, top.id, server_id=server_id, mappings=mappings, power_on=True)
    _wait(
        "the restore to end",
        lambda: cbr.show_backup(ShowBackupRequest(backup_id=top.id)).backup.status != "restoring",
    )
    (op,) = cbr.list_op_logs(
        ListOpLogsRequest(operation_type="restore", resource_id=server_id)
    ).operation_logs
    assert (op.status, op.extra_info.common.progress) == ("success", 100), op.extra_info
    _wait("the server ACTIVE", lambda: journey.show(ecs, server_id).status == "ACTIVE")
    client = ssh.wait_for_ssh(cloud.ns, ip, key_path, timeout=WAIT_S)
    try:
        wait_in_guest(client, "test -e /sys/block/vdb", "the volume after the restore")
        assert sha(client, f"cat {ROOT_FILE}") == root_sum
        assert volume_data(client) == volume_sum
        root_count, volume_count = counters(client)
        log.info(
            "restored counters: root %d, volume %d (taken between %s and %s)",
            root_count,
            volume_count,
            before,
            after,
        )
        assert before[0] <= root_count <= after[0]
        assert volume_count - root_count in (0, 1), "the disks were not copied from one instant"

        # --- 5. a new volume from the volume's disk backup ---
        copy_id = new_volume(evs, "from-backup", backup_id=volume_bk.id)
        attach(ecs, server_id, copy_id)
        wait_in_guest(client, "test -e /sys/block/vdc", "the volume made from the backup")
        assert volume_data(client, "vdc") == volume_sum
    finally:
        client.close()

    # --- 6. a volume backup cannot be restored onto its attached volume ---
    if killed.status != "available":
        killed = finished_backup(cbr, start_checkpoint(cbr, volume_vault.id, "again"))
        assert killed.status == "available", killed
    restores = len(cbr.list_op_logs(ListOpLogsRequest(operation_type="restore")).operation_logs)
    with pytest.raises(ClientRequestException) as refused:
        restore(cbr, killed.id, volume_id=volume_id)
    assert 400 <= refused.value.status_code < 500
    assert "detach" in refused.value.error_msg
    assert evs.show_volume(ShowVolumeRequest(volume_id=volume_id)).volume.status == "in-use"
    assert cbr.show_backup(ShowBackupRequest(backup_id=killed.id)).backup.status == "available"
    assert len(cbr.list_op_logs(ListOpLogsRequest(operation_type="restore")).operation_logs) == restores

    # --- 7. detached, the volume takes its volume backup back: the guest reads the data from before ---
    client = ssh.wait_for_ssh(cloud.ns, ip, key_path, timeout=WAIT_S)
    try:
        guest(client, "dd if=/dev/urandom of=/dev/vdb bs=1M count=4 2>/dev/null && sync")
        assert volume_data(client) != volume_sum
        detach(ecs, server_id, volume_id)
        wait_in_guest(client, "test ! -e /sys/block/vdb", "vdb go away")
        restore(cbr, killed.id, volume_id=volume_id)
        _wait(
            "the volume restore to end",
            lambda: cbr.show_backup(ShowBackupRequest(backup_id=killed.id)).backup.status != "restoring",
        )
        assert cbr.show_backup(ShowBackupRequest(backup_id=killed.id)).backup.status == "available"
        _wait(
            "the volume available",
            lambda: evs.show_volume(ShowVolumeRequest(volume_id=volume_id)).volume.status == "available",
        )
        attach(ecs, server_id, volume_id)
        wait_in_guest(client, "test -e /sys/block/vdb", "the restored volume")
        assert volume_data(client) == volume_sum
    finally:
        client.close()

    assert journey.wait_job(ecs, journey.delete(ecs, [server_id])).status == "SUCCESS"
