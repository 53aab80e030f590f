"""EVS quotas (volumes, gigabytes) through the official EVS SDK: enforced on create and extend (refusals
create nothing), shown by `cinder_list_quotas` with usage, and set through the admin quota API."""

from __future__ import annotations

from typing import Any

from huaweicloudsdkevs.v2 import (
    CinderListQuotasRequest,
    CreateVolumeOption,
    CreateVolumeRequest,
    CreateVolumeRequestBody,
    OsExtend,
    ResizeVolumeRequest,
    ResizeVolumeRequestBody,
)
from sqlmodel import Session, func, select

from controller.models.volume import Volume
from tests.controller.api.helpers import expect_error
from tests.controller.api.test_projects import admin_call
from tests.controller.api.test_volumes import evs_client, wait_evs_job


def create(evs: Any, size: int, count: int = 1, volume_type: str = "SSD") -> Any:
    option = CreateVolumeOption(availability_zone="lab-1a", size=size, volume_type=volume_type, count=count)
    return evs.create_volume(CreateVolumeRequest(body=CreateVolumeRequestBody(volume=option)))


def volume_rows(api: Any) -> int:
    with Session(api.ctx.engine) as session:
        return int(session.exec(select(func.count()).select_from(Volume)).one())


def quota_set(evs: Any, project_id: str) -> Any:
    return evs.cinder_list_quotas(
        CinderListQuotasRequest(target_project_id=project_id, usage="true")
    ).quota_set


def test_volume_quotas_are_enforced_and_shown(api) -> None:  # type: ignore[no-untyped-def]
    tenant = api.new_project("tenant-v")
    evs = evs_client(tenant)
    shown = quota_set(evs, tenant.project_id)
    assert (shown.volumes.limit, shown.volumes.in_use) == (api.ctx.settings.quota_volumes, 0)
    assert (shown.gigabytes.limit, shown.gigabytes.in_use) == (api.ctx.settings.quota_gigabytes, 0)

    doc = admin_call(api, "PUT", f"/v1/admin/projects/{tenant.project_id}/quotas", {"quota": {"volumes": 3}})
    assert doc["quota"]["volumes"] == 3 and doc["usage"]["volumes"] == 0
    admin_call(api, "PUT", f"/v1/admin/projects/{tenant.project_id}/quotas", {"quota": {"gigabytes": 10}})

    created = create(evs, size=4, count=2)
    assert wait_evs_job(evs, created.job_id).status == "SUCCESS"
    before = volume_rows(api)
    err = expect_error(lambda: create(evs, size=4), 403, "EVS.0105")  # 12 GiB > 10
    assert "gigabytes" in err.error_msg and "8 GiB of 10 GiB already used" in err.error_msg
    err = expect_error(lambda: create(evs, size=1, count=2), 403, "EVS.0105")  # 4 volumes > 3
    assert "volumes" in err.error_msg
    resize = ResizeVolumeRequestBody(os_extend=OsExtend(new_size=7))  # +3 GiB: 11 > 10
    expect_error(
        lambda: evs.resize_volume(ResizeVolumeRequest(volume_id=created.volume_ids[0], body=resize)),
        403,
        "EVS.0105",
    )
    assert volume_rows(api) == before
    shown = quota_set(evs, tenant.project_id)
    assert (shown.volumes.in_use, shown.volumes.limit) == (2, 3)
    assert (shown.gigabytes.in_use, shown.gigabytes.limit) == (8, 10)
    assert (shown.volumes_ssd.in_use, shown.gigabytes_ssd.in_use, shown.volumes_sata.in_use) == (2, 8, 0)

    # Within quota both still work; other projects are not counted, and their quota sets are 404.
    job = create(evs, size=2).job_id
    assert wait_evs_job(evs, job).status == "SUCCESS"
    assert quota_set(evs_client(api), api.project_id).volumes.in_use == 0
    expect_error(lambda: quota_set(evs, api.project_id), 404, "EVS.2025")
    assert quota_set(evs_client(api), tenant.project_id).volumes.in_use == 3  # an admin may look
