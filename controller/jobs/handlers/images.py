"""Image jobs: import a file from a URL (importImage), and capture a server's root disk (createImageByInstance).

Both stream bytes into a staging file of the image store (services/image_import.py) and report progress in the
job's IMS entities (`process_percent`, plus labcloud's `bytes_done`/`bytes_total`), which `GET /v1/{p}/jobs/{id}`
shows while the job runs. A retried job starts the copy over (the staging name is fixed per image). A failure
kills the image and removes every byte this job wrote, and for a capture the export on the agent.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from agent.client import AgentClientError
from controller.db import session_scope
from controller.jobs.agent_calls import agent_errors, agent_for
from controller.jobs.registry import JobFailed, job_handler
from controller.jobs.worker import JobContext
from controller.logs import request_id_var
from controller.models.image import KILLED, QUEUED, SAVING, Image
from controller.models.job import Job
from controller.services import images
from controller.services.image_import import ImageImportFailed, StagedImage, fetch_into
from controller.services.servers import AGENT_UNREACHABLE

log = logging.getLogger(__name__)

IMPORT_FAILED = "IMG.0011"
CAPTURE_FAILED = "IMG.0012"
IMAGE_GONE = "IMG.0027"


class _Reporter:
    """Writes download progress into the job's entities (callers already throttle it)."""

    def __init__(self, jctx: JobContext, task: str) -> None:
        self.jctx = jctx
        self.task = task
        self._last = -1.0

    def __call__(self, done: int, total: int | None) -> None:
        percent = round(100.0 * done / total, 1) if total else 0.0
        if percent == self._last and done:
            return
        self._last = percent
        set_entities(
            self.jctx,
            current_task=self.task,
            process_percent=min(percent, 99.0),
            bytes_done=done,
            bytes_total=total,
        )


def set_entities(jctx: JobContext, **values: Any) -> None:
    with session_scope(jctx.engine) as session:
        job = session.get(Job, jctx.job.id)
        if job is not None:
            job.entities = {**job.entities, **values}
            session.add(job)


def _start_saving(jctx: JobContext) -> Image:
    """queued -> saving (saving already on a retry); JobFailed if the image was deleted meanwhile."""
    image_id = jctx.job.payload["image_id"]
    with session_scope(jctx.engine) as session:
        image = session.get(Image, image_id)
        if image is None or image.status not in (QUEUED, SAVING):
            status = image.status if image is not None else "gone"
            raise JobFailed(IMAGE_GONE, f"image {image_id} is {status}; nothing to save")
        image.status = SAVING
        session.add(image)
        return image


def _store(jctx: JobContext, staged: StagedImage, expected_sha256: str | None, code: str) -> dict[str, Any]:
    image_id = jctx.job.payload["image_id"]
    try:
        set_entities(jctx, current_task="checking")
        stored = staged.finish(expected_sha256)
    except ImageImportFailed as exc:
        raise JobFailed(code, exc.reason) from exc
    with session_scope(jctx.engine) as session:
        if not images.mark_stored(session, image_id, stored, origin=None):
            raise JobFailed(IMAGE_GONE, f"image {image_id} was deleted while it was being saved")
    log.info("image %s active: %s bytes, sha256 %s", image_id, stored.size, stored.checksum)
    return {
        "image_id": image_id,
        "current_task": "done",
        "process_percent": 100.0,
        "bytes_done": staged.bytes_done,
        "results": [{"image_id": image_id, "status": "SUCCESS"}],
    }


def _image_failed(jctx: JobContext, code: str, reason: str) -> None:
    """Kill the image and remove every byte of it; the job's fail_reason tells the user why."""
    image_id = jctx.job.payload["image_id"]
    with session_scope(jctx.engine) as session:
        images.mark_failed(session, image_id, KILLED)
    image_dir = jctx.ctx.settings.image_dir
    StagedImage(image_dir, image_id).discard()
    log.warning("image %s killed: %s %s", image_id, code, reason)


# --- import from a URL ---


@job_handler(images.IMPORT_JOB, on_fail=_image_failed)
def import_image(jctx: JobContext) -> dict[str, Any]:
    payload = jctx.job.payload
    _start_saving(jctx)
    staged = StagedImage(jctx.ctx.settings.image_dir, payload["image_id"])
    started = time.monotonic()
    try:
        fetch_into(payload["url"], staged, _Reporter(jctx, "downloading"))
    except ImageImportFailed as exc:
        staged.discard()
        raise JobFailed(IMPORT_FAILED, exc.reason) from exc
    log.info(
        "image %s: fetched %s bytes from %s in %.1f s",
        payload["image_id"],
        staged.bytes_done,
        payload["url"],
        time.monotonic() - started,
    )
    return _store(jctx, staged, payload.get("sha256"), IMPORT_FAILED)


# --- capture a server's root disk ---


def _capture_failed(jctx: JobContext, code: str, reason: str) -> None:
    _drop_export(jctx)
    _image_failed(jctx, code, reason)


def _drop_export(jctx: JobContext) -> None:
    payload = jctx.job.payload
    client = agent_for(jctx, payload["host_id"])
    if client is None:
        return
    try:
        client.delete_export(payload["image_id"], request_id=request_id_var.get())
    except AgentClientError as exc:  # the agent may be down; the export is then left for an operator
        log.warning(
            "image %s: removing the export on %s failed: %s", payload["image_id"], payload["host_id"], exc
        )


@job_handler(images.CAPTURE_JOB, on_fail=_capture_failed)
def capture_server(jctx: JobContext) -> dict[str, Any]:
    payload = jctx.job.payload
    image_id, server_id, host_id = payload["image_id"], payload["server_id"], payload["host_id"]
    _start_saving(jctx)
    client = agent_for(jctx, host_id)
    if client is None:
        raise JobFailed(AGENT_UNREACHABLE, f"host {host_id} of server {server_id} is no longer registered")
    set_entities(jctx, current_task="exporting root disk", process_percent=0.0)
    with agent_errors(host_id, f"exporting the root disk of server {server_id}"):
        export = client.export_root_disk(server_id, image_id, request_id=request_id_var.get())
    log.info(
        "image %s: server %s exported (%s, %s bytes)",
        image_id,
        server_id,
        export.consistent_with,
        export.size,
    )
    url, headers = client.export_download(image_id)
    staged = StagedImage(jctx.ctx.settings.image_dir, image_id)
    try:
        fetch_into(url, staged, _Reporter(jctx, "uploading"), headers=headers)
    except ImageImportFailed as exc:
        staged.discard()
        raise JobFailed(
            CAPTURE_FAILED, f"copying the export from host {host_id} failed: {exc.reason}"
        ) from exc
    result = _store(jctx, staged, export.checksum, CAPTURE_FAILED)
    _drop_export(jctx)
    return {**result, "server_id": server_id, "consistent_with": export.consistent_with}
