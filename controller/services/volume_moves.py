"""Moving an available volume to the host of the server it is being attached to (same availability zone).

The attach request checks that the move can happen (`check_move`) and records the source host in the job's
payload; the attach job then moves the file before attaching it (`move_volume`), the volume staying
`attaching` throughout:

1. the source host links the volume's file under its `exports/` and reports its sha256 (`export_volume`);
2. the target host streams it from the source's `GET /v1/exports/{id}/file`, with the download token the
   export came with (good for that file only, never the source agent's API token), into a hidden partial file,
   verifies the sha256 and renames it into `volumes/` (`fetch_volume`; a copy already there that hashes right
   is kept, so a rerun resumes);
3. only then does the row's `host_id` switch to the target (a compare-and-swap on source + `attaching`);
4. the source drops the export link and its copy (best effort: the volume lives on the target now).

A failure before step 3 leaves the volume `available` on the source with its data: `undo_move` removes the
export and any copy on the target. Snapshots live on their volume's host and do not move, so a volume with
snapshots is refused (409) until they are deleted; so is one being backed up.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from sqlalchemy import func, update
from sqlmodel import Session, col, select

from agent.client import AgentClient
from agent.schemas import VolumeFetch
from controller.config import Settings
from controller.db import session_scope
from controller.errors import Conflict
from controller.jobs.agent_calls import agent_for, call_agent_patiently
from controller.jobs.registry import JobFailed
from controller.jobs.worker import JobContext
from controller.logs import request_id_var
from controller.models.backup import Backup
from controller.models.host import Host
from controller.models.server import Server
from controller.models.snapshot import Snapshot
from controller.models.volume import Volume
from controller.services.hosts import host_state
from controller.services.servers import AGENT_UNREACHABLE
from controller.services.snapshot_state import DELETED as SNAPSHOT_DELETED
from controller.services.volume_state import ATTACHING

log = logging.getLogger(__name__)

VOLUME_BUSY = "EVS.2026"
_BACKUP_PROTECTING = (
    "protecting"  # controller.services.backups.PROTECTING (which imports the volume services)
)


def export_id_for(volume_id: str) -> str:
    """The export name of a volume on the move: one per volume, so a repeated export replaces it."""
    return f"move-{volume_id}"


# --- at the attach request ---


def check_move(session: Session, settings: Settings, volume: Volume, server: Server) -> str | None:
    """The host the volume must move from for `server` (None: no move); 409 when it cannot move now."""
    source = volume.host_id
    if source is None or source == server.host_id:
        return None
    prefix = f"Volume[{volume.id}] is stored on host {source}, server {server.id} runs on {server.host_id}"
    host = session.get(Host, source)
    if host is None:
        raise Conflict(
            f"{prefix}, which is no longer registered: its data cannot be moved.", code=VOLUME_BUSY
        )
    if host_state(host, settings.host_dead_seconds) != "up":
        raise Conflict(f"{prefix}, which is down: try again when it is back.", code=VOLUME_BUSY)
    snapshots = _live_snapshots(session, volume.id)
    if snapshots:
        raise Conflict(
            f"{prefix}: its {snapshots} snapshot(s) are stored there and do not move with it; delete them "
            "first, or attach it to a server on that host.",
            code=VOLUME_BUSY,
        )
    backing_up = session.exec(
        select(Backup.id).where(
            (col(Backup.volume_id) == volume.id) | (col(Backup.resource_id) == volume.id),
            Backup.status == _BACKUP_PROTECTING,
        )
    ).first()
    if backing_up is not None:
        raise Conflict(
            f"{prefix}: backup {backing_up} of it is being taken there; try again when it finishes.",
            code=VOLUME_BUSY,
        )
    return source


def _live_snapshots(session: Session, volume_id: str) -> int:
    count = session.exec(
        select(func.count()).where(Snapshot.volume_id == volume_id, Snapshot.status != SNAPSHOT_DELETED)
    ).one()
    return int(count)


# --- in the attach job ---


def move_volume(jctx: JobContext, volume: Volume, source: str, target: str) -> None:
    """Steps 1-4 above; each is idempotent, so a resumed job (or a restarted agent) carries on."""
    rid = request_id_var.get()
    export_id = export_id_for(volume.id)
    if volume.host_id == source:
        with jctx.session() as session:
            if _live_snapshots(session, volume.id):  # taken between the request's check and its CAS
                raise JobFailed(VOLUME_BUSY, f"volume {volume.id} has snapshots on host {source}; not moved")
        export = call_agent_patiently(
            jctx,
            source,
            f"exporting volume {volume.id} for host {target}",
            lambda c: c.export_volume(volume.id, export_id, request_id=rid),
            missing_ok=True,
        )
        if export is None:
            log.warning("volume %s has no file on host %s: nothing to move there", volume.id, source)
        else:
            client = agent_for(jctx, source)
            if client is None:
                raise JobFailed(AGENT_UNREACHABLE, f"host {source} is no longer registered")
            # The export's own download token, good for its file only: the source's API token stays here.
            fetch = VolumeFetch(
                url=client.export_file_url(export_id), token=export.download_token, checksum=export.checksum
            )
            call_agent_patiently(
                jctx,
                target,
                f"copying volume {volume.id} from host {source}",
                lambda c: c.fetch_volume(volume.id, fetch, request_id=rid),
            )
        with session_scope(jctx.engine) as session:
            switched = session.exec(
                update(Volume)
                .where(
                    col(Volume.id) == volume.id,
                    col(Volume.host_id) == source,
                    col(Volume.status) == ATTACHING,
                )
                .values(host_id=target)
            ).rowcount  # type: ignore[attr-defined]
        if not switched:
            raise JobFailed(VOLUME_BUSY, f"volume {volume.id} changed while it was being moved to {target}")
        log.info(
            "volume %s moved from host %s to %s (%s bytes)", volume.id, source, target, export and export.size
        )
    _drop_from(jctx, source, volume.id, export_id, keep_volume=False)


def undo_move(jctx: JobContext, volume_id: str, source: str, target: str) -> None:
    """After a failed move (the row still on `source`): remove the export and any copy the target got."""
    with jctx.session() as session:
        volume = session.get(Volume, volume_id)
    if volume is None or volume.host_id != source:
        return  # moved already (or gone): what is on the target is the volume
    _drop_from(jctx, source, volume_id, export_id_for(volume_id), keep_volume=True)
    _drop_from(jctx, target, volume_id, None, keep_volume=False)


def _drop_from(
    jctx: JobContext, host_id: str, volume_id: str, export_id: str | None, *, keep_volume: bool
) -> None:
    """Best effort (an agent being restarted is waited for): a host that stays unreachable keeps a file that
    is no longer the volume, which a later fetch never mistakes for its data since it checks the hash."""
    rid = request_id_var.get()
    calls: list[tuple[str, Callable[[AgentClient], None]]] = []
    if export_id is not None:
        calls.append((f"removing export {export_id}", lambda c: c.delete_export(export_id, request_id=rid)))
    if not keep_volume:
        calls.append(
            (f"removing the copy of volume {volume_id}", lambda c: c.delete_volume(volume_id, request_id=rid))
        )
    for what, call in calls:
        try:
            call_agent_patiently(jctx, host_id, what, call, missing_ok=True)
        except JobFailed as exc:
            log.warning(
                "volume %s: %s on host %s failed, left there: %s", volume_id, what, host_id, exc.reason
            )
