"""The `labcloud` API commands end to end against a real controller (no hypervisor host: jobs that need one
fail, which exercises the CLI's job error path)."""

from __future__ import annotations

import json
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest

from controller.cli.main import main
from tests.support.image import tinycloud_image


@pytest.fixture
def api_settings() -> dict[str, Any]:
    return {"seed_image": tinycloud_image()}


def test_keypair_create_saves_a_private_key_and_delete_removes_it(cli, api) -> None:  # type: ignore[no-untyped-def]
    code, out, _ = cli("keypair", "create", "mykey")
    assert code == 0
    key = Path(api.ctx.settings.home) / "keys" / "mykey.pem"
    assert f"private key saved to {key}" in out
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    # The saved key is a usable private key: ssh-keygen derives the public key the server stored.
    public = subprocess.run(["ssh-keygen", "-y", "-f", str(key)], capture_output=True, text=True, check=True)
    code, out, _ = cli("keypair", "list")
    assert code == 0 and "mykey" in out and out.splitlines()[1].split()[-1] == "yes"
    shown = json.loads(json.dumps(api_keypair(api, "mykey")))
    assert shown["public_key"].split()[1] == public.stdout.split()[1]

    code, out, err = cli("keypair", "create", "mykey")
    assert code == 1 and out == ""
    assert err.startswith("error Ecs.0315: ")

    code, _, _ = cli("keypair", "delete", "mykey")
    assert code == 0 and not key.exists()
    assert cli("keypair", "list")[1].strip() == "NAME  TYPE  FINGERPRINT  PRIVATE KEY SAVED"


def api_keypair(api, name: str) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    from controller.cli.client import ApiClient, Credentials

    creds = Credentials(endpoint=api.endpoint, ak=api.ak, sk=api.sk, project_id=api.project_id)
    with ApiClient(creds) as client:
        return dict(client.get(f"/v2.1/{api.project_id}/os-keypairs/{name}")["keypair"])


def test_keypair_import_keeps_no_private_key(cli, api, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "k")], check=True)
    code, out, _ = cli("keypair", "create", "imported", "--public-key", str(tmp_path / "k.pub"))
    assert code == 0 and "private key" not in out
    assert (
        api_keypair(api, "imported")["public_key"].split()[1] == (tmp_path / "k.pub").read_text().split()[1]
    )
    assert not (Path(api.ctx.settings.home) / "keys" / "imported.pem").exists()


def test_flavor_and_image_lists(cli) -> None:  # type: ignore[no-untyped-def]
    code, out, _ = cli("flavor", "list")
    rows = [line.split() for line in out.splitlines()[1:]]
    assert code == 0 and rows
    rams = [int(row[3]) for row in rows]
    assert rams == sorted(rams), "smallest first"
    code, out, _ = cli("image", "list")
    assert code == 0 and "public" in out and "active" in out


def test_server_create_sets_up_the_default_network_once(cli, api) -> None:  # type: ignore[no-untyped-def]
    code, out, _ = cli("server", "create", "--name", "web-1")
    assert code == 0, out
    assert "job " in out
    code, out, _ = cli("server", "create", "--name", "web-2")
    assert code == 0
    from controller.cli.client import ApiClient, Credentials

    creds = Credentials(endpoint=api.endpoint, ak=api.ak, sk=api.sk, project_id=api.project_id)
    with ApiClient(creds) as client:
        p = api.project_id
        vpcs = [v for v in client.get(f"/v1/{p}/vpcs")["vpcs"] if v["name"] == "labcloud-default"]
        assert len(vpcs) == 1 and vpcs[0]["cidr"] == "10.77.0.0/16"
        subnets = client.get(f"/v1/{p}/subnets", [("vpc_id", vpcs[0]["id"])])["subnets"]
        assert [(s["cidr"], s["gateway_ip"]) for s in subnets] == [("10.77.0.0/24", "10.77.0.1")]
        groups = [
            g
            for g in client.get(f"/v1/{p}/security-groups")["security_groups"]
            if g["name"] == "labcloud-ssh"
        ]
        assert len(groups) == 1
        ingress = {
            (r["protocol"], r["port_range_min"], r["port_range_max"], r["remote_ip_prefix"])
            for r in groups[0]["security_group_rules"]
            if r["direction"] == "ingress" and not r.get("remote_group_id")  # skip the group's own default
        }
        assert ingress == {("tcp", 22, 22, "0.0.0.0/0"), ("icmp", None, None, "0.0.0.0/0")}
        servers = client.get(f"/v1/{p}/cloudservers/detail")["servers"]
    assert sorted(s["name"] for s in servers) == ["web-1", "web-2"]

    code, out, _ = cli("server", "list")
    assert code == 0 and "web-1" in out and "web-2" in out
    code, out, _ = cli("server", "show", "web-1")
    assert code == 0 and json.loads(out)["name"] == "web-1"


def test_server_create_wait_reports_a_failed_job(cli) -> None:  # type: ignore[no-untyped-def]
    # No agent has registered, so scheduling fails: the CLI must show the job's error and exit 1.
    code, out, err = cli("server", "create", "--name", "lonely", "--wait")
    assert code == 1
    assert "lonely" in out
    assert err.startswith("error ") and "failed" in err


def test_unknown_servers_and_bad_usage_are_errors(cli) -> None:  # type: ignore[no-untyped-def]
    code, _, err = cli("server", "show", "nope")
    assert code == 1 and err.startswith("error Ecs.0114: ")
    code, _, err = cli("server", "create", "--name", "x", "--vpc", "v-only")
    assert code == 1 and "--subnet" in err
    code, _, err = cli("server", "create", "--name", "x", "--image", "no-such-image")
    assert code == 1 and err.startswith("error image: ")


def test_missing_credentials_are_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["--credentials", str(tmp_path / "none.json"), "flavor", "list"])
    assert code == 1
    assert capsys.readouterr().err.startswith("error credentials: ")
