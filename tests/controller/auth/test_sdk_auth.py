"""Authentication as the official SDK meets it: wrong keys and foreign projects are refused in Huawei's shape."""

from __future__ import annotations

from dataclasses import replace

import pytest
from huaweicloudsdkcore.exceptions.exceptions import ClientRequestException
from huaweicloudsdkecs.v2 import ListServersDetailsRequest
from huaweicloudsdkvpc.v2 import ListVpcsRequest


def test_a_wrong_secret_key_is_401_apigw_0301(api) -> None:  # type: ignore[no-untyped-def]
    forged = replace(api, sk="not-the-secret-key")
    with pytest.raises(ClientRequestException) as refused:
        forged.ecs().list_servers_details(ListServersDetailsRequest())
    assert (refused.value.status_code, refused.value.error_code) == (401, "APIGW.0301")
    assert "signature" in refused.value.error_msg
    assert refused.value.request_id  # X-Request-Id is on errors too


def test_an_unknown_access_key_is_401(api) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ClientRequestException) as refused:
        replace(api, ak="LCNOSUCHKEY").vpc().list_vpcs(ListVpcsRequest())
    assert (refused.value.status_code, refused.value.error_code) == (401, "APIGW.0301")


def test_another_projects_path_is_refused(api) -> None:  # type: ignore[no-untyped-def]
    other = api.new_project("tenant-b")
    # tenant-b's keys, but the admin project's id in the path (and X-Project-Id)
    with pytest.raises(ClientRequestException) as refused:
        replace(other, project_id=api.project_id).ecs().list_servers_details(ListServersDetailsRequest())
    assert refused.value.status_code == 403
