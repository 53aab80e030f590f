"""CBR through the official SDK against a real controller and a real agent on libvirt's test driver (servers are
stopped, so disks are copied with qemu-img; running guests are covered in tests/e2e/test_backups.py).

Data is written into and checked in the host's disk files and the controller's backup directory with qemu-io,
independently of the code under test.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from huaweicloudsdkcbr.v1 import (
    BackupRestore,
    BackupRestoreReq,
    BackupRestoreServerMapping,
    BillingCreate,
    CbrClient,
    CheckpointParam,
    CreateCheckpointRequest,
    CreateVaultRequest,
    DeleteBackupRequest,
    DeleteVaultRequest,
    ListBackupsRequest,
    ListOpLogsRequest,
    ResourceCreate,
    RestoreBackupRequest,
    ShowBackupRequest,
    ShowCheckpointRequest,
    ShowVaultRequest,
    VaultBackup,
    VaultBackupReq,
    VaultCreate,
    VaultCreateReq,
)
from huaweicloudsdkcore.auth.credentials import BasicCredentials
from huaweicloudsdkcore.exceptions.exceptions import ClientRequestException
from huaweicloudsdkcore.http.http_config import HttpConfig
from sqlmodel import Session, func, select

from agent.storage.disks import GIB, image_info
from controller.models.backup import Backup, OperationLog, Vault
from tests.agent.storage.test_snapshots import holds_pattern, same_data, write_pattern
from tests.controller.api.helpers import expect_error
from tests.controller.api.server_helpers import wait_job
from tests.controller.api.test_isolation import new_tenant
from tests.controller.api.test_volumes import (
    JOB_TIMEOUT_S,
    attach,
    create_volume,
    detach,
    evs_client,
    show_volume,
    stopped_server,
    volume_rows,
    wait_evs_job,
    wait_volume,
)


@pytest.fixture
def api_settings(seed_image_file: Path) -> dict[str, Any]:
    return {"seed_image": seed_image_file}


def cbr_client(clients: Any) -> CbrClient:
    return (
        CbrClient.new_builder()
        .with_http_config(HttpConfig.get_default_config())
        .with_credentials(BasicCredentials(clients.ak, clients.sk, clients.project_id))
        .with_endpoints([clients.endpoint])
        .build()
    )


def make_vault(cbr: CbrClient, object_type: str, resources: list[tuple[str, str]], name: str = "v") -> Any:
    vault = VaultCreate(
        name=name,
        billing=BillingCreate(object_type=object_type, size=10, consistent_level="crash_consistent"),
        resources=[ResourceCreate(id=rid, type=rtype) for rid, rtype in resources],
    )
    return cbr.create_vault(CreateVaultRequest(body=VaultCreateReq(vault=vault))).vault


def back_up(cbr: CbrClient, vault_id: str) -> Any:
    """Back up now; wait for the checkpoint; the top-level backups it made."""
    body = VaultBackupReq(checkpoint=VaultBackup(vault_id=vault_id, parameters=CheckpointParam(name="bk")))
    checkpoint = cbr.create_checkpoint(CreateCheckpointRequest(body=body)).checkpoint
    assert checkpoint.status == "protecting"
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while (
        shown := cbr.show_checkpoint(ShowCheckpointRequest(checkpoint_id=checkpoint.id)).checkpoint
    ).status in ("protecting",):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert shown.status == "available", shown
    listed = cbr.list_backups(ListBackupsRequest(checkpoint_id=checkpoint.id)).backups
    return [b for b in listed if not b.parent_id]  # a checkpoint's listing holds the disk backups too


def wait_backup(cbr: CbrClient, backup_id: str, status: str | None) -> Any:
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while True:
        try:
            backup = cbr.show_backup(ShowBackupRequest(backup_id=backup_id)).backup
        except ClientRequestException as exc:
            if status is None and exc.status_code == 404:
                return None
            raise
        if backup.status == status:
            return backup
        assert backup.status != "error", backup
        assert time.monotonic() < deadline, f"backup {backup_id} never became {status}"
        time.sleep(0.05)


def restore(cbr: CbrClient, backup_id: str, **restore_args: Any) -> Any:
    body = BackupRestoreReq(restore=BackupRestore(**restore_args))
    return cbr.restore_backup(RestoreBackupRequest(backup_id=backup_id, body=body))


def counts(api: Any) -> tuple[int, int, int]:
    with Session(api.ctx.engine) as session:
        return tuple(  # type: ignore[return-value]
            int(session.exec(select(func.count()).select_from(table)).one())
            for table in (Vault, Backup, OperationLog)
        )


def test_server_and_volume_backups_restore_their_data(api: Any, agent_host: Any) -> None:
    ecs, evs, cbr = api.ecs(), evs_client(api), cbr_client(api)
    server_id = stopped_server(api)
    volume_id = create_volume(evs, name="data").volume_ids[0]
    wait_volume(evs, volume_id, "available")
    assert wait_job(ecs, attach(ecs, server_id, volume_id).job_id).status == "SUCCESS"
    state = agent_host.settings.state_dir
    root_file = state / "instances" / server_id / "root.qcow2"
    volume_file = state / "volumes" / f"{volume_id}.qcow2"
    write_pattern(root_file, 0x11, offset=512 * 1024 * 1024)  # past the image's partitions
    write_pattern(volume_file, 0x22)

    # A whole-server backup: one parent, a child per disk, the system disk first; data in the backup dir.
    server_vault = make_vault(cbr, "server", [(server_id, "OS::Nova::Server")], name="servers")
    (top,) = back_up(cbr, server_vault.id)
    assert (top.resource_id, top.resource_type, top.status, top.parent_id) == (
        server_id,
        "OS::Nova::Server",
        "available",
        "",
    )
    root_bk, vol_bk = top.children
    assert root_bk.extend_info.system_disk and not vol_bk.extend_info.system_disk
    assert (vol_bk.resource_id, vol_bk.parent_id) == (volume_id, top.id)
    store = api.ctx.settings.backup_store_dir
    assert holds_pattern(store / f"{root_bk.id}.qcow2", 0x11, offset=512 * 1024 * 1024)
    assert holds_pattern(store / f"{vol_bk.id}.qcow2", 0x22)
    assert not list((state / "backups").iterdir())  # staging emptied
    logs = cbr.list_op_logs(ListOpLogsRequest(operation_type="backup", resource_id=server_id)).operation_logs
    assert [(o.status, o.extra_info.common.progress) for o in logs] == [("success", 100)]
    shown = cbr.show_vault(ShowVaultRequest(vault_id=server_vault.id)).vault
    assert shown.resources[0].backup_count == 1

    # A volume backup of the attached volume (the server is stopped: copied with qemu-img).
    volume_vault = make_vault(cbr, "disk", [(volume_id, "OS::Cinder::Volume")], name="volumes")
    (vbk,) = back_up(cbr, volume_vault.id)
    assert (vbk.resource_id, vbk.children) == (volume_id, [])

    write_pattern(root_file, 0x33, offset=512 * 1024 * 1024)
    write_pattern(volume_file, 0x44)

    # Restore onto the attached volume is refused, nothing changes.
    before = counts(api)
    exc = expect_error(lambda: restore(cbr, vbk.id, volume_id=volume_id), 400, "BackupService.6203")
    assert "detach" in exc.error_msg
    assert counts(api) == before and holds_pattern(volume_file, 0x44)

    # The server backup restores both disks (the server stays stopped without power_on).
    mappings = [BackupRestoreServerMapping(backup_id=c.id, volume_id=c.resource_id) for c in top.children]
    restore(cbr, top.id, server_id=server_id, mappings=mappings, power_on=False)
    wait_backup(cbr, top.id, "available")
    assert holds_pattern(root_file, 0x11, offset=512 * 1024 * 1024) and holds_pattern(volume_file, 0x22)
    (op,) = cbr.list_op_logs(ListOpLogsRequest(operation_type="restore")).operation_logs
    assert (op.status, op.extra_info.common.progress, op.extra_info.restore.target_resource_id) == (
        "success",
        100,
        server_id,
    )

    # The volume backup restores the detached volume.
    write_pattern(volume_file, 0x55)
    assert wait_job(ecs, detach(ecs, server_id, volume_id).job_id).status == "SUCCESS"
    restore(cbr, vbk.id, volume_id=volume_id)
    wait_backup(cbr, vbk.id, "available")
    wait_volume(evs, volume_id, "available")
    assert holds_pattern(volume_file, 0x22)

    # Deleting a backup removes its data from the store; deleting a vault removes the rest.
    cbr.delete_backup(DeleteBackupRequest(backup_id=top.id))
    assert wait_backup(cbr, top.id, None) is None
    assert not (store / f"{root_bk.id}.qcow2").exists() and not (store / f"{vol_bk.id}.qcow2").exists()
    cbr.delete_vault(DeleteVaultRequest(vault_id=volume_vault.id))
    assert wait_backup(cbr, vbk.id, None) is None
    assert sorted(p.name for p in store.iterdir()) == []


def test_bad_backup_requests_change_nothing(api: Any, agent_host: Any) -> None:
    evs, cbr = evs_client(api), cbr_client(api)
    volume_id = create_volume(evs, name="data").volume_ids[0]
    wait_volume(evs, volume_id, "available")
    vault = make_vault(cbr, "disk", [(volume_id, "OS::Cinder::Volume")])
    before = counts(api)

    expect_error(lambda: make_vault(cbr, "disk", [("nope", "OS::Cinder::Volume")]), 404, "EVS.2025")
    exc = expect_error(lambda: make_vault(cbr, "tape", []), 400, "BackupService.0001")
    assert "object_type" in exc.error_msg
    exc = expect_error(
        lambda: make_vault(cbr, "server", [(volume_id, "OS::Cinder::Volume")]), 400, "BackupService.0001"
    )
    assert "OS::Nova::Server" in exc.error_msg
    expect_error(lambda: back_up(cbr, "no-such-vault"), 404, "BackupService.6101")
    expect_error(lambda: cbr.show_backup(ShowBackupRequest(backup_id="nope")), 404, "BackupService.6102")
    expect_error(lambda: restore(cbr, "nope", volume_id=volume_id), 404, "BackupService.6102")
    assert counts(api) == before

    # Another project sees none of it.
    other = cbr_client(new_tenant(api, "other"))
    expect_error(lambda: other.show_vault(ShowVaultRequest(vault_id=vault.id)), 404, "BackupService.6101")
    expect_error(lambda: back_up(other, vault.id), 404, "BackupService.6101")
    expect_error(lambda: make_vault(other, "disk", [(volume_id, "OS::Cinder::Volume")]), 404, "EVS.2025")

    # A never-attached volume backs up as an empty backup, and restores onto nothing else.
    (bk,) = back_up(cbr, vault.id)
    assert bk.status == "available"
    other_volume = create_volume(evs, name="other").volume_ids[0]
    wait_volume(evs, other_volume, "available")
    before = counts(api)
    exc = expect_error(lambda: restore(cbr, bk.id, volume_id=other_volume), 400, "BackupService.0001")
    assert "its own volume" in exc.error_msg
    assert counts(api) == before


def test_new_volumes_from_backups(api: Any, agent_host: Any) -> None:
    """EVS create with `backup_id`: a volume backup or one disk of a server backup; made at the first attach."""
    ecs, evs, cbr = api.ecs(), evs_client(api), cbr_client(api)
    server_id = stopped_server(api)
    volume_id = create_volume(evs, name="data").volume_ids[0]
    wait_volume(evs, volume_id, "available")
    assert wait_job(ecs, attach(ecs, server_id, volume_id).job_id).status == "SUCCESS"
    state = agent_host.settings.state_dir
    write_pattern(state / "volumes" / f"{volume_id}.qcow2", 0x66)
    (vbk,) = back_up(cbr, make_vault(cbr, "disk", [(volume_id, "OS::Cinder::Volume")], name="vols").id)
    (sbk,) = back_up(cbr, make_vault(cbr, "server", [(server_id, "OS::Nova::Server")], name="srv").id)
    root_bk = next(c for c in sbk.children if c.extend_info.system_disk)

    # Bad requests: 4xx, and no volume row made.
    other = evs_client(new_tenant(api, "other"))
    before = volume_rows(api)
    exc = expect_error(lambda: create_volume(evs, backup_id="nope"), 404, "BackupService.6102")
    assert "nope" in exc.error_msg
    expect_error(lambda: create_volume(other, backup_id=vbk.id), 404, "BackupService.6102")
    exc = expect_error(lambda: create_volume(evs, backup_id=sbk.id), 400, "EVS.2024")
    assert "whole-server backup" in exc.error_msg
    exc = expect_error(lambda: create_volume(evs, size=1, backup_id=root_bk.id), 400, "EVS.2024")
    assert f"needs at least {root_bk.resource_size} GiB" in exc.error_msg
    exc = expect_error(lambda: create_volume(evs, backup_id=vbk.id, snapshot_id="x"), 400, "EVS.2024")
    assert "snapshot_id and backup_id" in exc.error_msg
    assert volume_rows(api) == before

    # From the volume backup, larger than its source: the data, then the rest of the size.
    created = create_volume(evs, name="copy", size=2, backup_id=vbk.id)
    assert wait_evs_job(evs, created.job_id).status == "SUCCESS"
    (copy_id,) = created.volume_ids
    assert show_volume(evs, copy_id).bootable == "false"
    # The backup's data is needed until the copy is filled at its first attach: deleting it is refused.
    exc = expect_error(
        lambda: cbr.delete_backup(DeleteBackupRequest(backup_id=vbk.id)), 400, "BackupService.0001"
    )
    assert copy_id in exc.error_msg
    # Nor can the copy be backed up before it holds that data (an empty backup would lie).
    copy_vault = make_vault(cbr, "disk", [(copy_id, "OS::Cinder::Volume")], name="copies")
    before = counts(api)
    exc = expect_error(lambda: back_up(cbr, copy_vault.id), 409, "BackupService.6203")
    assert "first attach" in exc.error_msg
    assert counts(api) == before
    assert wait_job(ecs, attach(ecs, server_id, copy_id).job_id).status == "SUCCESS"
    copy_file = state / "volumes" / f"{copy_id}.qcow2"
    assert holds_pattern(copy_file, 0x66)
    assert image_info(copy_file, fmt="qcow2").virtual_size == 2 * GIB
    assert not list((state / "backups").iterdir())  # the download was staged and removed
    cbr.delete_backup(DeleteBackupRequest(backup_id=vbk.id))
    assert wait_backup(cbr, vbk.id, None) is None

    # From the server backup's root disk: bootable, the root disk's data.
    root_size = root_bk.resource_size
    created = create_volume(evs, name="root-copy", size=root_size, backup_id=root_bk.id)
    assert wait_evs_job(evs, created.job_id).status == "SUCCESS"
    (root_copy,) = created.volume_ids
    assert show_volume(evs, root_copy).bootable == "true"
    assert wait_job(ecs, attach(ecs, server_id, root_copy).job_id).status == "SUCCESS"
    root_file = state / "instances" / server_id / "root.qcow2"
    assert same_data(root_file, state / "volumes" / f"{root_copy}.qcow2")
