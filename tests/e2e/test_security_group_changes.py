"""Security-group changes seen by a real guest: one TCG guest in a `labcloud up`, probed over TCP.

The guest runs a TCP server (busybox httpd) on a port its group does not open. A client in the cloud's namespace
(the host: its traffic reaches the guest through the VPC router and the bridge, so the guest's security-group
chains filter it like any other) connects again and again:

1. **A rule added** to the server's group through the VPC SDK opens the port; the delay from the API call to
   the first connection is logged (it must be well under 2 s; the test only insists on "eventually").
2. **The rule deleted**: the port is closed again; new connections time out (dropped, not refused).
3. **A group added** to the running server (ECS `addSecurityGroup`) whose rule opens the port; then
   **removed** (`removeSecurityGroup`): open, then closed again, each delay logged.

ECS-API.md lists no VPC port update (`PUT /v1/{p}/ports/{id}`), so a port's groups change through the server.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from huaweicloudsdkecs.v2 import (
    NovaAddSecurityGroupOption,
    NovaAssociateSecurityGroupRequest,
    NovaAssociateSecurityGroupRequestBody,
    NovaDisassociateSecurityGroupRequest,
    NovaDisassociateSecurityGroupRequestBody,
    NovaRemoveSecurityGroupOption,
)
from huaweicloudsdkvpc.v2 import (
    CreateSecurityGroupOption,
    CreateSecurityGroupRequest,
    CreateSecurityGroupRequestBody,
    CreateSecurityGroupRuleOption,
    CreateSecurityGroupRuleRequest,
    CreateSecurityGroupRuleRequestBody,
    DeleteSecurityGroupRuleRequest,
)

from tests.e2e import journey
from tests.support import netns, ssh
from tests.support.cloud import Cloud

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.filterwarnings("ignore:Method 'nova_:DeprecationWarning"),  # the SDK's Nova calls
]
log = logging.getLogger(__name__)

WAIT_S = 300.0
CHANGE_WAIT_S = 60.0  # generous: the figure that matters is the logged delay
APP_PORT = 8080


def _probe(cloud: Cloud, ip: str, timeout_s: float) -> str:
    """One new TCP connection from the cloud's namespace: 'ok', 'refused' (RST) or 'timeout' (dropped)."""
    with netns.entered(cloud.ns):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout_s)
        sock.connect((ip, APP_PORT))
        return "ok"
    except ConnectionRefusedError:
        return "refused"
    except TimeoutError:
        return "timeout"
    except OSError as exc:
        return f"error: {exc}"
    finally:
        sock.close()


def _delay_until(what: str, check: Callable[[], bool]) -> float:
    """Seconds until `check()` holds, polled; fails after CHANGE_WAIT_S."""
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < CHANGE_WAIT_S, f"still waiting for {what} after {CHANGE_WAIT_S} s"
        time.sleep(0.05)
    return time.monotonic() - started


def _opens(cloud: Cloud, ip: str, change: Callable[[], Any], what: str) -> float:
    """Make `change` (an API call) and measure from its start until a new connection to the port opens."""
    started = time.monotonic()
    change()
    _delay_until(what, lambda: _probe(cloud, ip, 0.5) == "ok")
    delay = time.monotonic() - started
    log.info("%s: port %s open after %.3f s", what, APP_PORT, delay)
    return delay


def _closes(cloud: Cloud, ip: str, change: Callable[[], Any], what: str) -> float:
    """Make `change` and measure until a new connection is dropped (to the start of the first probe that timed
    out, so the probe's own timeout is not counted); then check the drop holds with a longer probe."""
    started = time.monotonic()
    change()
    sent = started

    def dropped() -> bool:
        nonlocal sent
        sent = time.monotonic()
        return _probe(cloud, ip, 0.5) == "timeout"

    _delay_until(what, dropped)
    delay = sent - started
    log.info("%s: port %s closed after %.3f s", what, APP_PORT, delay)
    assert _probe(cloud, ip, 3.0) == "timeout"
    return delay


def _rule(vpc: Any, group_id: str) -> str:
    option = CreateSecurityGroupRuleOption(
        security_group_id=group_id,
        direction="ingress",
        ethertype="IPv4",
        protocol="tcp",
        port_range_min=APP_PORT,
        port_range_max=APP_PORT,
        remote_ip_prefix="0.0.0.0/0",
    )
    body = CreateSecurityGroupRuleRequestBody(security_group_rule=option)
    return str(
        vpc.create_security_group_rule(CreateSecurityGroupRuleRequest(body=body)).security_group_rule.id
    )


def test_rule_and_group_changes_reach_a_running_guest(cloud: Cloud, keypair: tuple[str, Path]) -> None:
    ecs, vpc = cloud.ecs(), cloud.vpc()
    public_key, key_path = keypair
    journey.import_keypair(ecs, "sgkey", public_key)
    vpc_id, subnet_id, sg_id = journey.create_network(
        vpc, name="sgchange", cidr="10.48.0.0/16", subnet_cidr="10.48.1.0/24", gateway="10.48.1.1"
    )
    web_id = vpc.create_security_group(
        CreateSecurityGroupRequest(
            body=CreateSecurityGroupRequestBody(
                security_group=CreateSecurityGroupOption(name="sgchange-web", vpc_id=vpc_id)
            )
        )
    ).security_group.id
    ((server_id, ip),) = journey.boot_small_servers(
        ecs,
        cloud.ims(),
        name="sgchange",
        network=(vpc_id, subnet_id, sg_id),
        key_name="sgkey",
        timeout=WAIT_S,
    )
    ssh.wait_and_run(cloud.ns, ip, key_path, f"busybox httpd -p {APP_PORT} -h /tmp")
    # Listening, yet closed by the group: dropped (a timeout), not refused.
    assert ssh.wait_and_run(cloud.ns, ip, key_path, f"netstat -ltn | grep -c ':{APP_PORT} '").strip() == "1"
    assert _probe(cloud, ip, 3.0) == "timeout"

    delays: dict[str, float] = {}
    rule_id = ""

    def add_rule() -> None:
        nonlocal rule_id
        rule_id = _rule(vpc, sg_id)

    delays["rule added"] = _opens(cloud, ip, add_rule, "rule added to the server's group")
    delays["rule deleted"] = _closes(
        cloud,
        ip,
        lambda: vpc.delete_security_group_rule(
            DeleteSecurityGroupRuleRequest(security_group_rule_id=rule_id)
        ),
        "rule deleted",
    )

    _rule(vpc, web_id)  # the web group opens the port, but the server is not in it yet
    assert _probe(cloud, ip, 3.0) == "timeout"
    add = NovaAssociateSecurityGroupRequestBody(add_security_group=NovaAddSecurityGroupOption(name=web_id))
    delays["group added"] = _opens(
        cloud,
        ip,
        lambda: ecs.nova_associate_security_group(
            NovaAssociateSecurityGroupRequest(server_id=server_id, body=add)
        ),
        "group added to the running server",
    )
    remove = NovaDisassociateSecurityGroupRequestBody(
        remove_security_group=NovaRemoveSecurityGroupOption(name="sgchange-web")
    )
    delays["group removed"] = _closes(
        cloud,
        ip,
        lambda: ecs.nova_disassociate_security_group(
            NovaDisassociateSecurityGroupRequest(server_id=server_id, body=remove)
        ),
        "group removed from the running server",
    )
    # SSH (the first group's rule) was never disturbed by the changes of the others.
    assert ssh.wait_and_run(cloud.ns, ip, key_path, "echo still-here", timeout=60).strip() == "still-here"
    log.info("security-group change delays (s): %s", {k: round(v, 3) for k, v in delays.items()})

    job = journey.wait_job(ecs, journey.delete(ecs, [server_id]), timeout=WAIT_S)
    assert job.status == "SUCCESS", (job.error_code, job.fail_reason)
