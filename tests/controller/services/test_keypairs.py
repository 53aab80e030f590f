"""Key pair parsing, fingerprints and generation, against ssh-keygen and paramiko as independent oracles."""

from __future__ import annotations

import io
import subprocess
from pathlib import Path

import paramiko
import pytest

from controller.errors import BadRequest
from controller.services import keypairs


def ssh_keygen_md5(public_key: str, tmp_path: Path) -> str:
    path = tmp_path / "key.pub"
    path.write_text(public_key + "\n")
    out = subprocess.run(
        ["ssh-keygen", "-l", "-E", "md5", "-f", str(path)], check=True, capture_output=True, text=True
    ).stdout
    return out.split()[1].removeprefix("MD5:")


def test_generated_pair_matches_and_fingerprints_like_ssh_keygen(tmp_path: Path) -> None:
    public, private = keypairs.generate()
    key = paramiko.RSAKey.from_private_key(io.StringIO(private))
    assert key.get_bits() == 2048
    assert public == f"ssh-rsa {key.get_base64()}"
    assert keypairs.fingerprint(public) == ssh_keygen_md5(public, tmp_path)
    assert keypairs.fingerprint(public) == ":".join(f"{b:02x}" for b in key.get_fingerprint())


def test_normalize_keeps_the_comment_and_collapses_whitespace(tmp_path: Path) -> None:
    path = tmp_path / "k"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "a comment", "-f", str(path)], check=True
    )
    kind, blob, comment = path.with_suffix(".pub").read_text().strip().split(" ", 2)
    assert keypairs.normalize_public_key(f"  {kind}\t{blob}   {comment}\n") == f"{kind} {blob} {comment}"


@pytest.mark.parametrize("text", ["", "ssh-ed25519", "ssh-ed25519 !!!!", "ssh-foo AAAAB3NzaC1yc2E="])
def test_unparsable_keys_are_bad_requests(text: str) -> None:
    with pytest.raises(BadRequest):
        keypairs.normalize_public_key(text)
