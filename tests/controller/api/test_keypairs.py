"""Key pairs through the official ECS SDK (Nova os-keypairs) against a real controller.

Keys to import are made by `ssh-keygen`, and its `-l -E md5` output is the oracle for fingerprints.
"""

from __future__ import annotations

import io
import subprocess
from datetime import datetime
from pathlib import Path
from typing import Any

import paramiko
import pytest
from huaweicloudsdkecs.v2 import (
    NovaCreateKeypairOption,
    NovaCreateKeypairRequest,
    NovaCreateKeypairRequestBody,
    NovaDeleteKeypairRequest,
    NovaListKeypairsRequest,
    NovaShowKeypairRequest,
)
from sqlmodel import Session, select

from controller.models.keypair import Keypair
from tests.controller.api.helpers import expect_error

pytestmark = pytest.mark.filterwarnings(
    "ignore:Method 'nova_.*' of EcsClient is deprecated:DeprecationWarning"
)


def create(ecs: Any, name: str, public_key: str | None = None, **extra: Any) -> Any:
    option = NovaCreateKeypairOption(name=name, public_key=public_key, **extra)
    return ecs.nova_create_keypair(
        NovaCreateKeypairRequest(body=NovaCreateKeypairRequestBody(keypair=option))
    ).keypair


def ssh_keygen(tmp_path: Path, key_type: str, bits: int | None = None) -> str:
    path = tmp_path / f"id_{key_type}_{bits or 0}"
    args = ["ssh-keygen", "-q", "-t", key_type, "-N", "", "-C", "me@lab", "-f", str(path)]
    subprocess.run([*args, *(["-b", str(bits)] if bits else [])], check=True, capture_output=True)
    return path.with_suffix(".pub").read_text().strip()


def md5_fingerprint(public_key: str, tmp_path: Path) -> str:
    path = tmp_path / "oracle.pub"
    path.write_text(public_key + "\n")
    out = subprocess.run(
        ["ssh-keygen", "-l", "-E", "md5", "-f", str(path)], check=True, capture_output=True, text=True
    ).stdout
    return out.split()[1].removeprefix("MD5:")


def _keypairs(api: Any) -> list[Keypair]:
    with Session(api.ctx.engine) as session:
        return list(session.exec(select(Keypair)).all())


def test_generate_returns_the_private_key_once(api: Any, tmp_path: Path) -> None:
    ecs = api.ecs()
    made = create(ecs, "gen")
    assert made.public_key.startswith("ssh-rsa ") and made.type == "ssh"
    private = paramiko.RSAKey.from_private_key(io.StringIO(made.private_key))
    assert f"{private.get_name()} {private.get_base64()}" == made.public_key
    assert made.fingerprint == md5_fingerprint(made.public_key, tmp_path)

    shown = ecs.nova_show_keypair(NovaShowKeypairRequest(keypair_name="gen")).keypair
    assert isinstance(shown.id, int) and isinstance(shown.created_at, datetime)
    assert (shown.public_key, shown.fingerprint, shown.deleted) == (made.public_key, made.fingerprint, False)
    assert shown.user_id == made.user_id and shown.user_id
    assert all(made.private_key not in str(kp.model_dump()) for kp in _keypairs(api))


@pytest.mark.parametrize(
    ("key_type", "bits"), [("ed25519", None), ("rsa", 3072), ("ecdsa", 256), ("ecdsa", 521)]
)
def test_import_keeps_the_key_and_fingerprints_like_ssh_keygen(
    api: Any, tmp_path: Path, key_type: str, bits: int | None
) -> None:
    public_key = ssh_keygen(tmp_path, key_type, bits)
    made = create(api.ecs(), "mine", public_key)
    assert made.public_key == public_key and made.private_key is None
    assert made.fingerprint == md5_fingerprint(public_key, tmp_path)


def test_list_wraps_each_key_pair_and_pages_by_name(api: Any, tmp_path: Path) -> None:
    ecs = api.ecs()
    public_key = ssh_keygen(tmp_path, "ed25519")
    for name in ("c", "a", "b"):
        create(ecs, name, public_key)
    listed = ecs.nova_list_keypairs(NovaListKeypairsRequest()).keypairs
    assert [item.keypair.name for item in listed] == ["a", "b", "c"]
    assert listed[0].keypair.public_key == public_key and listed[0].keypair.type == "ssh"
    page = ecs.nova_list_keypairs(NovaListKeypairsRequest(limit=1, marker="a")).keypairs
    assert [item.keypair.name for item in page] == ["b"]


def test_delete(api: Any) -> None:
    ecs = api.ecs()
    create(ecs, "gone")
    ecs.nova_delete_keypair(NovaDeleteKeypairRequest(keypair_name="gone"))
    expect_error(lambda: ecs.nova_show_keypair(NovaShowKeypairRequest(keypair_name="gone")), 404, "Ecs.0314")
    expect_error(
        lambda: ecs.nova_delete_keypair(NovaDeleteKeypairRequest(keypair_name="gone")), 404, "Ecs.0314"
    )


def test_duplicate_name_is_409_and_nothing_changes(api: Any, tmp_path: Path) -> None:
    ecs = api.ecs()
    first = create(ecs, "dup", ssh_keygen(tmp_path, "ed25519"))
    expect_error(lambda: create(ecs, "dup"), 409, "Ecs.0315")
    assert [(k.name, k.public_key) for k in _keypairs(api)] == [("dup", first.public_key)]


BAD_KEYS = {
    "garbage": "not a key at all",
    "bad base64": "ssh-ed25519 AAAA!!!notbase64",
    "truncated": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOv",
    "type mismatch": "ssh-rsa AAAAC3NzaC1lZDI1NTE5AAAAIBdD8K8B6r2U9zzG3w5wVb8m2LBH2sVd7Tz0lOjV8Cqf",
    "private key": "-----BEGIN OPENSSH PRIVATE KEY-----",
    "empty": "",
}


@pytest.mark.parametrize("case", list(BAD_KEYS))
def test_unparsable_public_key_is_400_and_nothing_is_created(api: Any, case: str) -> None:
    expect_error(lambda: create(api.ecs(), "bad", BAD_KEYS[case]), 400, "Ecs.0005")
    assert _keypairs(api) == []


def test_short_rsa_keys_bad_names_and_types_are_refused(api: Any, tmp_path: Path) -> None:
    ecs = api.ecs()
    expect_error(lambda: create(ecs, "weak", ssh_keygen(tmp_path, "rsa", 1024)), 400, "Ecs.0005")
    expect_error(lambda: create(ecs, "has space"), 400, "Ecs.0005")
    expect_error(lambda: create(ecs, "x" * 65), 400, "Ecs.0005")
    expect_error(lambda: create(ecs, None), 400, "Ecs.0005")
    expect_error(lambda: create(ecs, "cert", type="x509"), 400, "Ecs.0005")
    assert _keypairs(api) == []


def test_key_pairs_are_per_project(api: Any, tmp_path: Path) -> None:
    mine = create(api.ecs(), "shared-name", ssh_keygen(tmp_path, "ed25519"))
    other = api.new_project("tenant-b").ecs()
    expect_error(
        lambda: other.nova_show_keypair(NovaShowKeypairRequest(keypair_name="shared-name")), 404, "Ecs.0314"
    )
    expect_error(
        lambda: other.nova_delete_keypair(NovaDeleteKeypairRequest(keypair_name="shared-name")),
        404,
        "Ecs.0314",
    )
    assert other.nova_list_keypairs(NovaListKeypairsRequest()).keypairs == []
    theirs = create(other, "shared-name")
    assert theirs.fingerprint != mine.fingerprint
    shown = api.ecs().nova_show_keypair(NovaShowKeypairRequest(keypair_name="shared-name")).keypair
    assert shown.public_key == mine.public_key
