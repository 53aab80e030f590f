"""`labcloud project …`, `labcloud credential …` and `labcloud host token …` through the CLI's real entry point
against a real controller: a credentials file written by `credential create` works with the CLI until revoked."""

from __future__ import annotations

import json
import stat
from pathlib import Path

from tests.controller.cli.conftest import rows


def test_projects_and_credentials(cli, api, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    code, out, _ = cli("project", "create", "team-c", "--description", "lab")
    assert code == 0 and "(team-c) created" in out
    code, out, _ = cli("project", "list")
    assert code == 0 and sorted(r[1] for r in rows(out)) == ["admin", "team-c"]
    project_id = next(r[0] for r in rows(out) if r[1] == "team-c")

    creds_file = tmp_path / "team-c.json"
    code, out, _ = cli("credential", "create", "--project", "team-c", "--output", str(creds_file))
    assert code == 0 and str(creds_file) in out
    assert stat.S_IMODE(creds_file.stat().st_mode) == 0o600
    doc = json.loads(creds_file.read_text())
    assert doc["project_id"] == project_id and doc["endpoint"] == api.endpoint and doc["sk"]
    # The file works as the CLI's credentials: the tenant's own (empty) key pairs.
    code, out, err = cli("--credentials", str(creds_file), "keypair", "list")
    assert code == 0, err
    code, _, err = cli("--credentials", str(creds_file), "project", "list")
    assert code == 1 and "Ecs.0003" in err  # not an admin

    code, out, _ = cli("credential", "list", "--project", "team-c")
    assert code == 0 and [r[:3] for r in rows(out)] == [[doc["ak"], project_id, "active"]]
    assert doc["sk"] not in out
    code, out, _ = cli("credential", "revoke", doc["ak"])
    assert code == 0 and "revoked" in out
    code, _, err = cli("--credentials", str(creds_file), "keypair", "list")
    assert code == 1 and "APIGW.0301" in err

    code, out, _ = cli("project", "show", "team-c")
    shown = json.loads(out)
    assert code == 0 and shown["id"] == project_id and shown["resources"] == {}
    code, out, _ = cli("project", "delete", "team-c")
    assert code == 0 and "deleted" in out
    code, _, err = cli("project", "show", "team-c")
    assert code == 1 and "team-c" in err
    code, _, err = cli("project", "delete", "admin")
    assert code == 1 and "Ecs.0104" in err


def test_host_tokens(cli) -> None:  # type: ignore[no-untyped-def]
    code, out, _ = cli("host", "token", "create", "--host-id", "host-7", "--expires", "600")
    assert code == 0
    token, summary = out.splitlines()
    assert token.startswith("lcjt-") and "for host host-7" in summary
    token_id = summary.split()[2]
    code, out, _ = cli("host", "token", "list")
    assert code == 0 and [r[:3] for r in rows(out)] == [[token_id, "host-7", "unused"]]
    assert token not in out
    code, out, _ = cli("host", "token", "revoke", token_id)
    assert code == 0 and "revoked" in out
    assert rows(cli("host", "token", "list")[1])[0][2] == "revoked"
    code, _, err = cli("host", "token", "revoke", "nosuch")
    assert code == 1 and "nosuch" in err
