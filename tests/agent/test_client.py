"""AgentClient against a real agent: `python -m agent` (uvicorn, 127.0.0.1, test driver, null network)."""

from __future__ import annotations

import ctypes
import hashlib
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from agent.client import AgentCallError, AgentClient, AgentUnreachable
from agent.net import names, router
from agent.schemas import (
    ImageRef,
    NetworkSpec,
    PortSpec,
    RuleSpec,
    SecurityGroupSpec,
    ServerAction,
    ServerSpec,
    SubnetSpec,
)

TOKEN = "client-test-token"
REPO = Path(__file__).resolve().parents[2]


@dataclass
class RunningAgent:
    url: str
    state_dir: Path
    log: Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_node(directory: Path) -> Path:
    node = directory / "node.xml"
    node.write_text(
        "<node><cpu><nodes>1</nodes><sockets>1</sockets><cores>2</cores><threads>1</threads>"
        "<mhz>2000</mhz><model>x86_64</model></cpu><memory>2097152</memory></node>"
    )
    return node


def agent_env(workdir: Path, port: int, network_driver: str) -> dict[str, str]:
    env = {
        **os.environ,
        "LABCLOUD_AGENT_STATE_DIR": str(workdir / "state"),
        "LABCLOUD_AGENT_LISTEN_PORT": str(port),
        "LABCLOUD_AGENT_JOIN_TOKEN": TOKEN,
        "LABCLOUD_AGENT_LIBVIRT_URI": f"test://{write_node(workdir)}",
        "LABCLOUD_AGENT_ACCELERATOR": "tcg",
        "LABCLOUD_AGENT_NETWORK_DRIVER": network_driver,
        "LABCLOUD_AGENT_ACPI_TIMEOUT_SECONDS": "1",
    }
    env.pop("LABCLOUD_AGENT_CONTROLLER_URL", None)
    return env


@contextmanager
def running_agent(
    argv: list[str], env: dict[str, str], workdir: Path, netns: str | None = None
) -> Iterator[RunningAgent]:
    """Run `argv` (an agent) until the block ends; it is up once /healthz answers (probed from `netns`)."""
    log = workdir / "agent.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{env['LABCLOUD_AGENT_LISTEN_PORT']}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, f"agent exited early:\n{log.read_text()}"
            try:
                with thread_in_netns(netns) if netns else nullcontext():
                    ready = httpx.get(f"{url}/healthz", headers={"Authorization": f"Bearer {TOKEN}"})
                if ready.is_success:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"agent did not come up:\n{log.read_text()}"
            time.sleep(0.1)
        yield RunningAgent(url=url, state_dir=workdir / "state", log=log)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[RunningAgent]:
    env = agent_env(tmp_path, free_port(), "null")
    with running_agent([sys.executable, "-m", "agent"], env, tmp_path) as running:
        yield running


def make_spec(tmp_path: Path) -> ServerSpec:
    base = tmp_path / "base.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), "64M"], check=True)
    subnet = SubnetSpec(id="sub-9", cidr="10.30.1.0/24", gateway_ip="10.30.1.1")
    return ServerSpec(
        id="srv-c1",
        name="client-test",
        hostname="client-test",
        project_id="proj-1",
        vcpus=1,
        ram_mib=128,
        root_disk_gib=1,
        image=ImageRef(id="img-1", checksum=hashlib.sha256(base.read_bytes()).hexdigest(), url=base.as_uri()),
        ports=[
            PortSpec(
                id="port-c1", mac="52:54:00:30:01:0a", ip="10.30.1.10", subnet_id="sub-9", vpc_id="vpc-9"
            )
        ],
        networks=[NetworkSpec(vpc_id="vpc-9", vni=9, cidr="10.30.0.0/16", subnets=[subnet])],
    )


def test_lifecycle_through_the_client(agent: RunningAgent, tmp_path: Path) -> None:
    spec = make_spec(tmp_path)
    with AgentClient(agent.url, TOKEN) as client:
        info = client.host_info()
        assert (info.vcpus, info.memory_mib, info.accelerator, info.servers) == (2, 2048, "tcg", [])

        assert client.put_server(spec, request_id="req-client-42").power == "running"
        assert client.get_server(spec.id).power == "running"
        assert client.server_action(spec.id, ServerAction(action="stop")).power == "shutoff"
        assert client.server_action(spec.id, ServerAction(action="reboot", type="HARD")).power == "running"

        assert client.console_output(spec.id) == ""
        (agent.state_dir / "instances" / spec.id / "console.log").write_text("a\nb\nc\n")
        assert client.console_output(spec.id, length=1) == "c\n"
        assert client.console_output(spec.id) == "a\nb\nc\n"

        group = SecurityGroupSpec(id="sg-1", rules=[RuleSpec(id="r", direction="ingress", protocol="icmp")])
        client.put_security_groups([group])
        assert [s.id for s in client.host_info().servers] == [spec.id]

        client.delete_server(spec.id)
        client.delete_server(spec.id)  # idempotent
        with pytest.raises(AgentCallError) as caught:
            client.get_server(spec.id)
    assert (caught.value.status, caught.value.code) == (404, "Agent.0404")
    assert not (agent.state_dir / "instances" / spec.id).exists()
    # The request id the client forwarded is in the agent's log lines for that request.
    assert any(
        "[req-client-42]" in line and "agent.service" in line for line in agent.log.read_text().splitlines()
    )


def test_call_errors_carry_status_code_and_message(agent: RunningAgent, tmp_path: Path) -> None:
    spec = make_spec(tmp_path)
    with AgentClient(agent.url, "wrong-token") as client, pytest.raises(AgentCallError) as caught:
        client.host_info()
    assert (caught.value.status, caught.value.code) == (401, "Agent.0401")

    broken = spec.model_copy(update={"image": spec.image.model_copy(update={"checksum": "a" * 64})})
    with AgentClient(agent.url, TOKEN) as client, pytest.raises(AgentCallError) as caught:
        client.put_server(broken)
    assert (caught.value.status, caught.value.code) == (500, "Agent.0200")
    assert "fetching image failed" in caught.value.message


def test_unreachable_agent() -> None:
    port = free_port()  # nothing listens there any more
    with AgentClient(f"http://127.0.0.1:{port}", TOKEN, timeout=5) as client, pytest.raises(AgentUnreachable):
        client.host_info()


def test_non_agent_error_body_still_becomes_a_call_error() -> None:
    # A proxy in front of the agent may answer with HTML: the client must not fail on parsing it.
    transport = httpx.MockTransport(lambda request: httpx.Response(502, text="<html>Bad Gateway</html>"))
    with (
        AgentClient("http://agent.invalid", TOKEN, transport=transport) as client,
        pytest.raises(AgentCallError) as caught,
    ):
        client.get_server("srv-1")
    assert (caught.value.status, caught.value.code) == (502, "HTTP.502")
    assert "Bad Gateway" in caught.value.message


# ---- the same agent with real host networking, inside a network namespace this test creates ----------------

_libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWNET = 0x40000000


@contextmanager
def thread_in_netns(ns: str) -> Iterator[None]:
    """Move this thread into `ns` (sockets made meanwhile stay there) and back out afterwards."""
    original = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{ns}", os.O_RDONLY)
    try:
        assert _libc.setns(target, CLONE_NEWNET) == 0, os.strerror(ctypes.get_errno())
        try:
            yield
        finally:
            assert _libc.setns(original, CLONE_NEWNET) == 0, os.strerror(ctypes.get_errno())
    finally:
        os.close(target)
        os.close(original)


def in_ns(ns: str, *argv: str) -> str:
    return subprocess.run(
        ["ip", "netns", "exec", ns, *argv], check=True, capture_output=True, text=True
    ).stdout


@pytest.fixture
def netns_agent() -> Iterator[tuple[str, RunningAgent]]:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and iproute2")
    # Under /tmp (world-searchable), not pytest's 0700 tmp_path, so dnsmasq can drop to nobody as on a host.
    workdir = Path(tempfile.mkdtemp(prefix="lctest-agent-", dir="/tmp"))
    workdir.chmod(0o755)
    ns = f"lctest-agent-{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    owner = str((workdir / "state" / "net").resolve())
    try:
        in_ns(ns, "ip", "link", "set", "lo", "up")
        env = agent_env(workdir, 8779, "linux")
        argv = ["ip", "netns", "exec", ns, sys.executable, "-m", "agent"]
        with running_agent(argv, env, workdir, netns=ns) as running:
            yield ns, running
    finally:
        # Router namespaces are held by processes that outlive the agent by design: stop any left behind.
        for vpc_id, holder in router.find(owner).items():
            router.stop(holder, vpc_id, owner)
        for pid in subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split():
            subprocess.run(["kill", "-9", pid], check=False)
        subprocess.run(["ip", "netns", "del", ns], check=False)
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.mark.netns
def test_agent_wires_real_host_networking(netns_agent: tuple[str, RunningAgent]) -> None:
    ns, running = netns_agent
    spec = make_spec(running.state_dir.parent)
    bridge = names.bridge_name("vpc-9")
    chain = names.ingress_chain("port-c1")
    with thread_in_netns(ns), AgentClient(running.url, TOKEN) as client:
        assert client.put_server(spec).power == "running"
        links = in_ns(ns, "ip", "-br", "link")
        assert bridge in links
        assert f":{chain} " in in_ns(ns, "iptables-save", "-t", "filter")
        hosts = list((running.state_dir / "net").rglob("*hosts*"))
        assert any("52:54:00:30:01:0a" in p.read_text() for p in hosts if p.is_file())
        assert client.put_server(spec).power == "running"  # idempotent with real networking too

        client.delete_server(spec.id)

        # The port's wiring goes at once; the VPC's bridge and router wait out their idle grace time.
        assert chain not in in_ns(ns, "iptables-save", "-t", "filter")
        assert not any("52:54:00:30:01:0a" in p.read_text() for p in hosts if p.is_file())
        assert bridge in in_ns(ns, "ip", "-br", "link")
    assert list(router.find(str((running.state_dir / "net").resolve()))) == ["vpc-9"]
