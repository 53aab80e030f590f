"""Fixtures for the virt tests: golden-file regeneration and a fresh libvirt test-driver node per test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.virt.host import LibvirtHost

# A small host for libvirt's test driver. Each test gets its own file, so no state leaks between tests
# (test:///default would share one node across the whole process).
_NODE_XML = """\
<node>
  <cpu>
    <nodes>1</nodes><sockets>1</sockets><cores>4</cores><threads>1</threads>
    <mhz>2000</mhz><model>x86_64</model>
  </cpu>
  <memory>8388608</memory>
</node>
"""


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--update-goldens",
        action="store_true",
        default=False,
        help="rewrite tests/agent/virt/golden/*.xml from the current renderer instead of comparing",
    )


@pytest.fixture
def update_goldens(request: pytest.FixtureRequest) -> bool:
    return bool(request.config.getoption("--update-goldens"))


@pytest.fixture
def node_capacity() -> tuple[int, int]:
    """(vCPUs, MiB) of the node in `test_uri`."""
    return 4, 8192


@pytest.fixture
def test_uri(tmp_path: Path) -> str:
    """A libvirt test-driver URI backed by a fresh node.xml."""
    node = tmp_path / "node.xml"
    node.write_text(_NODE_XML)
    return f"test://{node}"


@pytest.fixture
def test_host(test_uri: str) -> Iterator[LibvirtHost]:
    host = LibvirtHost(test_uri, poll_interval=0.01)
    yield host
    host.close()
