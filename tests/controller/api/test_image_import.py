"""IMS image import from a URL through the official IMS SDK (`create_image` with `image_url`), against a real
controller and a tiny HTTP server on 127.0.0.1: the file is streamed into the store, its sha256 verified, its
format checked with qemu-img, raw converted to qcow2, progress in the job; every failure kills the image and
leaves nothing in the store."""

from __future__ import annotations

import hashlib
import json
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from huaweicloudsdkims.v2 import (
    CreateImageRequest,
    CreateImageRequestBody,
    GlanceShowImageRequest,
    ShowJobRequest,
    TagKeyValue,
)
from sqlmodel import Session, func, select

from controller.models.image import ACTIVE, KILLED, Image
from controller.models.job import Job
from controller.services import transfer_grants
from tests.controller.api.helpers import expect_error
from tests.controller.api.test_images import make_seed
from tests.support.fileserver import serve_directory

JOB_TIMEOUT_S = 300.0


@pytest.fixture
def api_settings(tmp_path: Path) -> dict[str, Any]:
    return {"seed_image": make_seed(tmp_path / "seed")}


def qemu_img(*args: str) -> None:
    subprocess.run(["qemu-img", *args], check=True, capture_output=True)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real files to import: a qcow2 with data, a raw disk with an MBR, and things that are not images."""
    d = tmp_path_factory.mktemp("served")
    qemu_img("create", "-q", "-f", "qcow2", str(d / "good.qcow2"), "3G")
    subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 0 3M", str(d / "good.qcow2")],
        check=True,
        capture_output=True,
    )
    raw = bytearray(4 * 1024 * 1024)
    raw[510:512] = b"\x55\xaa"
    raw[4096:8192] = b"\x42" * 4096
    (d / "disk.raw").write_bytes(bytes(raw))
    (d / "notes.txt").write_text("this is not a disk image\n" * 100)
    qemu_img("create", "-q", "-f", "vmdk", str(d / "disk.vmdk"), "64M")
    qemu_img(
        "create", "-q", "-f", "qcow2", "-b", str(d / "good.qcow2"), "-F", "qcow2", str(d / "backed.qcow2")
    )
    return d


@pytest.fixture(scope="module")
def web(files: Path) -> Iterator[str]:
    with serve_directory(files) as url:
        yield url


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def start_import(api: Any, url: str, name: str = "imported", **extra: Any) -> str:
    body = CreateImageRequestBody(name=name, image_url=url, **extra)
    return str(api.ims().create_image(CreateImageRequest(body=body)).job_id)


def wait_job(api: Any, job_id: str) -> Any:
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while True:
        job = api.ims().show_job(ShowJobRequest(job_id=job_id))
        if job.status in ("SUCCESS", "FAIL"):
            return job
        assert time.monotonic() < deadline, f"job {job_id} still {job.status}"
        time.sleep(0.1)


def store_files(api: Any) -> list[str]:
    d = api.ctx.settings.image_dir
    return sorted(p.name for p in d.iterdir()) if d.exists() else []


def image_row(api: Any, image_id: str) -> Image:
    with Session(api.ctx.engine) as session:
        image = session.get(Image, image_id)
    assert image is not None
    return image


def test_import_streams_verifies_and_registers_a_qcow2(api: Any, files: Path, web: str) -> None:
    source = files / "good.qcow2"
    digest = sha256(source)
    job_id = start_import(
        api,
        f"{web}/good.qcow2#sha256={digest}",
        min_ram=256,
        os_version="Debian 12",
        image_tags=[TagKeyValue(key="team", value="lab")],
    )
    job = wait_job(api, job_id)
    assert job.status == "SUCCESS", job.fail_reason
    assert job.job_type == "importImage"
    image_id = job.entities.image_id
    assert job.entities.process_percent == 100.0

    shown = api.ims().glance_show_image(GlanceShowImageRequest(image_id=image_id))
    assert (shown.status, shown.visibility, shown.owner) == ("active", "private", api.project_id)
    assert (shown.checksum, shown.size, shown.disk_format) == (digest, source.stat().st_size, "qcow2")
    assert shown.min_disk == 3  # the virtual size, rounded up to GiB
    assert shown.min_ram == 256 and shown.os_version == "Debian 12"
    assert shown.tags == ["team=lab"]
    assert shown.virtual_size == 3 * 1024**3
    assert shown.data_origin == f"url,{web}/good.qcow2"

    # In the store under its id, byte for byte; agents download it with the join token and a grant.
    assert store_files(api) == sorted(
        [f"{image_id}.qcow2", *(n for n in store_files(api) if n != f"{image_id}.qcow2")]
    )
    token = api.ctx.settings.join_token_file.read_text().strip()
    got = httpx.get(
        transfer_grants.signed_url(api.ctx.settings, "image", image_id, "GET"),
        headers={"Authorization": f"Bearer {token}"},
        timeout=60,
    )
    assert hashlib.sha256(got.content).hexdigest() == digest


def test_job_shows_progress_in_bytes(api: Any, files: Path, web: str) -> None:
    job_id = start_import(api, f"{web}/good.qcow2")
    job = wait_job(api, job_id)
    assert job.status == "SUCCESS", job.fail_reason
    with Session(api.ctx.engine) as session:
        row = session.get(Job, job_id)
    assert row is not None
    size = (files / "good.qcow2").stat().st_size
    assert row.entities["bytes_done"] == size
    assert row.entities["bytes_total"] == size
    raw = httpx_job(api, job_id)
    assert raw["entities"]["bytes_done"] == size


def httpx_job(api: Any, job_id: str) -> dict[str, Any]:
    from tests.controller.api.server_helpers import raw_request

    response = raw_request(api, "GET", f"/v1/{api.project_id}/jobs/{job_id}", b"")
    assert response.status_code == 200
    return dict(json.loads(response.content))


def test_a_raw_disk_is_converted_to_qcow2(api: Any, files: Path, web: str) -> None:
    job = wait_job(api, start_import(api, f"{web}/disk.raw#sha256={sha256(files / 'disk.raw')}"))
    assert job.status == "SUCCESS", job.fail_reason
    image = image_row(api, job.entities.image_id)
    assert image.status == ACTIVE and image.disk_format == "qcow2"
    stored = Path(str(image.file_path))
    info = json.loads(
        subprocess.run(
            ["qemu-img", "info", "--output=json", str(stored)], check=True, capture_output=True, text=True
        ).stdout
    )
    assert info["format"] == "qcow2" and info["virtual-size"] == 4 * 1024 * 1024
    assert image.checksum == sha256(stored)  # the checksum agents verify is the stored qcow2's
    # The guest sees the same bytes.
    out = subprocess.run(
        ["qemu-img", "compare", "-f", "raw", "-F", "qcow2", str(files / "disk.raw"), str(stored)],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("missing.qcow2", "answered 404"),
        ("good.qcow2#sha256=" + "0" * 64, "checksum mismatch"),
        ("notes.txt", "not a disk image"),
        ("disk.vmdk", "vmdk image"),
        ("backed.qcow2", "has a backing file"),
    ],
)
def test_a_failed_import_kills_the_image_and_leaves_nothing(
    api: Any, web: str, path: str, reason: str
) -> None:
    before = store_files(api)
    job = wait_job(api, start_import(api, f"{web}/{path}", name="bad"))
    assert job.status == "FAIL"
    assert reason in job.fail_reason, job.fail_reason
    assert job.error_code == "IMG.0011"
    image = image_row(api, job.entities.image_id)
    assert image.status == KILLED and image.file_path is None and image.checksum is None
    assert store_files(api) == before


def test_an_unreachable_host_fails_the_job(api: Any) -> None:
    before = store_files(api)
    job = wait_job(api, start_import(api, f"http://127.0.0.1:{closed_port()}/x.qcow2"))
    assert job.status == "FAIL"
    assert "cannot fetch" in job.fail_reason and "ConnectError" in job.fail_reason
    assert image_row(api, job.entities.image_id).status == KILLED
    assert store_files(api) == before


def count(api: Any, model: Any) -> int:
    with Session(api.ctx.engine) as session:
        return int(session.exec(select(func.count()).select_from(model)).one())


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"image_url": "ftp://example.org/a.qcow2"}, "http:// or https://"),
        ({"image_url": "http:///nohost"}, "http:// or https://"),
        ({"image_url": "http://127.0.0.1/a.qcow2#md5=abc"}, "#sha256="),
        ({"image_url": "http://127.0.0.1/a.qcow2", "instance_id": "x"}, "exactly one"),
        ({}, "exactly one"),
        ({"image_url": "http://127.0.0.1/a.qcow2", "min_disk": 5000}, "min_disk"),
        ({"image_url": "http://127.0.0.1/a.qcow2", "name": ""}, "name"),
    ],
)
def test_bad_import_requests_are_refused_and_change_nothing(
    api: Any, body: dict[str, Any], fragment: str
) -> None:
    images, jobs = count(api, Image), count(api, Job)
    fields = {"name": "x", **body}
    exc = expect_error(
        lambda: api.ims().create_image(CreateImageRequest(body=CreateImageRequestBody(**fields))),
        400,
        "IMG.0001",
    )
    assert fragment in exc.error_msg
    assert (count(api, Image), count(api, Job)) == (images, jobs)
