"""CBR listings through the official SDK: vaults (filters, paging, show, update), backups (filters, paging) and
operation logs (list, show), each project seeing only its own; and the refusals of a server restore. The data
paths are in test_backups.py and tests/e2e/test_backups.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from huaweicloudsdkcbr.v1 import (
    BackupRestoreServerMapping,
    ListBackupsRequest,
    ListOpLogsRequest,
    ListVaultRequest,
    ShowOpLogRequest,
    ShowVaultRequest,
    UpdateVaultRequest,
    VaultUpdate,
    VaultUpdateReq,
)
from sqlmodel import Session, select

from controller.models.backup import Vault
from tests.controller.api.helpers import expect_error
from tests.controller.api.server_helpers import make_net, row, wait_job
from tests.controller.api.test_backups import back_up, cbr_client, counts, make_vault, restore
from tests.controller.api.test_isolation import new_tenant
from tests.controller.api.test_volumes import (
    attach,
    create_volume,
    detach,
    evs_client,
    show_volume,
    stopped_server,
    wait_volume,
)

VOLUME, SERVER = "OS::Cinder::Volume", "OS::Nova::Server"


@pytest.fixture
def api_settings(seed_image_file: Path) -> dict[str, Any]:
    return {"seed_image": seed_image_file}


def rename(cbr: Any, vault_id: str, name: str) -> Any:
    body = VaultUpdateReq(vault=VaultUpdate(name=name))
    return cbr.update_vault(UpdateVaultRequest(vault_id=vault_id, body=body)).vault


def vault_names(api: Any) -> list[str]:
    with Session(api.ctx.engine) as session:
        return [v.name for v in session.exec(select(Vault).order_by(Vault.id))]


def test_vaults_backups_and_task_logs_are_listed_filtered_and_paged(api: Any, agent_host: Any) -> None:
    evs, cbr = evs_client(api), cbr_client(api)
    volumes = [create_volume(evs, name=n).volume_ids[0] for n in ("one", "two")]
    for volume_id in volumes:
        wait_volume(evs, volume_id, "available")
    alpha = make_vault(cbr, "disk", [(volumes[0], VOLUME)], name="alpha")
    beta = make_vault(cbr, "disk", [(volumes[1], VOLUME)], name="beta")

    # Vaults: filters, paging (oldest first), show, update.
    listed = cbr.list_vault(ListVaultRequest())
    assert listed.count == 2 and [v.id for v in listed.vaults] == [alpha.id, beta.id]
    assert [v.id for v in cbr.list_vault(ListVaultRequest(name="beta")).vaults] == [beta.id]
    assert cbr.list_vault(ListVaultRequest(object_type="disk")).count == 2
    assert cbr.list_vault(ListVaultRequest(object_type="server")).count == 0
    page = cbr.list_vault(ListVaultRequest(limit=1, offset=1))
    assert page.count == 2 and [v.id for v in page.vaults] == [beta.id]
    shown = cbr.show_vault(ShowVaultRequest(vault_id=alpha.id)).vault
    assert (shown.name, shown.billing.object_type, [r.id for r in shown.resources]) == (
        "alpha",
        "disk",
        [volumes[0]],
    )
    assert rename(cbr, alpha.id, "gamma").name == "gamma"
    assert cbr.show_vault(ShowVaultRequest(vault_id=alpha.id)).vault.name == "gamma"

    # Backups: two of the first volume, one of the second.
    first = [back_up(cbr, alpha.id)[0], back_up(cbr, alpha.id)[0]]
    (second,) = back_up(cbr, beta.id)
    assert cbr.list_backups(ListBackupsRequest()).count == 3
    by_vault = cbr.list_backups(ListBackupsRequest(vault_id=alpha.id)).backups
    assert sorted(b.id for b in by_vault) == sorted(b.id for b in first)
    by_resource = cbr.list_backups(ListBackupsRequest(resource_id=volumes[1])).backups
    assert [(b.id, b.resource_type, b.vault_id) for b in by_resource] == [(second.id, VOLUME, beta.id)]
    assert cbr.list_backups(ListBackupsRequest(status="available")).count == 3
    assert cbr.list_backups(ListBackupsRequest(status="error")).count == 0
    pages = [cbr.list_backups(ListBackupsRequest(limit=1, offset=i)) for i in range(3)]
    assert {p.count for p in pages} == {3}
    assert sorted(p.backups[0].id for p in pages) == sorted([second.id, *(b.id for b in first)])

    # Task logs: one backup task per backup, each shown on its own.
    logs = cbr.list_op_logs(ListOpLogsRequest(operation_type="backup")).operation_logs
    assert len(logs) == 3 and {o.status for o in logs} == {"success"}
    assert len(cbr.list_op_logs(ListOpLogsRequest(vault_id=beta.id)).operation_logs) == 1
    one = cbr.show_op_log(ShowOpLogRequest(operation_log_id=logs[0].id)).operation_log
    assert (one.id, one.operation_type, one.extra_info.common.progress) == (logs[0].id, "backup", 100)

    # Bad input and other projects: 4xx, nothing changed.
    names = vault_names(api)
    exc = expect_error(lambda: rename(cbr, beta.id, "x" * 200), 400, "BackupService.0001")
    assert "name" in exc.error_msg
    expect_error(lambda: rename(cbr, "no-such-vault", "y"), 404, "BackupService.6101")
    expect_error(lambda: cbr.list_vault(ListVaultRequest(limit=0)), 400, "Ecs.0005")
    other = cbr_client(new_tenant(api, "other"))
    expect_error(lambda: rename(other, beta.id, "theirs"), 404, "BackupService.6101")
    expect_error(
        lambda: other.show_op_log(ShowOpLogRequest(operation_log_id=logs[0].id)), 404, "BackupService.6104"
    )
    assert other.list_vault(ListVaultRequest()).count == 0
    assert other.list_backups(ListBackupsRequest()).count == 0
    assert other.list_op_logs(ListOpLogsRequest()).operation_logs == []
    assert vault_names(api) == names


def test_a_server_backup_restores_onto_its_own_server_and_disks_only(api: Any, agent_host: Any) -> None:
    ecs, evs, cbr = api.ecs(), evs_client(api), cbr_client(api)
    net = make_net(api)
    server_id, other_server = stopped_server(api, net), stopped_server(api, net)
    volume_id = create_volume(evs, name="data").volume_ids[0]
    wait_volume(evs, volume_id, "available")
    assert wait_job(ecs, attach(ecs, server_id, volume_id).job_id).status == "SUCCESS"
    (top,) = back_up(cbr, make_vault(cbr, "server", [(server_id, SERVER)], name="srv").id)
    root_bk = next(c for c in top.children if c.extend_info.system_disk)
    volume_bk = next(c for c in top.children if c.resource_id == volume_id)

    def mapping(backup_id: str, target: str) -> list[BackupRestoreServerMapping]:
        return [BackupRestoreServerMapping(backup_id=backup_id, volume_id=target)]

    def state() -> tuple[Any, ...]:
        return (*counts(api), row(api, server_id).status, show_volume(evs, volume_id).status)

    before = state()
    for args, fragment in [
        ({"server_id": other_server}, "its own server"),
        ({"server_id": server_id, "mappings": mapping(volume_bk.id, root_bk.resource_id)}, "its own disk"),
        ({"server_id": server_id, "mappings": mapping("nope", volume_id)}, "is not a disk of backup"),
        ({}, "server_id is required"),
    ]:
        exc = expect_error(lambda args=args: restore(cbr, top.id, **args), 400, "BackupService.0001")
        assert fragment in exc.error_msg
    # A disk backup is restored with its server backup, never alone.
    exc = expect_error(lambda: restore(cbr, volume_bk.id, volume_id=volume_id), 400, "BackupService.0001")
    assert top.id in exc.error_msg
    assert state() == before

    # The volume has left the server since the backup: the restore would have nowhere to put it.
    assert wait_job(ecs, detach(ecs, server_id, volume_id).job_id).status == "SUCCESS"
    before = state()
    exc = expect_error(lambda: restore(cbr, top.id, server_id=server_id), 400, "BackupService.0001")
    assert volume_id in exc.error_msg and "no longer attached" in exc.error_msg
    assert state() == before
