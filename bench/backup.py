"""CBR backup and restore throughput of a volume holding ~1 GiB of real data, against a raw `qemu-img convert` of
the same disk in the same run.

Starts a real controller in this process (bench/support.py) and one simulated host in a process of its own (a
real agent app over libvirt's test driver, `agent.sim`), makes a volume on that host (attached to a stopped
server once, then detached), and fills it with `--size-mib` MiB of non-zero data with qemu-io. Then alternates,
N times each:
  * backup: a CBR checkpoint of the volume through the official SDK, timed from the call until the checkpoint is
    `available` (polled every 50 ms): the agent copies the volume to staging with qemu-img, streams it to the
    controller's backup store (sha256 on both sides, fsync), and discards the staged copy;
  * restore: the backup restored onto the detached volume, timed from the call until the backup and the volume
    are `available` again: the agent downloads it (sha256 checked, fsync), checks it is a standalone qcow2,
    grows it to the volume's size and renames it over the old file;
  * raw: `qemu-img convert -O qcow2` of the volume's file to a new file on the same filesystem: one copy, which
    is the least either direction has to do; and the same followed by an fsync of the copy, since labcloud
    makes the stored backup and the restored disk durable before it reports them.
Prints the medians, MiB/s and the ratios; the last line is one JSON object.

    .venv/bin/python -m bench.backup --runs 3 --size-mib 1024
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from huaweicloudsdkcbr.v1 import (
    BackupRestore,
    BackupRestoreReq,
    BillingCreate,
    CbrClient,
    CheckpointParam,
    CreateCheckpointRequest,
    CreateVaultRequest,
    DeleteBackupRequest,
    ListBackupsRequest,
    ResourceCreate,
    RestoreBackupRequest,
    ShowBackupRequest,
    ShowCheckpointRequest,
    VaultBackup,
    VaultBackupReq,
    VaultCreate,
    VaultCreateReq,
)
from huaweicloudsdkcore.auth.credentials import BasicCredentials
from huaweicloudsdkcore.exceptions.exceptions import ClientRequestException
from huaweicloudsdkcore.http.http_config import HttpConfig
from huaweicloudsdkecs.v2 import (
    AttachServerVolumeOption,
    AttachServerVolumeRequest,
    AttachServerVolumeRequestBody,
    DetachServerVolumeRequest,
)
from huaweicloudsdkevs.v2 import (
    CreateVolumeOption,
    CreateVolumeRequest,
    CreateVolumeRequestBody,
    EvsClient,
    ShowVolumeRequest,
)
from sqlmodel import Session, select

from agent.sim import SimCapacity
from bench.support import Controller, make_seed_image, median, start_controller, start_fleet
from controller.models.image import Image
from tests.e2e import journey

MIB = 1024 * 1024
TIMEOUT_S = 3600.0
POLL_S = 0.05


def _client(controller: Controller, client_class: Any) -> Any:
    config = HttpConfig.get_default_config()
    config.timeout = (10, 300)
    return (
        client_class.new_builder()
        .with_http_config(config)
        .with_credentials(BasicCredentials(controller.ak, controller.sk, controller.project_id))
        .with_endpoints([controller.url])
        .build()
    )


def _until(what: str, check: Callable[[], bool]) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"still waiting for {what}")
        time.sleep(POLL_S)


def _job_ok(ecs: Any, job_id: str) -> None:
    job = journey.wait_job(ecs, job_id, timeout=TIMEOUT_S)
    if job.status != "SUCCESS":
        raise RuntimeError(f"job {job_id} failed: {job.fail_reason}")


def volume_on_host(controller: Controller, size_gib: int) -> str:
    """A volume made on the simulated host (attached to a stopped server once) and detached again."""
    ecs, vpc, evs = controller.ecs(), controller.vpc(), _client(controller, EvsClient)
    with Session(controller.ctx.engine) as session:
        image_id = session.exec(select(Image.id)).first()
    vpc_id, subnet_id, sg_id = journey.create_network(
        vpc, name="bench", cidr="10.65.0.0/16", subnet_cidr="10.65.1.0/24", gateway="10.65.1.1"
    )
    public_key = (
        Ed25519PrivateKey.generate().public_key().public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH)
    )
    journey.import_keypair(ecs, "bench", public_key.decode())
    job_id, (server_id,) = journey.create_servers(
        ecs,
        name="bench",
        image_id=str(image_id),
        flavor_id=journey.smallest_flavor_id(ecs),
        vpc_id=vpc_id,
        subnet_id=subnet_id,
        sg_id=sg_id,
        key_name="bench",
    )
    _job_ok(ecs, job_id)
    _job_ok(ecs, journey.stop(ecs, [server_id], "HARD"))
    option = CreateVolumeOption(availability_zone="lab-1a", size=size_gib, volume_type="SSD", name="bench")
    volume_id = str(
        evs.create_volume(CreateVolumeRequest(body=CreateVolumeRequestBody(volume=option))).volume_ids[0]
    )
    _until("the volume", lambda: _volume_status(evs, volume_id) == "available")
    body = AttachServerVolumeRequestBody(volume_attachment=AttachServerVolumeOption(volume_id=volume_id))
    _job_ok(ecs, ecs.attach_server_volume(AttachServerVolumeRequest(server_id=server_id, body=body)).job_id)
    detach = DetachServerVolumeRequest(server_id=server_id, volume_id=volume_id)
    _job_ok(ecs, ecs.detach_server_volume(detach).job_id)
    return volume_id


def _volume_status(evs: Any, volume_id: str) -> str:
    return str(evs.show_volume(ShowVolumeRequest(volume_id=volume_id)).volume.status)


def fill(path: Path, size_mib: int) -> None:
    """`size_mib` MiB of non-zero data in 64 MiB stretches of different bytes, written by qemu-io."""
    commands: list[str] = []
    for n, offset in enumerate(range(0, size_mib, 64)):
        commands += ["-c", f"write -P {0x11 + n % 200} {offset}M {min(64, size_mib - offset)}M"]
    subprocess.run(["qemu-io", "-f", "qcow2", *commands, str(path)], check=True, capture_output=True)


def make_vault(cbr: CbrClient, volume_id: str) -> str:
    vault = VaultCreate(
        name="bench",
        billing=BillingCreate(object_type="disk", size=100, consistent_level="crash_consistent"),
        resources=[ResourceCreate(id=volume_id, type="OS::Cinder::Volume")],
    )
    return str(cbr.create_vault(CreateVaultRequest(body=VaultCreateReq(vault=vault))).vault.id)


def backup_labcloud(cbr: CbrClient, vault_id: str) -> tuple[float, str]:
    body = VaultBackupReq(checkpoint=VaultBackup(vault_id=vault_id, parameters=CheckpointParam(name="bench")))
    started = time.perf_counter()
    checkpoint_id = cbr.create_checkpoint(CreateCheckpointRequest(body=body)).checkpoint.id
    show = ShowCheckpointRequest(checkpoint_id=checkpoint_id)
    _until("the checkpoint", lambda: cbr.show_checkpoint(show).checkpoint.status != "protecting")
    elapsed = time.perf_counter() - started
    (backup,) = cbr.list_backups(ListBackupsRequest(checkpoint_id=checkpoint_id)).backups
    if backup.status != "available":
        raise RuntimeError(f"backup {backup.id} is {backup.status}; see its operation log")
    return elapsed, str(backup.id)


def restore_labcloud(cbr: CbrClient, evs: Any, backup_id: str, volume_id: str) -> float:
    body = BackupRestoreReq(restore=BackupRestore(volume_id=volume_id))
    started = time.perf_counter()
    cbr.restore_backup(RestoreBackupRequest(backup_id=backup_id, body=body))
    show = ShowBackupRequest(backup_id=backup_id)
    _until("the restore", lambda: cbr.show_backup(show).backup.status != "restoring")
    _until("the volume", lambda: _volume_status(evs, volume_id) != "restoring-backup")
    elapsed = time.perf_counter() - started
    if _volume_status(evs, volume_id) != "available":
        raise RuntimeError(f"restore of {backup_id} left volume {volume_id} {_volume_status(evs, volume_id)}")
    return elapsed


def delete_backup(cbr: CbrClient, backup_id: str) -> None:
    cbr.delete_backup(DeleteBackupRequest(backup_id=backup_id))

    def gone() -> bool:
        try:
            cbr.show_backup(ShowBackupRequest(backup_id=backup_id))
        except ClientRequestException as exc:
            return exc.status_code == 404
        return False

    _until("the backup's delete", gone)


def convert_raw(source: Path, target: Path, *, durable: bool) -> float:
    """One `qemu-img convert`; `durable` also fsyncs the copy, as the backup store and a restore do."""
    started = time.perf_counter()
    subprocess.run(["qemu-img", "convert", "-q", "-O", "qcow2", str(source), str(target)], check=True)
    if durable:
        fd = os.open(target, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    elapsed = time.perf_counter() - started
    target.unlink()
    return elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=3, help="backups, restores and raw copies (default 3)")
    parser.add_argument("--size-mib", type=int, default=1024, help="data in the volume (default 1024)")
    args = parser.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="lc-bench-backup-"))
    controller = start_controller(tmp / "home", seed_image=make_seed_image(tmp / "img"))
    fleet = None
    try:
        fleet = start_fleet(controller, tmp / "fleet", 1, SimCapacity(), heartbeat_seconds=5.0)
        size_gib = -(-args.size_mib // 1024) + 1
        volume_id = volume_on_host(controller, size_gib)
        (volume,) = (tmp / "fleet" / "hosts").glob(f"*/state/volumes/{volume_id}.qcow2")
        fill(volume, args.size_mib)
        on_disk = volume.stat().st_blocks * 512
        # Untimed: flushes what qemu-io wrote and warms the page cache, so the first raw copy is not penalised.
        convert_raw(volume, tmp / "raw-copy.qcow2", durable=True)
        cbr, evs = _client(controller, CbrClient), _client(controller, EvsClient)
        vault_id = make_vault(cbr, volume_id)
        backups, restores, raws, durables, stored = [], [], [], [], 0
        for _ in range(args.runs):  # alternate, so machine noise hits every method alike
            raws.append(convert_raw(volume, tmp / "raw-copy.qcow2", durable=False))
            durables.append(convert_raw(volume, tmp / "raw-copy.qcow2", durable=True))
            took, backup_id = backup_labcloud(cbr, vault_id)
            backups.append(took)
            stored = (controller.ctx.settings.backup_store_dir / f"{backup_id}.qcow2").stat().st_size
            restores.append(restore_labcloud(cbr, evs, backup_id, volume_id))
            delete_backup(cbr, backup_id)
    finally:
        if fleet is not None:
            fleet.terminate()
            fleet.wait(timeout=60)
        controller.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    mib = on_disk / MIB
    backup_s, restore_s, raw_s, durable_s = median(backups), median(restores), median(raws), median(durables)
    results = {
        "runs": args.runs,
        "data_mib": args.size_mib,
        "volume_mib_on_disk": round(mib, 1),
        "stored_mib": round(stored / MIB, 1),
        "backup_median_s": round(backup_s, 2),
        "restore_median_s": round(restore_s, 2),
        "raw_qemu_img_convert_median_s": round(raw_s, 2),
        "raw_convert_fsync_median_s": round(durable_s, 2),
        "backup_mib_s": round(mib / backup_s, 1),
        "restore_mib_s": round(mib / restore_s, 1),
        "raw_mib_s": round(mib / raw_s, 1),
        "ratio_backup_vs_raw": round(backup_s / raw_s, 2),
        "ratio_restore_vs_raw": round(restore_s / raw_s, 2),
        "ratio_backup_vs_raw_fsync": round(backup_s / durable_s, 2),
        "ratio_restore_vs_raw_fsync": round(restore_s / durable_s, 2),
    }
    print(
        f"volume with {args.size_mib} MiB of data ({mib:.0f} MiB on disk), median of {args.runs}: "
        f"raw qemu-img convert {raw_s:.2f} s ({mib / raw_s:.0f} MiB/s), "
        f"with fsync {durable_s:.2f} s ({mib / durable_s:.0f} MiB/s)"
    )
    print(
        f"backup (stage + upload + sha256 + fsync + discard) {backup_s:.2f} s ({mib / backup_s:.0f} MiB/s), "
        f"ratio {backup_s / raw_s:.2f} vs raw, {backup_s / durable_s:.2f} vs raw + fsync"
    )
    print(
        f"restore (download + sha256 + fsync + rename) {restore_s:.2f} s ({mib / restore_s:.0f} MiB/s), "
        f"ratio {restore_s / raw_s:.2f} vs raw, {restore_s / durable_s:.2f} vs raw + fsync"
    )
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
