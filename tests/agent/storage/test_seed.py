from __future__ import annotations

import email
import json
import os
import stat
import subprocess
import time
from pathlib import Path

import pytest
import yaml  # PyYAML comes with the Huawei SDK; here it is only the independent YAML oracle

from agent.errors import StorageError
from agent.storage.seed import MIN_SEED_BYTES, build_seed, dhcp_network_config, read_seed, user_data_type

from .conftest import run

KEYS = ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFake1 alice@lab", "ssh-rsa AAAAB3NzaC1yc2EAAAFake2 bob"]


def isoinfo_extract(iso: Path, name: str) -> str:
    return subprocess.run(
        ["isoinfo", "-J", "-i", str(iso), "-x", f"/{name}"], capture_output=True, check=True
    ).stdout.decode()


def test_plain_seed_is_read_back_by_pycdlib_and_isoinfo(tmp_path: Path) -> None:
    seed = tmp_path / "seed.iso"
    started = time.perf_counter()
    build_seed(seed, instance_id="srv-1", hostname="vm1", ssh_keys=KEYS, admin_pass=None, user_data=None)
    print(f"seed build: {(time.perf_counter() - started) * 1000:.1f} ms")

    assert seed.stat().st_size >= MIN_SEED_BYTES
    assert stat.S_IMODE(seed.stat().st_mode) == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["seed.iso"]  # no temp left

    files = read_seed(seed)
    assert set(files) == {"meta-data", "user-data"}
    assert "Volume id: cidata" in run("isoinfo", "-d", "-i", seed)
    assert "Rock Ridge signatures version 1 found" in run("isoinfo", "-d", "-i", seed)
    assert isoinfo_extract(seed, "user-data") == files["user-data"]
    assert isoinfo_extract(seed, "meta-data") == files["meta-data"]
    rr_listing = run("isoinfo", "-R", "-l", "-i", seed)
    assert "meta-data" in rr_listing and "user-data" in rr_listing

    meta = yaml.safe_load(files["meta-data"])
    assert meta == {"instance-id": "srv-1", "local-hostname": "vm1", "public-keys": KEYS}
    user = files["user-data"]
    assert user.startswith("#cloud-config\n")
    assert yaml.safe_load(user) == {"hostname": "vm1", "ssh_authorized_keys": KEYS}


def test_password_sets_default_user_and_root(tmp_path: Path) -> None:
    seed = tmp_path / "seed.iso"
    build_seed(seed, instance_id="i", hostname="vm1", ssh_keys=[], admin_pass="S3cret:pw", user_data=None)
    config = yaml.safe_load(read_seed(seed)["user-data"])
    assert config == {
        "hostname": "vm1",
        "ssh_authorized_keys": [],
        "password": "S3cret:pw",
        "chpasswd": {"expire": False, "list": ["root:S3cret:pw"]},
        "ssh_pwauth": True,
    }


@pytest.mark.parametrize(
    ("user_data", "ctype"),
    [
        ("#!/bin/sh\necho hello > /tmp/hello\n", "text/x-shellscript"),
        ("#cloud-config\npackages: [htop]\n", "text/cloud-config"),
        ("just some text\n", "text/plain"),
    ],
)
def test_user_data_becomes_the_second_mime_part(tmp_path: Path, user_data: str, ctype: str) -> None:
    seed = tmp_path / "seed.iso"
    build_seed(seed, instance_id="i", hostname="vm1", ssh_keys=KEYS, admin_pass="pw", user_data=user_data)
    raw = isoinfo_extract(seed, "user-data")

    msg = email.message_from_string(raw)
    assert msg.get_content_type() == "multipart/mixed"
    assert msg["MIME-Version"] == "1.0"
    ours, theirs = msg.get_payload()
    assert ours.get_content_type() == "text/cloud-config"
    assert theirs.get_content_type() == ctype
    for part in (ours, theirs):
        assert part["Content-Transfer-Encoding"] == "7bit"
    assert theirs.get_payload() == user_data
    config = yaml.safe_load(ours.get_payload())
    assert config["ssh_authorized_keys"] == KEYS
    assert config["password"] == "pw"


def test_non_ascii_user_data_is_carried_as_8bit(tmp_path: Path) -> None:
    seed = tmp_path / "seed.iso"
    script = "#!/bin/sh\necho 'grüße ✓'\n"
    build_seed(seed, instance_id="i", hostname="vm1", ssh_keys=[], admin_pass=None, user_data=script)
    msg = email.message_from_string(read_seed(seed)["user-data"])
    part = msg.get_payload()[1]
    assert part["Content-Transfer-Encoding"] == "8bit"
    assert part.get_payload() == script


def test_mime_user_data_is_nested_whole(tmp_path: Path) -> None:
    inner = (
        'Content-Type: multipart/mixed; boundary="XYZ"\nMIME-Version: 1.0\n\n'
        "--XYZ\nContent-Type: text/x-shellscript\n\n#!/bin/sh\necho inner\n--XYZ--\n"
    )
    seed = tmp_path / "seed.iso"
    build_seed(seed, instance_id="i", hostname="vm1", ssh_keys=[], admin_pass=None, user_data=inner)
    msg = email.message_from_string(read_seed(seed)["user-data"])
    leaves = [p.get_content_type() for p in msg.walk() if not p.is_multipart()]
    assert leaves == ["text/cloud-config", "text/x-shellscript"]


def test_awkward_strings_survive_yaml_quoting(tmp_path: Path) -> None:
    hostname = 'we"ird: #host\\ \u2028 ünï'
    password = "- [a]: {b} # 'c' \"d\" \\e"
    seed = tmp_path / "seed.iso"
    build_seed(
        seed,
        instance_id="id: 1",
        hostname=hostname,
        ssh_keys=["key # x"],
        admin_pass=password,
        user_data=None,
    )
    files = read_seed(seed)
    meta = yaml.safe_load(files["meta-data"])
    assert meta == {"instance-id": "id: 1", "local-hostname": hostname, "public-keys": ["key # x"]}
    config = yaml.safe_load(files["user-data"])
    assert config["hostname"] == hostname
    assert config["password"] == password
    assert config["chpasswd"]["list"] == [f"root:{password}"]


def test_multiline_password_is_refused(tmp_path: Path) -> None:
    with pytest.raises(StorageError):
        build_seed(
            tmp_path / "s.iso", instance_id="i", hostname="h", ssh_keys=[], admin_pass="a\nb", user_data=None
        )
    assert os.listdir(tmp_path) == []


def test_network_config_is_json_and_yaml(tmp_path: Path) -> None:
    seed = tmp_path / "seed.iso"
    config = dhcp_network_config(["52:54:00:AA:BB:01", "52:54:00:aa:bb:02"])
    build_seed(
        seed,
        instance_id="i",
        hostname="h",
        ssh_keys=[],
        admin_pass=None,
        user_data=None,
        network_config=config,
    )
    text = isoinfo_extract(seed, "network-config")
    assert json.loads(text) == yaml.safe_load(text) == config
    assert config == {
        "version": 2,
        "ethernets": {
            "eth0": {"match": {"macaddress": "52:54:00:aa:bb:01"}, "set-name": "eth0", "dhcp4": True},
            "eth1": {"match": {"macaddress": "52:54:00:aa:bb:02"}, "set-name": "eth1", "dhcp4": True},
        },
    }


def test_rebuild_replaces_the_seed(tmp_path: Path) -> None:
    seed = tmp_path / "seed.iso"
    build_seed(seed, instance_id="i", hostname="old", ssh_keys=[], admin_pass=None, user_data=None)
    build_seed(seed, instance_id="i", hostname="new", ssh_keys=[], admin_pass=None, user_data=None)
    assert 'local-hostname: "new"' in read_seed(seed)["meta-data"]
    assert [p.name for p in tmp_path.iterdir()] == ["seed.iso"]


def test_read_seed_of_something_else(tmp_path: Path) -> None:
    junk = tmp_path / "junk.iso"
    junk.write_bytes(b"\0" * 4096)
    with pytest.raises(StorageError):
        read_seed(junk)


def test_user_data_type() -> None:
    assert user_data_type("#!/usr/bin/env python3\n") == "text/x-shellscript"
    assert user_data_type("#cloud-config-archive\n") == "text/cloud-config-archive"
    assert user_data_type("#include\nhttp://x\n") == "text/x-include-url"
    assert user_data_type("") == "text/plain"
