"""Steps of the user journey with the official Huawei SDK, shared by the end-to-end tests and the benchmarks."""

from __future__ import annotations

import time
from typing import Any

from huaweicloudsdkecs.v2 import (
    BatchRebootServersRequest,
    BatchRebootServersRequestBody,
    BatchRebootSeversOption,
    BatchStartServersOption,
    BatchStartServersRequest,
    BatchStartServersRequestBody,
    BatchStopServersOption,
    BatchStopServersRequest,
    BatchStopServersRequestBody,
    CreateServersRequest,
    CreateServersRequestBody,
    DeleteServersRequest,
    DeleteServersRequestBody,
    ListFlavorsRequest,
    NovaCreateKeypairOption,
    NovaCreateKeypairRequest,
    NovaCreateKeypairRequestBody,
    PrePaidServer,
    PrePaidServerNic,
    PrePaidServerRootVolume,
    PrePaidServerSecurityGroup,
    ServerId,
    ShowJobRequest,
    ShowServerRequest,
)
from huaweicloudsdkims.v2 import ListImagesRequest
from huaweicloudsdkvpc.v2 import (
    CreateSecurityGroupOption,
    CreateSecurityGroupRequest,
    CreateSecurityGroupRequestBody,
    CreateSecurityGroupRuleOption,
    CreateSecurityGroupRuleRequest,
    CreateSecurityGroupRuleRequestBody,
    CreateSubnetOption,
    CreateSubnetRequest,
    CreateSubnetRequestBody,
    CreateVpcOption,
    CreateVpcRequest,
    CreateVpcRequestBody,
)


def import_keypair(ecs: Any, name: str, public_key: str) -> None:
    ecs.nova_create_keypair(
        NovaCreateKeypairRequest(
            body=NovaCreateKeypairRequestBody(
                keypair=NovaCreateKeypairOption(name=name, public_key=public_key)
            )
        )
    )


def create_network(vpc: Any, *, name: str, cidr: str, subnet_cidr: str, gateway: str) -> tuple[str, str, str]:
    """A VPC, a subnet and a security group that allows SSH in: (vpc_id, subnet_id, security_group_id)."""
    vpc_id = vpc.create_vpc(
        CreateVpcRequest(body=CreateVpcRequestBody(vpc=CreateVpcOption(name=name, cidr=cidr)))
    ).vpc.id
    subnet_id = vpc.create_subnet(
        CreateSubnetRequest(
            body=CreateSubnetRequestBody(
                subnet=CreateSubnetOption(
                    name=f"{name}-subnet",
                    cidr=subnet_cidr,
                    gateway_ip=gateway,
                    vpc_id=vpc_id,
                    dhcp_enable=True,
                )
            )
        )
    ).subnet.id
    sg_id = vpc.create_security_group(
        CreateSecurityGroupRequest(
            body=CreateSecurityGroupRequestBody(
                security_group=CreateSecurityGroupOption(name=f"{name}-ssh", vpc_id=vpc_id)
            )
        )
    ).security_group.id
    vpc.create_security_group_rule(
        CreateSecurityGroupRuleRequest(
            body=CreateSecurityGroupRuleRequestBody(
                security_group_rule=CreateSecurityGroupRuleOption(
                    security_group_id=sg_id,
                    direction="ingress",
                    ethertype="IPv4",
                    protocol="tcp",
                    port_range_min=22,
                    port_range_max=22,
                    remote_ip_prefix="0.0.0.0/0",
                )
            )
        )
    )
    return vpc_id, subnet_id, sg_id


def small_image_id(ims: Any) -> str:
    images = ims.list_images(ListImagesRequest(imagetype="gold")).images
    tiny = [i for i in images if i.name.startswith("tinycloud")]
    assert tiny, f"the small image is not registered: {[i.name for i in images]}"
    return tiny[0].id


def smallest_flavor_id(ecs: Any) -> str:
    flavors = ecs.list_flavors(ListFlavorsRequest()).flavors
    return min(flavors, key=lambda f: (f.ram, int(f.vcpus))).id


def create_servers(
    ecs: Any,
    *,
    name: str,
    image_id: str,
    flavor_id: str,
    vpc_id: str,
    subnet_id: str,
    sg_id: str,
    key_name: str,
    count: int = 1,
) -> tuple[str, list[str]]:
    server = PrePaidServer(
        image_ref=image_id,
        flavor_ref=flavor_id,
        name=name,
        vpcid=vpc_id,
        nics=[PrePaidServerNic(subnet_id=subnet_id)],
        root_volume=PrePaidServerRootVolume(volumetype="SATA"),
        security_groups=[PrePaidServerSecurityGroup(id=sg_id)],
        key_name=key_name,
        count=count,
        is_auto_rename=count > 1,
    )
    resp = ecs.create_servers(CreateServersRequest(body=CreateServersRequestBody(server=server)))
    return resp.job_id, list(resp.server_ids)


def boot_small_servers(
    ecs: Any,
    ims: Any,
    *,
    name: str,
    network: tuple[str, str, str],
    key_name: str,
    flavor_id: str | None = None,
    count: int = 1,
    timeout: float = 600,
) -> list[tuple[str, str]]:
    """`count` servers of the small image (the smallest flavor unless one is given) on `network`, as
    `create_network` answered it, once their job succeeded: [(server id, fixed IP)]."""
    vpc_id, subnet_id, sg_id = network
    job_id, server_ids = create_servers(
        ecs,
        name=name,
        image_id=small_image_id(ims),
        flavor_id=flavor_id or smallest_flavor_id(ecs),
        vpc_id=vpc_id,
        subnet_id=subnet_id,
        sg_id=sg_id,
        key_name=key_name,
        count=count,
    )
    job = wait_job(ecs, job_id, timeout=timeout)
    assert job.status == "SUCCESS", (job.error_code, job.fail_reason)
    return [(server_id, fixed_ip(show(ecs, server_id))) for server_id in server_ids]


def show_job(ecs: Any, job_id: str) -> Any:
    return ecs.show_job(ShowJobRequest(job_id=job_id))


def wait_job(ecs: Any, job_id: str, timeout: float = 600) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        job = ecs.show_job(ShowJobRequest(job_id=job_id))
        if job.status in ("SUCCESS", "FAIL"):
            return job
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} still {job.status} after {timeout} s")
        time.sleep(0.05)


def show(ecs: Any, server_id: str) -> Any:
    return ecs.show_server(ShowServerRequest(server_id=server_id)).server


def fixed_ip(server: Any) -> str:
    for addresses in server.addresses.values():
        for address in addresses:
            if address.os_ext_ip_stype == "fixed":
                return address.addr
    raise AssertionError(f"server {server.id} has no fixed IP: {server.addresses}")


def _ids(server_ids: list[str]) -> list[ServerId]:
    return [ServerId(id=s) for s in server_ids]


def stop(ecs: Any, server_ids: list[str], kind: str = "SOFT") -> str:
    return ecs.batch_stop_servers(
        BatchStopServersRequest(
            body=BatchStopServersRequestBody(
                os_stop=BatchStopServersOption(servers=_ids(server_ids), type=kind)
            )
        )
    ).job_id


def start(ecs: Any, server_ids: list[str]) -> str:
    return ecs.batch_start_servers(
        BatchStartServersRequest(
            body=BatchStartServersRequestBody(os_start=BatchStartServersOption(servers=_ids(server_ids)))
        )
    ).job_id


def reboot(ecs: Any, server_ids: list[str], kind: str) -> str:
    return ecs.batch_reboot_servers(
        BatchRebootServersRequest(
            body=BatchRebootServersRequestBody(
                reboot=BatchRebootSeversOption(servers=_ids(server_ids), type=kind)
            )
        )
    ).job_id


def delete(ecs: Any, server_ids: list[str]) -> str:
    return ecs.delete_servers(
        DeleteServersRequest(
            body=DeleteServersRequestBody(
                servers=[ServerId(id=s) for s in server_ids], delete_publicip=True, delete_volume=True
            )
        )
    ).job_id
