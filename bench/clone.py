"""Root-disk clone time: a qcow2 overlay on a 1 GiB and on a 10 GiB base image, through the agent's own code
(`agent.storage.disks.create_overlay`, the "creating root disk" step of every create), against a raw
`qemu-img create -f qcow2 -F qcow2 -b base` of the same overlay in the same run.

The bases are real qcow2 images (sparse: a few MiB of random data at the start, the middle and the end of the
virtual disk, the rest never written), made once in a temporary directory. An overlay records only the path of
its base, so its creation must not grow with the base's size: the bar is a 10 GiB / 1 GiB ratio ≤ 1.5. The first
clone of a base also pays one `qemu-img info` (cached afterwards, as in the agent); it is reported separately.

    .venv/bin/python -m bench.clone --runs 20
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from agent.storage.disks import create_overlay, remove_disk

SIZES_GIB = (1, 10)
DATA_CHUNK = 4 * 1024 * 1024
ROOT_GIB_OVER_BASE = 2  # the root disk a server asks for is larger than the image


def make_base(directory: Path, size_gib: int) -> Path:
    """A qcow2 base of `size_gib` GiB with data at its start, middle and end (converted from a sparse raw)."""
    raw = directory / f"base-{size_gib}g.raw"
    size = size_gib * 1024**3
    with raw.open("wb") as f:
        f.truncate(size)
        for offset in (0, size // 2, size - DATA_CHUNK):
            f.seek(offset)
            f.write(os.urandom(DATA_CHUNK))
    base = directory / f"base-{size_gib}g.qcow2"
    subprocess.run(["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", str(raw), str(base)], check=True)
    raw.unlink()
    base.chmod(0o644)
    return base


def clone_labcloud(base: Path, target: Path, root_gib: int) -> float:
    """Seconds for one overlay through the agent's create_overlay."""
    started = time.perf_counter()
    create_overlay(base, target, root_gib)
    elapsed = time.perf_counter() - started
    remove_disk(target)
    return elapsed


def clone_raw(base: Path, target: Path, root_gib: int) -> float:
    """Seconds for one overlay made by qemu-img directly."""
    cmd = [
        "qemu-img",
        "create",
        "-q",
        "-f",
        "qcow2",
        "-F",
        "qcow2",
        "-b",
        str(base),
        str(target),
        f"{root_gib}G",
    ]
    started = time.perf_counter()
    subprocess.run(cmd, check=True)
    elapsed = time.perf_counter() - started
    target.unlink()
    return elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=20, help="clones per base and method (default 20)")
    args = parser.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="lc-bench-clone-"))
    results: dict[str, Any] = {"runs": args.runs}
    try:
        for size in SIZES_GIB:
            started = time.perf_counter()
            base = make_base(tmp, size)
            made = time.perf_counter() - started
            root = size + ROOT_GIB_OVER_BASE
            first = clone_labcloud(base, tmp / "first.qcow2", root)  # pays the one qemu-img info
            labcloud, raw = [], []
            for i in range(args.runs):  # alternate, so machine noise hits both methods alike
                labcloud.append(clone_labcloud(base, tmp / f"lc-{i}.qcow2", root))
                raw.append(clone_raw(base, tmp / f"raw-{i}.qcow2", root))
            lc_ms, raw_ms = statistics.median(labcloud) * 1000, statistics.median(raw) * 1000
            results[f"{size}g"] = {
                "base_bytes_on_disk": base.stat().st_blocks * 512,
                "base_made_s": round(made, 2),
                "labcloud_first_ms": round(first * 1000, 2),
                "labcloud_median_ms": round(lc_ms, 2),
                "raw_qemu_img_median_ms": round(raw_ms, 2),
                "ratio_labcloud_vs_raw": round(lc_ms / raw_ms, 2),
            }
            print(
                f"{size:>2} GiB base ({base.stat().st_blocks * 512 / 2**20:.1f} MiB on disk): labcloud "
                f"create_overlay {lc_ms:.1f} ms (first {first * 1000:.1f} ms), raw qemu-img create -b "
                f"{raw_ms:.1f} ms, ratio {lc_ms / raw_ms:.2f}"
            )
            base.unlink()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    small, big = results["1g"], results["10g"]
    growth = big["labcloud_median_ms"] / small["labcloud_median_ms"]
    raw_growth = big["raw_qemu_img_median_ms"] / small["raw_qemu_img_median_ms"]
    results["growth_10g_vs_1g"] = round(growth, 2)
    results["raw_growth_10g_vs_1g"] = round(raw_growth, 2)
    print(
        f"10 GiB / 1 GiB clone time: labcloud {growth:.2f}, raw {raw_growth:.2f} (bar ≤ 1.5: no growth with size)"
    )
    print(json.dumps(results))
    return 0 if growth <= 1.5 else 1


if __name__ == "__main__":
    raise SystemExit(main())
