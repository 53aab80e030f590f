"""IMS image import throughput through labcloud, against a raw streamed copy of the same file.

Serves a ~1 GiB qcow2 (real data, not sparse) from a small HTTP server on 127.0.0.1, starts a real controller in
this process (bench/support.py), then alternates, N times each:
  * labcloud: `create_image` with `image_url=<url>#sha256=<hex>` through the official IMS SDK, timed from the call
    to job SUCCESS (polled every 50 ms): the job streams the file into the store while hashing it, fsyncs,
    checks it with `qemu-img info` and renames it into place;
  * raw: the same GET streamed to a file with httpx in this process, sha256 while writing, then fsync.
Prints the medians, MiB/s and the ratio; the last line is one JSON object.

    .venv/bin/python -m bench.image_import --runs 3 --size-mib 1024
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
from huaweicloudsdkcore.auth.credentials import BasicCredentials
from huaweicloudsdkcore.http.http_config import HttpConfig
from huaweicloudsdkims.v2 import (
    CreateImageRequest,
    CreateImageRequestBody,
    GlanceDeleteImageRequest,
    ImsClient,
    ShowJobRequest,
)

from bench.support import Controller, median, start_controller
from tests.support.fileserver import serve_directory

MIB = 1024 * 1024
JOB_TIMEOUT_S = 3600.0


def make_image(directory: Path, size_mib: int) -> Path:
    """A qcow2 with `size_mib` MiB of allocated data (written by qemu-io), so every byte crosses the wire."""
    path = directory / "big.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), f"{size_mib + 64}M"], check=True)
    write = ["qemu-io", "-f", "qcow2", "-c", f"write -P 0xa5 0 {size_mib}M", str(path)]
    subprocess.run(write, check=True, capture_output=True)
    return path


def ims_client(controller: Controller) -> ImsClient:
    config = HttpConfig.get_default_config()
    config.timeout = (10, 300)
    return (
        ImsClient.new_builder()
        .with_http_config(config)
        .with_credentials(BasicCredentials(controller.ak, controller.sk, controller.project_id))
        .with_endpoints([controller.url])
        .build()
    )


def import_labcloud(ims: ImsClient, url: str, digest: str, name: str) -> tuple[float, str]:
    body = CreateImageRequestBody(name=name, image_url=f"{url}#sha256={digest}")
    started = time.perf_counter()
    job_id = ims.create_image(CreateImageRequest(body=body)).job_id
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while True:
        job = ims.show_job(ShowJobRequest(job_id=job_id))
        if job.status in ("SUCCESS", "FAIL"):
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"import job {job_id} still {job.status}")
        time.sleep(0.05)
    elapsed = time.perf_counter() - started
    if job.status != "SUCCESS":
        raise RuntimeError(f"import failed: {job.fail_reason}")
    return elapsed, str(job.entities.image_id)


def copy_raw(url: str, target: Path, digest: str) -> float:
    started = time.perf_counter()
    hasher = hashlib.sha256()
    with httpx.stream("GET", url, timeout=60.0) as response, target.open("wb") as out:
        response.raise_for_status()
        for chunk in response.iter_raw(MIB):
            hasher.update(chunk)
            out.write(chunk)
        out.flush()
        os.fsync(out.fileno())
    elapsed = time.perf_counter() - started
    if hasher.hexdigest() != digest:
        raise RuntimeError("raw copy: checksum mismatch")
    return elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--size-mib", type=int, default=1024)
    args = parser.parse_args(argv)
    os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")

    with tempfile.TemporaryDirectory(prefix="bench-import-") as tmp:
        root = Path(tmp)
        (root / "served").mkdir()
        source = make_image(root / "served", args.size_mib)
        size = source.stat().st_size
        digest = hashlib.sha256(source.read_bytes()).hexdigest()
        controller = start_controller(root / "home")
        try:
            ims = ims_client(controller)
            labcloud_s: list[float] = []
            raw_s: list[float] = []
            with serve_directory(source.parent) as web:
                url = f"{web}/{source.name}"
                for run in range(args.runs):
                    raw_target = root / "raw-copy"
                    raw_s.append(copy_raw(url, raw_target, digest))
                    raw_target.unlink()
                    elapsed, image_id = import_labcloud(ims, url, digest, f"bench-{run}")
                    labcloud_s.append(elapsed)
                    ims.glance_delete_image(GlanceDeleteImageRequest(image_id=image_id))
                    print(f"run {run + 1}: labcloud {elapsed:.2f} s, raw {raw_s[-1]:.2f} s", flush=True)
        finally:
            controller.stop()

    lab, raw = median(labcloud_s), median(raw_s)
    result = {
        "runs": args.runs,
        "size_bytes": size,
        "labcloud_import_s": round(lab, 3),
        "raw_stream_copy_s": round(raw, 3),
        "labcloud_mib_per_s": round(size / MIB / lab, 1),
        "raw_mib_per_s": round(size / MIB / raw, 1),
        "ratio_labcloud_vs_raw": round(lab / raw, 2),
    }
    print(
        f"import of {size / MIB:.0f} MiB over local HTTP (median of {args.runs}): labcloud {lab:.2f} s "
        f"({result['labcloud_mib_per_s']} MiB/s), raw streamed copy + sha256 {raw:.2f} s "
        f"({result['raw_mib_per_s']} MiB/s), ratio {result['ratio_labcloud_vs_raw']}"
    )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
