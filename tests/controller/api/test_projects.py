"""The tenant admin API against a real controller: projects and AK/SK credentials made through it, used with the
official SDK, revoked (401 at once, through the credential cache), and deleted only once empty."""

from __future__ import annotations

from typing import Any

import pytest
from huaweicloudsdkecs.v2 import (
    NovaCreateKeypairOption,
    NovaCreateKeypairRequest,
    NovaCreateKeypairRequestBody,
    NovaDeleteKeypairRequest,
    NovaListKeypairsRequest,
    ShowServerLimitsRequest,
)
from huaweicloudsdkvpc.v2 import ListSecurityGroupsRequest
from sqlmodel import Session, func, select

from controller.cli.client import ApiCallError, ApiClient
from controller.models.project import Credential, Project
from tests.controller.api.helpers import expect_error
from tests.controller.api.test_admin_hosts import client_for
from tests.controller.conftest import ApiClients


def admin_call(api: Any, method: str, path: str, body: Any = None, clients: Any = None) -> Any:
    with client_for(api, clients) as client:
        return client.request(method, path, body=body)


def expect_api_error(call: Any, status: int, code: str) -> ApiCallError:
    with pytest.raises(ApiCallError) as info:
        call()
    assert (info.value.status, info.value.code) == (status, code), info.value
    return info.value


def tenant_from(api: Any, project_id: str, doc: dict[str, Any]) -> ApiClients:
    cred = doc["credential"]
    assert cred["project_id"] == project_id and cred["status"] == "active"
    return ApiClients(api.endpoint, cred["access"], cred["secret"], project_id)


def rows(api: Any, model: Any) -> int:
    with Session(api.ctx.engine) as session:
        return int(session.exec(select(func.count()).select_from(model)).one())


def test_a_new_project_works_like_the_admin_one(api) -> None:  # type: ignore[no-untyped-def]
    project = admin_call(
        api, "POST", "/v1/admin/projects", {"project": {"name": "team-a", "description": "A"}}
    )
    project = project["project"]
    assert (project["name"], project["description"]) == ("team-a", "A")
    names = {p["name"] for p in admin_call(api, "GET", "/v1/admin/projects")["projects"]}
    assert names == {"admin", "team-a"}

    doc = admin_call(api, "POST", f"/v1/admin/projects/{project['id']}/credentials")
    tenant = tenant_from(api, project["id"], doc)
    # The defaults every project starts with: quotas from the settings and a "default" security group.
    limits = tenant.ecs().show_server_limits(ShowServerLimitsRequest()).absolute
    assert limits.max_total_instances == api.ctx.settings.quota_instances
    groups = tenant.vpc().list_security_groups(ListSecurityGroupsRequest()).security_groups
    assert [g.name for g in groups] == ["default"]
    assert len(groups[0].security_group_rules) == 2

    shown = admin_call(api, "GET", "/v1/admin/projects/team-a")["project"]  # by name too
    assert shown["id"] == project["id"] and shown["resources"] == {}
    assert shown["quota"]["volumes"] == api.ctx.settings.quota_volumes


def test_project_input_is_checked_and_changes_nothing(api) -> None:  # type: ignore[no-untyped-def]
    admin_call(api, "POST", "/v1/admin/projects", {"project": {"name": "dup"}})
    before = rows(api, Project)
    for body, status, code, words in (
        ({"project": {"name": "dup"}}, 409, "Ecs.0104", "already exists"),
        ({"project": {"name": "bad name!"}}, 400, "Ecs.0005", "Invalid project name"),
        ({"project": {"name": ""}}, 400, "Ecs.0005", "Invalid project name"),
        ({"project": {"name": "x", "colour": "red"}}, 400, "Ecs.0005", "colour"),
        ({"project": {"name": "y", "description": "d" * 256}}, 400, "Ecs.0005", "description"),
    ):
        err = expect_api_error(lambda b=body: admin_call(api, "POST", "/v1/admin/projects", b), status, code)
        assert words in str(err), err
    assert rows(api, Project) == before
    expect_api_error(lambda: admin_call(api, "GET", "/v1/admin/projects/nosuch"), 404, "Ecs.0000")
    expect_api_error(
        lambda: admin_call(api, "POST", "/v1/admin/projects/nosuch/credentials"), 404, "Ecs.0000"
    )
    assert rows(api, Credential) == 1  # the admin's only


def test_revoked_credentials_are_refused_at_once(api) -> None:  # type: ignore[no-untyped-def]
    project = admin_call(api, "POST", "/v1/admin/projects", {"project": {"name": "team-r"}})["project"]
    path = f"/v1/admin/projects/{project['id']}/credentials"
    first = tenant_from(
        api, project["id"], admin_call(api, "POST", path, {"credential": {"description": "ci"}})
    )
    second = tenant_from(api, project["id"], admin_call(api, "POST", path))
    ecs = first.ecs()
    assert ecs.nova_list_keypairs(NovaListKeypairsRequest()).keypairs == []  # now in the credential cache

    listed = admin_call(api, "GET", path)["credentials"]
    assert {c["access"] for c in listed} == {first.ak, second.ak}
    assert all("secret" not in c for c in listed)
    assert {c["description"] for c in listed} == {"ci", ""}

    assert admin_call(api, "DELETE", f"/v1/admin/credentials/{first.ak}") is None
    expect_error(lambda: ecs.nova_list_keypairs(NovaListKeypairsRequest()), 401, "APIGW.0301")
    assert (
        second.ecs().nova_list_keypairs(NovaListKeypairsRequest()).keypairs == []
    )  # the other key still works
    every = {c["access"]: c for c in admin_call(api, "GET", "/v1/admin/credentials")["credentials"]}
    assert every[first.ak]["status"] == "inactive" and every[first.ak]["revoked_at"]
    assert every[second.ak]["status"] == "active" and every[api.ak]["is_admin"] is True
    # Revoking again changes nothing; an unknown key is 404; the last admin key cannot go.
    admin_call(api, "DELETE", f"/v1/admin/credentials/{first.ak}")
    expect_api_error(lambda: admin_call(api, "DELETE", "/v1/admin/credentials/LCNOSUCH"), 404, "Ecs.0000")
    err = expect_api_error(
        lambda: admin_call(api, "DELETE", f"/v1/admin/credentials/{api.ak}"), 409, "Ecs.0104"
    )
    assert "last admin credential" in str(err)
    assert admin_call(api, "GET", "/v1/admin/hosts") == {"hosts": []}  # and it still works


def test_a_project_is_deleted_only_when_empty(api) -> None:  # type: ignore[no-untyped-def]
    project = admin_call(api, "POST", "/v1/admin/projects", {"project": {"name": "team-d"}})["project"]
    doc = admin_call(api, "POST", f"/v1/admin/projects/{project['id']}/credentials")
    tenant = tenant_from(api, project["id"], doc)
    ecs = tenant.ecs()
    body = NovaCreateKeypairRequestBody(keypair=NovaCreateKeypairOption(name="k1"))
    ecs.nova_create_keypair(NovaCreateKeypairRequest(body=body))

    err = expect_api_error(
        lambda: admin_call(api, "DELETE", f"/v1/admin/projects/{project['id']}"), 409, "Ecs.0104"
    )
    assert "1 keypair" in str(err)
    assert admin_call(api, "GET", f"/v1/admin/projects/{project['id']}")["project"]["resources"] == {
        "keypair": 1
    }
    ecs.nova_delete_keypair(NovaDeleteKeypairRequest(keypair_name="k1"))
    expect_api_error(
        lambda: admin_call(api, "DELETE", f"/v1/admin/projects/{api.project_id}"), 409, "Ecs.0104"
    )

    admin_call(api, "DELETE", f"/v1/admin/projects/{project['id']}")
    expect_api_error(lambda: admin_call(api, "GET", f"/v1/admin/projects/{project['id']}"), 404, "Ecs.0000")
    expect_error(lambda: ecs.nova_list_keypairs(NovaListKeypairsRequest()), 401, "APIGW.0301")
    assert rows(api, Project) == 1 and rows(api, Credential) == 1


def test_tenant_admin_apis_are_403_for_other_projects(api) -> None:  # type: ignore[no-untyped-def]
    project = admin_call(api, "POST", "/v1/admin/projects", {"project": {"name": "team-x"}})["project"]
    tenant = tenant_from(
        api, project["id"], admin_call(api, "POST", f"/v1/admin/projects/{project['id']}/credentials")
    )
    before = (rows(api, Project), rows(api, Credential))
    with ApiClient(client_for(api, tenant).creds) as client:
        for method, path, body in (
            ("GET", "/v1/admin/projects", None),
            ("POST", "/v1/admin/projects", {"project": {"name": "mine"}}),
            ("GET", f"/v1/admin/projects/{project['id']}", None),
            ("DELETE", f"/v1/admin/projects/{project['id']}", None),
            ("POST", f"/v1/admin/projects/{project['id']}/credentials", None),
            ("GET", f"/v1/admin/projects/{project['id']}/credentials", None),
            ("GET", "/v1/admin/credentials", None),
            ("DELETE", f"/v1/admin/credentials/{api.ak}", None),
            ("GET", "/v1/admin/join-tokens", None),
            ("POST", "/v1/admin/join-tokens", None),
            ("DELETE", "/v1/admin/join-tokens/x", None),
        ):
            err = expect_api_error(
                lambda m=method, p=path, b=body: client.request(m, p, body=b), 403, "Ecs.0003"
            )
            assert "admin" in str(err)
    assert (rows(api, Project), rows(api, Credential)) == before
