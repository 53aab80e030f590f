"""`labcloud image import|upload|create|show|update|delete`: IMS images from a URL, a file or a server."""

from __future__ import annotations

import argparse
import hashlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from controller.cli.client import JOB_DONE, ApiClient, job_failure
from controller.cli.commands import catalog  # catalog registers these verbs: import the module, not names
from controller.cli.commands.lookup import find_server
from controller.cli.context import CliContext
from controller.cli.errors import CliError
from controller.cli.output import say, show_json
from controller.cli.progress import ProgressBar

CHUNK = 1024 * 1024
JOB_TIMEOUT_S = 6 * 3600.0


def register_verbs(verbs: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = verbs.add_parser("import", help="import an image from an http(s) URL (a job with a progress bar)")
    p.add_argument("url")
    p.add_argument("--name", required=True)
    p.add_argument("--checksum", metavar="SHA256", help="the sha256 the downloaded file must have")
    _minimums(p)
    p.add_argument("--no-wait", action="store_true", help="print the job id and return")
    p.set_defaults(func=import_image)

    p = verbs.add_parser("upload", help="upload a qcow2 or raw file as a new private image")
    p.add_argument("file", type=Path)
    p.add_argument("--name", required=True)
    _minimums(p)
    p.set_defaults(func=upload_image)

    p = verbs.add_parser("create", help="make a private image from a server's root disk")
    p.add_argument("--server", required=True, metavar="NAME|ID")
    p.add_argument("--name", required=True)
    p.add_argument("--no-wait", action="store_true", help="print the job id and return")
    p.set_defaults(func=create_from_server)

    p = verbs.add_parser("show", help="one image as JSON")
    p.add_argument("image", metavar="NAME|ID")
    p.set_defaults(func=show_image)

    p = verbs.add_parser("update", help="rename an image or change its minimums")
    p.add_argument("image", metavar="NAME|ID")
    p.add_argument("--new-name")
    _minimums(p)
    p.set_defaults(func=update_image)

    p = verbs.add_parser("delete", help="delete a private image (refused while servers use it)")
    p.add_argument("image", metavar="NAME|ID")
    p.set_defaults(func=delete_image)


def _minimums(p: argparse.ArgumentParser) -> None:
    p.add_argument("--min-disk", type=int, metavar="GIB")
    p.add_argument("--min-ram", type=int, metavar="MIB")
    p.add_argument("--os-version")


def import_image(args: argparse.Namespace, ctx: CliContext) -> int:
    client = ctx.client()
    url = args.url + (f"#sha256={args.checksum.lower()}" if args.checksum else "")
    body = {"name": args.name, "image_url": url, **_minimum_fields(args)}
    job_id = client.post("/v2/cloudimages/action", body)["job_id"]
    return _follow(client, job_id, "importing", args.no_wait)


def create_from_server(args: argparse.Namespace, ctx: CliContext) -> int:
    client = ctx.client()
    server = find_server(client, args.server)
    job_id = client.post("/v2/cloudimages/action", {"name": args.name, "instance_id": server["id"]})["job_id"]
    return _follow(client, job_id, "capturing", args.no_wait)


def _follow(client: ApiClient, job_id: str, label: str, no_wait: bool) -> int:
    if no_wait:
        say(job_id)
        return 0
    bar = ProgressBar(label)
    deadline = time.monotonic() + JOB_TIMEOUT_S
    try:
        while True:
            job: dict[str, Any] = client.get(f"/v1/{client.project_id}/jobs/{job_id}")
            entities = job.get("entities") or {}
            if entities.get("bytes_done") is not None:
                bar.update(int(entities["bytes_done"]), entities.get("bytes_total"))
            if job.get("status") in JOB_DONE:
                break
            if time.monotonic() > deadline:
                raise CliError("timeout", f"job {job_id} is still {job.get('status')}")
            time.sleep(0.5)
    finally:
        bar.close()
    if job["status"] != "SUCCESS":
        raise job_failure(job)
    say(str(entities.get("image_id")))
    return 0


def upload_image(args: argparse.Namespace, ctx: CliContext) -> int:
    path: Path = args.file
    if not path.is_file():
        raise CliError("image", f"{path} is not a file")
    client = ctx.client()
    size = path.stat().st_size
    digest = _sha256(path, ProgressBar("hashing"), size)
    body = {"name": args.name, **_minimum_fields(args)}
    image = client.post("/v2/images", body)
    bar = ProgressBar("uploading")
    try:
        client.put_stream(
            f"/v2/images/{image['id']}/file",
            _chunks(path, bar, size),
            size=size,
            headers={"X-Image-Sha256": digest},
        )
    finally:
        bar.close()
    say(image["id"])
    return 0


def _sha256(path: Path, bar: ProgressBar, size: int) -> str:
    hasher = hashlib.sha256()
    try:
        for chunk in _chunks(path, bar, size):
            hasher.update(chunk)
    finally:
        bar.close()
    return hasher.hexdigest()


def _chunks(path: Path, bar: ProgressBar, size: int) -> Iterator[bytes]:
    done = 0
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            done += len(chunk)
            bar.update(done, size)
            yield chunk


def _minimum_fields(args: argparse.Namespace) -> dict[str, Any]:
    fields = {"min_disk": args.min_disk, "min_ram": args.min_ram, "os_version": args.os_version}
    return {k: v for k, v in fields.items() if v is not None}


def show_image(args: argparse.Namespace, ctx: CliContext) -> int:
    client = ctx.client()
    show_json(client.get(f"/v2/images/{catalog.choose_image(client, args.image)['id']}"))
    return 0


def update_image(args: argparse.Namespace, ctx: CliContext) -> int:
    client = ctx.client()
    image = catalog.choose_image(client, args.image)
    changes = {"name": args.new_name, **_minimum_fields(args)}
    ops = [
        {"op": "replace", "path": "/__os_version" if key == "os_version" else f"/{key}", "value": value}
        for key, value in changes.items()
        if value is not None
    ]
    if not ops:
        raise CliError("image", "nothing to change: give --new-name, --min-disk, --min-ram or --os-version")
    show_json(client.request("PATCH", f"/v2/cloudimages/{image['id']}", body=ops))
    return 0


def delete_image(args: argparse.Namespace, ctx: CliContext) -> int:
    client = ctx.client()
    image = catalog.choose_image(client, args.image)
    client.delete(f"/v2/images/{image['id']}")
    say(f"deleted image {image['id']}")
    return 0
