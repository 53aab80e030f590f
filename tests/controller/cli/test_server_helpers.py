"""Pure pieces of the server commands: request bodies, passwords, addresses, the ssh command line."""

from __future__ import annotations

import string

import pytest

from controller.cli.commands.lookup import fixed_ips
from controller.cli.commands.server import generate_password
from controller.cli.commands.server_actions import action_request
from controller.cli.commands.ssh import ssh_argv


@pytest.mark.parametrize(
    ("action", "hard", "expected"),
    [
        ("start", False, ("action", {"os-start": {"servers": [{"id": "s1"}]}})),
        ("stop", False, ("action", {"os-stop": {"servers": [{"id": "s1"}], "type": "SOFT"}})),
        ("stop", True, ("action", {"os-stop": {"servers": [{"id": "s1"}], "type": "HARD"}})),
        ("reboot", True, ("action", {"reboot": {"servers": [{"id": "s1"}], "type": "HARD"}})),
        (
            "delete",
            False,
            ("delete", {"servers": [{"id": "s1"}], "delete_publicip": False, "delete_volume": True}),
        ),
    ],
)
def test_actions_use_huaweis_batch_bodies(
    action: str, hard: bool, expected: tuple[str, dict[str, object]]
) -> None:
    assert action_request(action, "s1", hard) == expected


def test_generated_passwords_meet_huaweis_complexity_rules() -> None:
    for _ in range(50):
        password = generate_password()
        assert 8 <= len(password) <= 26
        assert any(c in string.ascii_uppercase for c in password)
        assert any(c in string.ascii_lowercase for c in password)
        assert any(c in string.digits for c in password)
        assert any(not c.isalnum() for c in password)


def test_fixed_ips_skip_floating_and_ipv6_addresses() -> None:
    server = {
        "addresses": {
            "vpc-1": [
                {"version": "4", "addr": "10.77.0.5", "OS-EXT-IPS:type": "fixed"},
                {"version": "6", "addr": "fd00::5", "OS-EXT-IPS:type": "fixed"},
                {"version": "4", "addr": "203.0.113.9", "OS-EXT-IPS:type": "floating"},
            ]
        }
    }
    assert fixed_ips(server) == ["10.77.0.5"]
    assert fixed_ips({"addresses": {}}) == []


def test_ssh_never_remembers_host_keys() -> None:
    argv = ssh_argv("/home/k.pem", "10.77.0.5", ["uname", "-a"])
    assert argv[:3] == ["ssh", "-i", "/home/k.pem"]
    assert "StrictHostKeyChecking=no" in argv and "UserKnownHostsFile=/dev/null" in argv
    assert argv[-3:] == ["root@10.77.0.5", "uname", "-a"]
