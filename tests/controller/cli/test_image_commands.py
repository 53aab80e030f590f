"""`labcloud image import|upload|show|update|delete` against a real controller, files served by a tiny HTTP
server on 127.0.0.1; the progress bar goes to stderr (a line per 10 % when it is not a terminal)."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import pytest

from controller.cli.progress import render
from tests.support.fileserver import serve_directory


@pytest.fixture
def disk(tmp_path: Path) -> Path:
    path = tmp_path / "served" / "disk.qcow2"
    path.parent.mkdir()
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), "1G"], check=True)
    write = ["qemu-io", "-f", "qcow2", "-c", "write -P 0x11 0 6M", str(path)]
    subprocess.run(write, check=True, capture_output=True)
    return path


def test_progress_bar_rendering() -> None:
    assert render("importing", 512 * 1024 * 1024, 1024 * 1024 * 1024) == (
        "importing [###############...............]  50.0%  512.0/1024.0 MiB"
    )
    assert render("importing", 3 * 1024 * 1024, None) == "importing 3.0 MiB"


def test_import_show_update_delete(cli, disk: Path) -> None:  # type: ignore[no-untyped-def]
    digest = hashlib.sha256(disk.read_bytes()).hexdigest()
    with serve_directory(disk.parent) as web:
        code, out, err = cli(
            "image", "import", f"{web}/disk.qcow2", "--name", "cli-img", "--checksum", digest
        )
        assert code == 0, err
        image_id = out.strip()
        assert "importing [" in err and "100.0%" in err

        code, out, err = cli("image", "import", f"{web}/disk.qcow2", "--name", "bad", "--checksum", "0" * 64)
        assert code == 1 and "checksum mismatch" in err

    code, out, _ = cli("image", "show", "cli-img")
    shown = json.loads(out)
    assert (shown["id"], shown["status"], shown["checksum"]) == (image_id, "active", digest)

    code, out, _ = cli("image", "update", image_id, "--new-name", "renamed", "--min-ram", "256")
    assert code == 0 and json.loads(out)["min_ram"] == 256
    code, out, _ = cli("image", "list")
    assert "renamed" in out

    code, out, _ = cli("image", "delete", "renamed")
    assert code == 0 and image_id in out
    code, _, err = cli("image", "show", image_id)
    assert code == 1 and "no image" in err


def test_upload_with_a_progress_bar(cli, disk: Path) -> None:  # type: ignore[no-untyped-def]
    code, out, err = cli("image", "upload", str(disk), "--name", "up", "--min-ram", "128")
    assert code == 0, err
    assert "uploading [" in err and "100.0%" in err
    shown = json.loads(cli("image", "show", out.strip())[1])
    assert shown["checksum"] == hashlib.sha256(disk.read_bytes()).hexdigest()
    assert (shown["status"], shown["min_ram"], shown["__data_origin"]) == ("active", 128, "upload")

    code, _, err = cli("image", "upload", str(disk.parent / "missing.qcow2"), "--name", "x")
    assert code == 1 and "is not a file" in err
