"""Shared fixtures for CLI tests: `cli` runs the `labcloud` entry point in-process against the `api` controller."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from controller.cli.main import main


@pytest.fixture
def cli(  # type: ignore[no-untyped-def]
    api, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Callable[..., tuple[int, str, str]]:
    """`cli(*argv)` -> (exit code, stdout, stderr), with LABCLOUD_HOME pointing at the test controller's home."""
    monkeypatch.setenv("LABCLOUD_HOME", str(api.ctx.settings.home))

    def run(*argv: str) -> tuple[int, str, str]:
        code = main(list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    return run


def rows(out: str) -> list[list[str]]:
    """A CLI table's data rows (header dropped), split on whitespace."""
    return [line.split() for line in out.splitlines()[1:]]
