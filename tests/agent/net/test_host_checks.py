"""The start-up check of br_netfilter and the sysctls: pure verdicts over read values, and the fix-then-recheck
flow driven through its function boundary (test doubles for /proc, modprobe and the sysctl writer)."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.errors import NetworkError
from agent.net import host_checks

IPT, IP6T = host_checks.BRIDGE_SYSCTLS
FWD = host_checks.FORWARDING_SYSCTL
GOOD = {IPT: "1", IP6T: "1"}


def test_all_set_is_fine() -> None:
    assert host_checks.problems(GOOD) == []
    assert host_checks.problems({**GOOD, FWD: "1"}, forwarding=True) == []
    assert host_checks.problems({**GOOD, FWD: "0"}) == []  # forwarding is checked only where it is needed


def test_missing_module_names_modprobe() -> None:
    [first, second] = host_checks.problems({IPT: None, IP6T: None})
    assert first.startswith(f"{IPT} does not exist: the br_netfilter module is not loaded")
    assert "fix: `modprobe br_netfilter`" in first and "security group" in first
    assert second.startswith(IP6T)


def test_a_zero_names_the_sysctl_to_set() -> None:
    assert host_checks.problems({IPT: "0\n", IP6T: "1"}) == [
        f"{IPT} is 0, labcloud needs 1; fix: `sysctl -w {IPT}=1` (and put it in /etc/sysctl.d/ to survive reboots)"
    ]
    [fwd] = host_checks.problems({**GOOD, FWD: "0"}, forwarding=True)
    assert f"`sysctl -w {FWD}=1`" in fwd


class FakeKernel:
    """Test double of /proc/sys with a modprobe that creates the bridge sysctls (at 0, like a fresh module)."""

    def __init__(
        self, values: dict[str, str | None], *, loadable: bool = True, writable: bool = True
    ) -> None:
        self.values = values
        self.loadable = loadable
        self.writable = writable
        self.calls: list[str] = []

    def read(self, names: list[str]) -> dict[str, str | None]:
        return {name: self.values.get(name) for name in names}

    def modprobe(self) -> None:
        self.calls.append("modprobe")
        if not self.loadable:
            raise NetworkError("modprobe: FATAL: Module br_netfilter not found")
        for name in host_checks.BRIDGE_SYSCTLS:
            self.values[name] = "0"

    def write(self, name: str, value: str) -> None:
        self.calls.append(f"{name}={value}")
        if not self.writable:
            raise PermissionError(13, "Permission denied")
        self.values[name] = value

    def ensure(self, forwarding: bool = False) -> None:
        host_checks.ensure_bridge_filtering(
            forwarding=forwarding, read=self.read, modprobe=self.modprobe, write=self.write
        )


def test_nothing_is_touched_when_all_is_well() -> None:
    kernel = FakeKernel(dict(GOOD))
    kernel.ensure()
    assert kernel.calls == []


def test_the_module_is_loaded_and_the_sysctls_set() -> None:
    kernel = FakeKernel({FWD: "0"})
    kernel.ensure(forwarding=True)
    assert kernel.calls == ["modprobe", f"{IPT}=1", f"{IP6T}=1", f"{FWD}=1"]
    assert host_checks.problems(kernel.values, forwarding=True) == []


def test_what_cannot_be_fixed_is_a_clear_error() -> None:
    kernel = FakeKernel({}, loadable=False)
    with pytest.raises(NetworkError) as err:
        kernel.ensure()
    assert err.value.message.startswith("host networking is not ready: ")
    assert "`modprobe br_netfilter`" in err.value.message

    kernel = FakeKernel({IPT: "0", IP6T: "1"}, writable=False)
    with pytest.raises(NetworkError, match=rf"{IPT} is 0, labcloud needs 1; fix: `sysctl -w {IPT}=1`"):
        kernel.ensure()


def test_reading_the_real_proc_gives_values_or_none(tmp_path: Path) -> None:
    (tmp_path / "net" / "bridge").mkdir(parents=True)
    (tmp_path / "net" / "bridge" / "bridge-nf-call-iptables").write_text("1\n")
    assert host_checks.read_sysctls([IPT, IP6T], root=tmp_path) == {IPT: "1", IP6T: None}
