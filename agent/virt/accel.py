"""Which accelerator this host's guests get: KVM where hardware virtualization really works, else TCG.

A /dev/kvm that opens and answers ioctls is not enough: under some nested or paravirtual setups (PVM) it
does, yet guests cannot run. So "auto" also wants vmx/svm in the CPU flags and, when given a kernel, a real
boot under KVM that gets as far as the kernel's panic about the missing root file system. The probe's verdict
is cached per kernel file, since it costs a few seconds.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

log = logging.getLogger(__name__)

Accelerator = Literal["kvm", "tcg"]

KVM_GET_API_VERSION = 0xAE00  # _IO(KVMIO=0xAE, 0x00)
KVM_API_VERSION = 12  # the only stable KVM API version there has ever been

# What a kernel prints once it has booted as far as it can without a root file system.
_PANIC_MARKERS = ("VFS: Unable to mount root fs", "Kernel panic - not syncing")

_DEFAULT_QEMU = "qemu-system-x86_64"
_DEFAULT_PROBE_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class AccelVerdict:
    accelerator: Accelerator
    reason: str


def detect_accelerator(
    override: str = "auto", *, probe_kernel: Path | None = None, cache_file: Path | None = None
) -> Accelerator:
    """The accelerator for this host's guests; see `assess_accelerator` for the reasoning it logs."""
    return assess_accelerator(override, probe_kernel=probe_kernel, cache_file=cache_file).accelerator


def assess_accelerator(
    override: str = "auto",
    *,
    probe_kernel: Path | None = None,
    cache_file: Path | None = None,
    kvm_device: Path = Path("/dev/kvm"),
    cpuinfo: Path = Path("/proc/cpuinfo"),
    qemu: str = _DEFAULT_QEMU,
    probe_timeout: float = _DEFAULT_PROBE_TIMEOUT_S,
) -> AccelVerdict:
    """Decide KVM or TCG, with the reason. An override of "kvm" or "tcg" wins; "auto" checks the host."""
    verdict = _assess(override, probe_kernel, cache_file, kvm_device, cpuinfo, qemu, probe_timeout)
    log.info("accelerator: %s (%s)", verdict.accelerator, verdict.reason)
    return verdict


def cpu_virt_flags(cpuinfo_text: str) -> frozenset[str]:
    """The hardware virtualization flags (vmx for Intel VT-x, svm for AMD-V) in /proc/cpuinfo text."""
    found: set[str] = set()
    for line in cpuinfo_text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() == "flags":
            found.update(flag for flag in value.split() if flag in ("vmx", "svm"))
    return frozenset(found)


def kvm_api_version(device: Path = Path("/dev/kvm")) -> int:
    """KVM_GET_API_VERSION on the device, which must open read-write. Raises OSError if either fails."""
    fd = os.open(device, os.O_RDWR | os.O_CLOEXEC)
    try:
        return fcntl.ioctl(fd, KVM_GET_API_VERSION)
    finally:
        os.close(fd)


def boot_probe(
    kernel: Path,
    *,
    accel: Accelerator = "kvm",
    qemu: str = _DEFAULT_QEMU,
    timeout: float = _DEFAULT_PROBE_TIMEOUT_S,
) -> AccelVerdict:
    """Boot `kernel` with no root file system under `accel`; it passes if the kernel reaches its panic."""
    argv = [
        qemu,
        "-accel",
        accel,
        "-cpu",
        "host" if accel == "kvm" else "max",
        "-m",
        "128",
        "-nodefaults",
        "-display",
        "none",
        "-serial",
        "stdio",
        "-no-reboot",
        "-kernel",
        str(kernel),
        "-append",
        "console=ttyS0 panic=-1",
    ]
    log.debug("boot probe: %s", " ".join(argv))
    try:
        # panic=-1 reboots at once and -no-reboot then ends qemu, so a good boot exits by itself.
        done = subprocess.run(
            argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, errors="replace", timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return AccelVerdict(
            "tcg", f"{accel} boot probe of {kernel} did not reach a kernel panic in {timeout:g}s"
        )
    except OSError as exc:
        return AccelVerdict("tcg", f"cannot run {qemu}: {exc}")
    if any(marker in done.stdout for marker in _PANIC_MARKERS):
        return AccelVerdict(accel, f"{accel} boot probe of {kernel} booted to the expected panic")
    last = (done.stderr.strip() or done.stdout.strip() or "no output").splitlines()[-1]
    return AccelVerdict("tcg", f"{accel} boot probe of {kernel} failed (exit {done.returncode}): {last}")


def _assess(
    override: str,
    probe_kernel: Path | None,
    cache_file: Path | None,
    kvm_device: Path,
    cpuinfo: Path,
    qemu: str,
    probe_timeout: float,
) -> AccelVerdict:
    if override in ("kvm", "tcg"):
        return AccelVerdict("kvm" if override == "kvm" else "tcg", "set by configuration")
    if override != "auto":
        raise ValueError(f"accelerator override must be 'auto', 'kvm' or 'tcg', not {override!r}")
    try:
        version = kvm_api_version(kvm_device)
    except OSError as exc:
        return AccelVerdict("tcg", f"{kvm_device} is not usable: {exc.strerror or exc}")
    if version != KVM_API_VERSION:
        return AccelVerdict("tcg", f"{kvm_device} reports KVM API version {version}, not {KVM_API_VERSION}")
    try:
        flags = cpu_virt_flags(cpuinfo.read_text())
    except OSError as exc:
        return AccelVerdict("tcg", f"cannot read {cpuinfo}: {exc}")
    if not flags:
        return AccelVerdict(
            "tcg",
            f"{kvm_device} answers, but the CPU flags have neither vmx nor svm "
            "(hardware virtualization is not exposed to this host)",
        )
    if probe_kernel is None:
        return AccelVerdict(
            "kvm", f"{kvm_device} works and the CPU has {'/'.join(sorted(flags))}; no boot probe"
        )
    return _cached_probe(probe_kernel, cache_file, qemu, probe_timeout)


def _cached_probe(kernel: Path, cache_file: Path | None, qemu: str, timeout: float) -> AccelVerdict:
    try:
        key = {"kernel": str(kernel.resolve()), "mtime_ns": kernel.stat().st_mtime_ns}
    except OSError as exc:
        return AccelVerdict("tcg", f"probe kernel {kernel} is not readable: {exc}")
    cached = _read_cache(cache_file, key)
    if cached is not None:
        return AccelVerdict(cached.accelerator, f"{cached.reason} (cached)")
    verdict = boot_probe(kernel, accel="kvm", qemu=qemu, timeout=timeout)
    if cache_file is not None:
        _write_cache(cache_file, key, verdict)
    return verdict


def _read_cache(cache_file: Path | None, key: dict[str, object]) -> AccelVerdict | None:
    if cache_file is None:
        return None
    try:
        data = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("key") != key or data.get("accelerator") not in ("kvm", "tcg"):
        return None
    return AccelVerdict(data["accelerator"], str(data.get("reason", "")))


def _write_cache(cache_file: Path, key: dict[str, object], verdict: AccelVerdict) -> None:
    payload = {"key": key, "accelerator": verdict.accelerator, "reason": verdict.reason}
    tmp = cache_file.with_name(cache_file.name + ".tmp")
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(payload, indent=2) + "\n")
        tmp.replace(cache_file)  # atomic, so a crash never leaves half a verdict
    except OSError as exc:
        log.warning("cannot cache the accelerator verdict in %s: %s", cache_file, exc)
