"""Every controller setting is documented: its `LABCLOUD_…` variable appears in the README's configuration."""

from __future__ import annotations

from pathlib import Path

from controller.config import Settings

README = Path(__file__).resolve().parents[2] / "README.md"


def documented(variable: str, readme: str) -> bool:
    # The quota family is written once with its members abbreviated: `LABCLOUD_QUOTA_INSTANCES`, `…_CORES`.
    prefix = "LABCLOUD_QUOTA_"
    if variable in readme:
        return True
    return variable.startswith(prefix) and f"`…_{variable.removeprefix(prefix)}`" in readme


def test_every_setting_is_in_the_readme() -> None:
    readme = README.read_text()
    missing = [
        f"LABCLOUD_{name.upper()}"
        for name in Settings.model_fields
        if not documented(f"LABCLOUD_{name.upper()}", readme)
    ]
    assert missing == []
