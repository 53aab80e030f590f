"""`labcloud host list|disable|enable` and `labcloud quota show|set` against a real controller and a real
test-driver agent."""

from __future__ import annotations

from tests.controller.cli.conftest import rows


def test_host_list_disable_enable(cli, agent_host) -> None:  # type: ignore[no-untyped-def]
    code, out, _ = cli("host", "list")
    assert code == 0
    assert out.splitlines()[0].split()[:5] == ["ID", "HOSTNAME", "AZ", "STATE", "STATUS"]
    (row,) = rows(out)
    assert row[0] == agent_host.host_id and row[3:5] == ["up", "enabled"]

    code, out, _ = cli("host", "disable", agent_host.host_id, "--reason", "disk swap")
    assert code == 0 and "disabled" in out
    (row,) = rows(cli("host", "list")[1])
    assert row[3:5] == ["up", "disabled"] and row[-2:] == ["disk", "swap"]

    hostname = row[1]  # a host can also be named by its hostname
    code, out, _ = cli("host", "enable", hostname)
    assert code == 0 and f"host {agent_host.host_id}" in out
    (row,) = rows(cli("host", "list")[1])
    assert row[4] == "enabled" and len(row) == 8  # no reason column text

    code, out, err = cli("host", "disable", "no-such-host")
    assert code == 1 and out == "" and "no host 'no-such-host'" in err


def test_quota_show_and_set(cli, api) -> None:  # type: ignore[no-untyped-def]
    code, out, _ = cli("quota", "show")
    assert code == 0
    shown = {r[0]: r[1:] for r in rows(out)}
    assert shown["instances"] == [str(api.ctx.settings.quota_instances), "0"]

    code, out, _ = cli("quota", "set", "--instances", "5", "--ram", "-1")
    assert code == 0
    shown = {r[0]: r[1:] for r in rows(out)}
    assert shown["instances"] == ["5", "0"] and shown["ram"] == ["unlimited", "0"]

    code, out, _ = cli("quota", "set", "--instances", "default")
    shown = {r[0]: r[1:] for r in rows(out)}
    assert code == 0 and shown["instances"][0] == str(api.ctx.settings.quota_instances)
    assert shown["ram"][0] == "unlimited"

    tenant = api.new_project("cli-tenant")
    code, out, _ = cli("quota", "set", "--project", tenant.project_id, "--key-pairs", "2")
    assert code == 0 and {r[0]: r[1] for r in rows(out)}["key_pairs"] == "2"
    code, _, err = cli("quota", "set", "--project", "nosuch", "--cores", "1")
    assert code == 1 and "nosuch" in err
