"""LibvirtHost against libvirt's test driver (a fresh `test:///<tmp>/node.xml` per test)."""

from __future__ import annotations

import threading
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from agent.errors import NotFound, VirtError
from agent.virt.domain_xml import DiskSpec, DomainSpec, SerialSpec, render_domain
from agent.virt.host import LibvirtHost

ID_1 = "11111111-2222-4333-8444-555555555555"
ID_2 = "66666666-7777-4888-9999-aaaaaaaaaaaa"


def _xml(server_id: str, *, memory_mib: int = 128) -> str:
    return render_domain(
        DomainSpec(
            server_id=server_id,
            uuid=server_id,
            project_id="proj",
            server_name=f"name-{server_id[:4]}",
            domain_type="qemu",
            memory_mib=memory_mib,
            vcpus=1,
            disks=(DiskSpec(source=Path(f"/nonexistent/{server_id}.qcow2"), target="vda"),),
            serial=SerialSpec(path=Path(f"/nonexistent/{server_id}.log")),
            tb_cache_mib=32,
        )
    )


FOREIGN = """\
<domain type='qemu'>
  <name>someone-elses</name>
  <memory unit='MiB'>64</memory>
  <os><type arch='x86_64'>hvm</type></os>
</domain>
"""


def test_full_lifecycle(test_host: LibvirtHost) -> None:
    assert test_host.power_state(ID_1) == "missing"
    test_host.define(_xml(ID_1))
    assert test_host.power_state(ID_1) == "shutoff"
    test_host.start(ID_1)
    assert test_host.power_state(ID_1) == "running"
    test_host.shutdown(ID_1, timeout=30)
    assert test_host.power_state(ID_1) == "shutoff"
    test_host.start(ID_1)
    test_host.destroy(ID_1)
    assert test_host.power_state(ID_1) == "shutoff"
    test_host.undefine(ID_1)
    assert test_host.power_state(ID_1) == "missing"


def test_repeated_calls_are_harmless(test_host: LibvirtHost) -> None:
    test_host.define(_xml(ID_1))
    test_host.define(_xml(ID_1))
    test_host.start(ID_1)
    test_host.start(ID_1)
    assert test_host.power_state(ID_1) == "running"
    test_host.destroy(ID_1)
    test_host.destroy(ID_1)
    test_host.shutdown(ID_1)
    assert test_host.power_state(ID_1) == "shutoff"
    test_host.undefine(ID_1)
    test_host.undefine(ID_1)
    assert test_host.power_state(ID_1) == "missing"


def test_undefine_stops_a_running_domain_first(test_host: LibvirtHost) -> None:
    test_host.define(_xml(ID_1))
    test_host.start(ID_1)
    test_host.undefine(ID_1)
    assert test_host.power_state(ID_1) == "missing"


def test_missing_domains(test_host: LibvirtHost) -> None:
    # Verbs whose goal is "not running" or "gone" are already satisfied.
    test_host.destroy(ID_2)
    test_host.shutdown(ID_2)
    test_host.undefine(ID_2)
    assert test_host.power_state(ID_2) == "missing"
    # Verbs that need the domain say so with the agent's NotFound, never a libvirt error.
    with pytest.raises(NotFound):
        test_host.start(ID_2)
    with pytest.raises(NotFound):
        test_host.reboot(ID_2, hard=True)
    with pytest.raises(NotFound):
        test_host.reboot(ID_2, hard=False)
    with pytest.raises(NotFound):
        test_host.domain_xml(ID_2)


def test_redefine_updates_the_persistent_config(test_host: LibvirtHost) -> None:
    test_host.define(_xml(ID_1, memory_mib=128))
    test_host.define(_xml(ID_1, memory_mib=256))
    stored = ET.fromstring(test_host.domain_xml(ID_1, inactive=True))
    assert stored.findtext("memory") == str(256 * 1024)  # libvirt stores KiB


def test_invalid_xml_is_a_virt_error(test_host: LibvirtHost) -> None:
    broken = _xml(ID_1).replace("<vcpu>1</vcpu>", "<vcpu>1</vcpu><bogus/>")
    with pytest.raises(VirtError, match="define"):
        test_host.define(broken)
    assert test_host.power_state(ID_1) == "missing"


def test_list_servers_only_reports_labcloud_domains(test_host: LibvirtHost) -> None:
    test_host.define(FOREIGN)
    test_host.define(_xml(ID_1))
    test_host.define(_xml(ID_2))
    test_host.start(ID_2)
    assert test_host.list_servers() == {ID_1: "shutoff", ID_2: "running"}


def test_hard_reboot_keeps_it_running(test_host: LibvirtHost) -> None:
    test_host.define(_xml(ID_1))
    test_host.start(ID_1)
    test_host.reboot(ID_1, hard=True)
    assert test_host.power_state(ID_1) == "running"


def test_soft_reboot_falls_back_to_power_cycle(test_host: LibvirtHost) -> None:
    # The test driver reboots silently (no reboot event), so this takes the "guest ignored it" path.
    test_host.define(_xml(ID_1))
    test_host.start(ID_1)
    test_host.reboot(ID_1, hard=False, timeout=0.2)
    assert test_host.power_state(ID_1) == "running"


@pytest.mark.parametrize("hard", [True, False])
def test_reboot_of_a_stopped_domain_starts_it(test_host: LibvirtHost, hard: bool) -> None:
    test_host.define(_xml(ID_1))
    test_host.reboot(ID_1, hard=hard)
    assert test_host.power_state(ID_1) == "running"


def test_capacity_is_the_node(test_host: LibvirtHost, node_capacity: tuple[int, int]) -> None:
    assert test_host.capacity() == node_capacity


def test_unreachable_hypervisor_is_a_virt_error(tmp_path: Path) -> None:
    with LibvirtHost(f"test://{tmp_path}/no-such-node.xml") as host, pytest.raises(VirtError):
        host.capacity()


def test_reconnects_after_the_connection_is_closed_under_it(
    test_host: LibvirtHost, node_capacity: tuple[int, int]
) -> None:
    test_host.define(_xml(ID_1))
    broken = test_host._conn
    assert broken is not None
    broken.close()  # every later call on it fails with "invalid connection pointer"
    # A test:///<file> connection starts from the file again, so the fresh one has no domains.
    assert test_host.power_state(ID_1) == "missing"
    assert test_host.capacity() == node_capacity
    assert test_host._conn is not broken


def test_close_is_idempotent_and_the_host_reopens(
    test_host: LibvirtHost, node_capacity: tuple[int, int]
) -> None:
    test_host.capacity()
    test_host.close()
    test_host.close()
    assert test_host.capacity() == node_capacity


def test_concurrent_callers_share_the_connection(test_host: LibvirtHost) -> None:
    ids = [f"{n:08d}-0000-4000-8000-000000000000" for n in range(8)]
    errors: list[BaseException] = []

    def lifecycle(server_id: str) -> None:
        try:
            for _ in range(5):
                test_host.define(_xml(server_id))
                test_host.start(server_id)
                test_host.reboot(server_id, hard=True)
                test_host.destroy(server_id)
                test_host.undefine(server_id)
        except BaseException as exc:  # collected and re-raised in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=lifecycle, args=(sid,)) for sid in ids]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert test_host.list_servers() == {}
