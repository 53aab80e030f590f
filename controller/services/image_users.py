"""Who still needs an image's file besides the servers created from it (`images.servers_using`).

A volume made with `imageRef` is filled from the image at its first attach, and a snapshot of such a volume
taken before then records the image as all its data; a change of OS in flight puts a new root overlay on the
image before the server's row names it. Deleting the image under any of them would break that later copy.
"""

from __future__ import annotations

from sqlmodel import Session, col, select

from controller.models.job import INIT, RUNNING, Job
from controller.models.snapshot import Snapshot
from controller.models.volume import Volume
from controller.services.server_rebuild import CHANGE_OS_JOB

IMAGE_SOURCE = "image"


def waiting_on_image(session: Session, image_id: str) -> list[str]:
    """Ids of the live volumes and snapshots still to be filled from the image, and of the servers whose
    change of OS to it has not ended."""
    waiting: list[str] = []
    for table in (Volume, Snapshot):
        waiting += session.exec(
            select(table.id).where(
                table.source_kind == IMAGE_SOURCE,
                table.source_id == image_id,
                col(table.host_id).is_(None),
                table.status != "deleted",
            )
        ).all()
    changes = session.exec(select(Job).where(Job.kind == CHANGE_OS_JOB, col(Job.status).in_((INIT, RUNNING))))
    waiting += [job.payload["server_id"] for job in changes if job.payload.get("image_id") == image_id]
    return sorted(waiting)
