"""Accelerator detection: overrides, the CPU-flag parser, the real verdict on this machine, the boot probe."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from agent.virt import accel
from agent.virt.accel import assess_accelerator, boot_probe, cpu_virt_flags, detect_accelerator

INTEL = """\
processor\t: 0
vendor_id\t: GenuineIntel
flags\t\t: fpu vme de pse tsc msr pae mce cx8 apic sep mtrr vmx smx est tm2 ssse3
bugs\t\t: spectre_v1

processor\t: 1
flags\t\t: fpu vme de pse tsc msr pae mce cx8 apic sep mtrr vmx smx est tm2 ssse3
"""
AMD = "processor : 0\nflags : fpu svm lm nx hypervisor\n"
NESTED_WITHOUT_VIRT = "processor : 0\nflags : fpu sse2 hypervisor lm nx\nvmx flags : ept vpid\n"


def _probe_kernel() -> Path | None:
    """A bootable kernel for the probe tests: LABCLOUD_TEST_KERNEL, else one in /boot."""
    candidates = [
        os.environ.get("LABCLOUD_TEST_KERNEL", ""),
        *map(str, sorted(Path("/boot").glob("vmlinuz-*"))),
    ]
    return next((Path(c) for c in candidates if c and Path(c).is_file()), None)


@pytest.mark.parametrize(
    ("text", "flags"),
    [
        (INTEL, {"vmx"}),
        (AMD, {"svm"}),
        (NESTED_WITHOUT_VIRT, set()),  # "vmx flags" is a different line: it lists VMX features, not VMX
        ("", set()),
        ("flags : svmx vmxon\n", set()),  # whole words only
    ],
)
def test_cpu_flag_parser(text: str, flags: set[str]) -> None:
    assert cpu_virt_flags(text) == flags


@pytest.mark.parametrize("override", ["kvm", "tcg"])
def test_override_wins(override: str, tmp_path: Path) -> None:
    # Even with no usable /dev/kvm at all.
    verdict = assess_accelerator(override, kvm_device=tmp_path / "no-kvm")
    assert verdict.accelerator == override
    assert detect_accelerator(override) == override


def test_unknown_override_is_refused() -> None:
    with pytest.raises(ValueError, match="override"):
        detect_accelerator("hvf")


def test_no_kvm_device_means_tcg(tmp_path: Path) -> None:
    verdict = assess_accelerator(kvm_device=tmp_path / "kvm")
    assert verdict.accelerator == "tcg"
    assert "not usable" in verdict.reason


def test_this_machine_is_tcg_because_the_cpu_lacks_vmx_and_svm() -> None:
    # Measured here: /dev/kvm opens and answers API version 12, yet the CPU flags have no vmx/svm.
    flags = cpu_virt_flags(Path("/proc/cpuinfo").read_text())
    if flags:
        pytest.skip(f"this host has {sorted(flags)}: the assertion below is about hosts without them")
    verdict = assess_accelerator()
    assert verdict.accelerator == "tcg"
    if Path("/dev/kvm").exists():
        assert "neither vmx nor svm" in verdict.reason, verdict.reason
    assert detect_accelerator() == "tcg"


def test_kvm_device_that_answers_is_checked_for_the_api_version() -> None:
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        pytest.skip("no read-write /dev/kvm here")
    assert accel.kvm_api_version() == accel.KVM_API_VERSION


def test_flags_present_without_probe_kernel_means_kvm(tmp_path: Path) -> None:
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        pytest.skip("needs a /dev/kvm that answers the ioctl")
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(AMD)
    verdict = assess_accelerator(cpuinfo=cpuinfo)
    assert verdict.accelerator == "kvm"
    assert "svm" in verdict.reason


def test_unreadable_probe_kernel_means_tcg(tmp_path: Path) -> None:
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        pytest.skip("needs a /dev/kvm that answers the ioctl")
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(INTEL)
    verdict = assess_accelerator(cpuinfo=cpuinfo, probe_kernel=tmp_path / "missing-vmlinuz")
    assert verdict.accelerator == "tcg"


def test_boot_probe_recognises_a_kernel_reaching_its_panic() -> None:
    """The probe machinery itself, under TCG so it runs anywhere: a real kernel boots to the root-fs panic."""
    kernel = _probe_kernel()
    if kernel is None:
        pytest.skip("no kernel: set LABCLOUD_TEST_KERNEL to a vmlinuz")
    verdict = boot_probe(kernel, accel="tcg", timeout=300)
    assert verdict.accelerator == "tcg"
    assert "expected panic" in verdict.reason, verdict.reason


def test_boot_probe_fails_when_qemu_refuses_the_kernel(tmp_path: Path) -> None:
    if shutil.which("qemu-system-x86_64") is None:
        pytest.skip("qemu-system-x86_64 is not installed")
    verdict = boot_probe(tmp_path / "no-such-vmlinuz", accel="tcg", timeout=300)
    assert verdict.accelerator == "tcg"
    assert "failed" in verdict.reason and "no-such-vmlinuz" in verdict.reason


def test_boot_probe_gives_up_on_a_kernel_that_never_panics(tmp_path: Path) -> None:
    """Zeros load as a flat binary that spins forever: only the probe's own timeout ends it."""
    if shutil.which("qemu-system-x86_64") is None:
        pytest.skip("qemu-system-x86_64 is not installed")
    junk = tmp_path / "vmlinuz"
    junk.write_bytes(b"\0" * 4096)
    verdict = boot_probe(junk, accel="tcg", timeout=2)
    assert verdict.accelerator == "tcg"
    assert "did not reach a kernel panic" in verdict.reason


def test_boot_probe_without_qemu(tmp_path: Path) -> None:
    verdict = boot_probe(tmp_path / "vmlinuz", qemu=str(tmp_path / "no-qemu"))
    assert verdict.accelerator == "tcg"
    assert "cannot run" in verdict.reason


def test_probe_verdict_is_cached_per_kernel_file(tmp_path: Path) -> None:
    """With vmx/svm present, the KVM boot probe runs once per kernel file and is then read from the cache."""
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        pytest.skip("needs a /dev/kvm that answers the ioctl")
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(INTEL)
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(b"\0" * 4096)  # fails the probe quickly; the verdict is what gets cached
    cache = tmp_path / "state" / "accel.json"
    calls = tmp_path / "calls"
    # A qemu stand-in that records each run, so the test sees whether the probe ran or the cache answered.
    fake_qemu = tmp_path / "qemu"
    fake_qemu.write_text(
        f"#!/bin/sh\necho run >> {calls}\necho 'Kernel panic - not syncing: VFS: Unable to mount root fs'\n"
    )
    fake_qemu.chmod(0o755)

    def assess() -> accel.AccelVerdict:
        return assess_accelerator(cpuinfo=cpuinfo, probe_kernel=kernel, cache_file=cache, qemu=str(fake_qemu))

    first = assess()
    assert first.accelerator == "kvm"
    assert json.loads(cache.read_text())["accelerator"] == "kvm"
    second = assess()
    assert second.accelerator == "kvm" and "cached" in second.reason
    assert calls.read_text().count("run") == 1
    os.utime(kernel, ns=(0, kernel.stat().st_mtime_ns + 1_000_000_000))  # a new kernel file: probe again
    assess()
    assert calls.read_text().count("run") == 2
