"""How `labcloud up` runs the image recipe: the last stdout line is the image; failures show the log."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.cli.errors import CliError
from controller.cli.image import ensure_image, seed_image_from_env


def _script(tmp_path: Path, body: str) -> Path:
    script = tmp_path / "build.sh"
    script.write_text("#!/usr/bin/env bash\nset -eu\n" + body)
    return script


def test_the_last_stdout_line_names_the_image(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    script = _script(
        tmp_path,
        'echo "building into $2" >&2\nmkdir -p "$2"\ntouch "$2/img.qcow2" "$2/img.json"\n'
        'echo chatter\necho "$2/img.qcow2"\n',
    )
    assert ensure_image(cache, tmp_path / "build.log", script) == cache / "img.qcow2"
    assert "building into" in (tmp_path / "build.log").read_text()


def test_a_failing_build_shows_the_end_of_its_log(tmp_path: Path) -> None:
    script = _script(tmp_path, 'echo "apt-get download: no network" >&2\nexit 3\n')
    with pytest.raises(CliError) as info:
        ensure_image(tmp_path / "cache", tmp_path / "build.log", script)
    assert "exit 3" in info.value.message
    assert info.value.detail is not None and "no network" in info.value.detail


def test_a_build_that_prints_no_file_is_an_error(tmp_path: Path) -> None:
    script = _script(tmp_path, "echo /nonexistent/image.qcow2\n")
    with pytest.raises(CliError, match="not a file"):
        ensure_image(tmp_path / "cache", tmp_path / "build.log", script)


def test_a_missing_recipe_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(CliError, match="missing"):
        ensure_image(tmp_path / "cache", tmp_path / "build.log", tmp_path / "nope.sh")


def test_the_seed_image_variable_skips_the_build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LABCLOUD_SEED_IMAGE", raising=False)
    assert seed_image_from_env() is None
    image = tmp_path / "mine.qcow2"
    image.write_bytes(b"")
    monkeypatch.setenv("LABCLOUD_SEED_IMAGE", str(image))
    assert seed_image_from_env() == image
    monkeypatch.setenv("LABCLOUD_SEED_IMAGE", str(tmp_path / "missing.qcow2"))
    with pytest.raises(CliError):
        seed_image_from_env()
