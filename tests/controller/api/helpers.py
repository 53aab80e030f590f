"""Helpers for API tests through the official SDK: expected errors; VPCs, subnets, groups to start from."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from huaweicloudsdkcore.exceptions.exceptions import ClientRequestException
from huaweicloudsdkvpc.v2 import (
    CreateSecurityGroupOption,
    CreateSecurityGroupRequest,
    CreateSecurityGroupRequestBody,
    CreateSubnetOption,
    CreateSubnetRequest,
    CreateSubnetRequestBody,
    CreateVpcOption,
    CreateVpcRequest,
    CreateVpcRequestBody,
)


def expect_error(call: Callable[[], Any], status: int, code: str) -> ClientRequestException:
    """Run an SDK call that must fail with this HTTP status and Huawei error code."""
    with pytest.raises(ClientRequestException) as info:
        call()
    exc = info.value
    assert (exc.status_code, exc.error_code) == (status, code), exc.error_msg
    assert exc.error_msg
    return exc


def create_vpc(vpc: Any, name: str = "vpc-a", cidr: str = "10.20.0.0/16") -> Any:
    body = CreateVpcRequestBody(vpc=CreateVpcOption(name=name, cidr=cidr))
    return vpc.create_vpc(CreateVpcRequest(body=body)).vpc


def create_subnet(
    vpc: Any,
    vpc_id: str,
    *,
    name: str = "subnet-a",
    cidr: str = "10.20.1.0/24",
    gateway_ip: str = "10.20.1.1",
    **extra: Any,
) -> Any:
    option = CreateSubnetOption(name=name, cidr=cidr, gateway_ip=gateway_ip, vpc_id=vpc_id, **extra)
    return vpc.create_subnet(CreateSubnetRequest(body=CreateSubnetRequestBody(subnet=option))).subnet


def create_security_group(vpc: Any, name: str = "web", vpc_id: str | None = None) -> Any:
    body = CreateSecurityGroupRequestBody(security_group=CreateSecurityGroupOption(name=name, vpc_id=vpc_id))
    return vpc.create_security_group(CreateSecurityGroupRequest(body=body)).security_group
