"""Tenant isolation through the official SDKs: two projects made with the admin API, each using its own AK/SK.

Project A owns one of every resource kind (a server on a real test-driver agent, key pair, VPC, subnet, security
group and rule, volume, server group, private image, jobs). Project B gets 404 (never 403: nothing says the id
exists) for show, update, delete and actions on each of them and for using them in its own requests, its lists
never show them, and A's resources are unchanged afterwards. A second walk covers the kinds added later (EVS
snapshots, CBR vaults/backups/checkpoints/restores, EIPs, image update/capture/use, resize, reinstall, change
of OS, a server's security groups and block devices). Admin-only routes are tests/controller/api/test_admin_routes.py.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
from huaweicloudsdkcbr.v1 import (
    DeleteBackupRequest,
    DeleteVaultRequest,
    ListBackupsRequest,
    ListOpLogsRequest,
    ListVaultRequest,
    ShowBackupRequest,
    ShowCheckpointRequest,
    ShowVaultRequest,
    UpdateVaultRequest,
    VaultUpdate,
    VaultUpdateReq,
)
from huaweicloudsdkcore.exceptions.exceptions import ClientRequestException
from huaweicloudsdkecs.v2 import (
    AttachServerVolumeOption,
    AttachServerVolumeRequest,
    AttachServerVolumeRequestBody,
    BatchRebootServersRequest,
    BatchRebootServersRequestBody,
    BatchRebootSeversOption,
    BatchStartServersOption,
    BatchStartServersRequest,
    BatchStartServersRequestBody,
    BatchStopServersOption,
    BatchStopServersRequest,
    BatchStopServersRequestBody,
    CreateServerGroupOption,
    CreateServerGroupRequest,
    CreateServerGroupRequestBody,
    DeleteServerGroupRequest,
    DeleteServersRequest,
    DeleteServersRequestBody,
    DetachServerVolumeRequest,
    ListResizeFlavorsRequest,
    ListServerBlockDevicesRequest,
    ListServerGroupsRequest,
    ListServerInterfacesRequest,
    ListServersDetailsRequest,
    ListServerVolumeAttachmentsRequest,
    NovaAddSecurityGroupOption,
    NovaAssociateSecurityGroupRequest,
    NovaAssociateSecurityGroupRequestBody,
    NovaCreateKeypairOption,
    NovaCreateKeypairRequest,
    NovaCreateKeypairRequestBody,
    NovaDeleteKeypairRequest,
    NovaListKeypairsRequest,
    NovaListServerSecurityGroupsRequest,
    NovaShowKeypairRequest,
    PostPaidServerSchedulerHints,
    ServerId,
    ShowJobRequest,
    ShowServerConsoleOutputRequest,
    ShowServerGroupRequest,
    ShowServerRequest,
)
from huaweicloudsdkeip.v2 import (
    CreatePublicipBandwidthOption,
    CreatePublicipOption,
    CreatePublicipRequest,
    CreatePublicipRequestBody,
    DeletePublicipRequest,
    EipClient,
    ListPublicipsRequest,
    ShowPublicipRequest,
    UpdatePublicipOption,
    UpdatePublicipRequest,
    UpdatePublicipsRequestBody,
)
from huaweicloudsdkevs.v2 import (
    DeleteSnapshotRequest,
    DeleteVolumeRequest,
    ListSnapshotsRequest,
    ListVolumesRequest,
    OsExtend,
    ResizeVolumeRequest,
    ResizeVolumeRequestBody,
    ShowSnapshotRequest,
    ShowVolumeRequest,
    UpdateSnapshotOption,
    UpdateSnapshotRequest,
    UpdateSnapshotRequestBody,
    UpdateVolumeOption,
    UpdateVolumeRequest,
    UpdateVolumeRequestBody,
)
from huaweicloudsdkims.v2 import (
    GlanceDeleteImageRequest,
    GlanceShowImageRequest,
    ListImagesRequest,
    UpdateImageRequest,
    UpdateImageRequestBody,
)
from huaweicloudsdkvpc.v2 import (
    CreateSecurityGroupRuleOption,
    CreateSecurityGroupRuleRequest,
    CreateSecurityGroupRuleRequestBody,
    DeleteSecurityGroupRequest,
    DeleteSecurityGroupRuleRequest,
    DeleteSubnetRequest,
    DeleteVpcRequest,
    ListSecurityGroupRulesRequest,
    ListSecurityGroupsRequest,
    ListSubnetsRequest,
    ListVpcsRequest,
    ShowSecurityGroupRequest,
    ShowSecurityGroupRuleRequest,
    ShowSubnetRequest,
    ShowVpcRequest,
    UpdateSubnetOption,
    UpdateSubnetRequest,
    UpdateSubnetRequestBody,
    UpdateVpcOption,
    UpdateVpcRequest,
    UpdateVpcRequestBody,
)
from sqlalchemy import func, select
from sqlmodel import Session, SQLModel

from controller.db import session_scope
from controller.models.image import ACTIVE, Image
from controller.services.projects import owned_resources
from tests.controller.api.helpers import create_security_group, create_subnet
from tests.controller.api.server_helpers import create_and_wait, make_net, server
from tests.controller.api.test_image_capture import capture
from tests.controller.api.test_projects import admin_call, tenant_from
from tests.controller.api.test_snapshots import create_snapshot, rollback, wait_snapshot
from tests.controller.api.test_volume_quotas import create as create_volume
from tests.controller.api.test_volumes import create_volume as new_volume
from tests.controller.api.test_volumes import evs_client, wait_evs_job
from tests.support.server_changes import change_os, reinstall, resize


@pytest.fixture
def api_settings(seed_image_file: Path) -> dict[str, Any]:
    return {"seed_image": seed_image_file}


def expect_not_found(call: Any) -> ClientRequestException:
    """A 404 in the Huawei shape from a route that exists (APIGW.0101 would mean "no such API")."""
    with pytest.raises(ClientRequestException) as info:
        call()
    exc = info.value
    assert exc.status_code == 404 and exc.error_code not in ("", None, "APIGW.0101"), (
        exc.error_code,
        exc.error_msg,
    )
    assert exc.error_msg
    return exc


def eip_client(clients: Any) -> EipClient:
    return clients._build(EipClient)


def create_eip(eip: EipClient) -> Any:
    option = CreatePublicipOption(type="5_bgp")
    bandwidth = CreatePublicipBandwidthOption(share_type="PER", name="bw", size=10)
    body = CreatePublicipRequestBody(publicip=option, bandwidth=bandwidth)
    return eip.create_publicip(CreatePublicipRequest(body=body)).publicip


def bind_eip(eip: EipClient, eip_id: str, port_id: str) -> Any:
    body = UpdatePublicipsRequestBody(publicip=UpdatePublicipOption(port_id=port_id))
    return eip.update_publicip(UpdatePublicipRequest(publicip_id=eip_id, body=body))


def add_security_group(ecs: Any, server_id: str, name: str) -> Any:
    body = NovaAssociateSecurityGroupRequestBody(add_security_group=NovaAddSecurityGroupOption(name=name))
    return ecs.nova_associate_security_group(
        NovaAssociateSecurityGroupRequest(server_id=server_id, body=body)
    )


def new_tenant(api: Any, name: str) -> Any:
    project = admin_call(api, "POST", "/v1/admin/projects", {"project": {"name": name}})["project"]
    return tenant_from(
        api, project["id"], admin_call(api, "POST", f"/v1/admin/projects/{project['id']}/credentials")
    )


def test_another_projects_resources_are_404_everywhere(api, agent_host) -> None:  # type: ignore[no-untyped-def]
    a, b = new_tenant(api, "tenant-a"), new_tenant(api, "tenant-b")
    a_ecs, a_vpc, a_evs = a.ecs(), a.vpc(), evs_client(a)

    # --- project A: one of everything ---
    net = make_net(api, clients=a)
    group = create_security_group(a_vpc, "web")
    rule_body = CreateSecurityGroupRuleRequestBody(
        security_group_rule=CreateSecurityGroupRuleOption(
            security_group_id=group.id,
            direction="ingress",
            protocol="tcp",
            port_range_min=22,
            port_range_max=22,
        )
    )
    rule = a_vpc.create_security_group_rule(
        CreateSecurityGroupRuleRequest(body=rule_body)
    ).security_group_rule
    a_ecs.nova_create_keypair(
        NovaCreateKeypairRequest(
            body=NovaCreateKeypairRequestBody(keypair=NovaCreateKeypairOption(name="shared"))
        )
    )
    server_group = a_ecs.create_server_group(
        CreateServerGroupRequest(
            body=CreateServerGroupRequestBody(
                server_group=CreateServerGroupOption(name="sg", policies=["anti-affinity"])
            )
        )
    ).server_group
    (server_id,), job = create_and_wait(
        a_ecs, server(net, osscheduler_hints=PostPaidServerSchedulerHints(group=server_group.id))
    )
    assert job.status == "SUCCESS", job.fail_reason
    made = create_volume(a_evs, size=1)
    assert wait_evs_job(a_evs, made.job_id).status == "SUCCESS"
    (volume_id,) = made.volume_ids
    with session_scope(api.ctx.engine) as session:
        image = Image(name="a-private", owner=a.project_id, status=ACTIVE, visibility="private")
        session.add(image)
        session.flush()
        image_id = image.id
    with Session(api.ctx.engine) as session:
        a_before = owned_resources(session, a.project_id)

    # --- project B: 404 for every id of A's, whatever it does with it ---
    b_ecs, b_vpc, b_evs, b_ims = b.ecs(), b.vpc(), evs_client(b), b.ims()
    b_net = make_net(api, clients=b, cidr="10.30.0.0/16", subnet_cidr="10.30.1.0/24", gateway="10.30.1.1")
    servers = [ServerId(id=server_id)]
    calls = {
        "show server": lambda: b_ecs.show_server(ShowServerRequest(server_id=server_id)),
        "server interfaces": lambda: b_ecs.list_server_interfaces(
            ListServerInterfacesRequest(server_id=server_id)
        ),
        "server volumes": lambda: b_ecs.list_server_volume_attachments(
            ListServerVolumeAttachmentsRequest(server_id=server_id)
        ),
        "console": lambda: b_ecs.show_server_console_output(
            ShowServerConsoleOutputRequest(server_id=server_id)
        ),
        "stop server": lambda: b_ecs.batch_stop_servers(
            BatchStopServersRequest(
                body=BatchStopServersRequestBody(os_stop=BatchStopServersOption(servers=servers))
            )
        ),
        "start server": lambda: b_ecs.batch_start_servers(
            BatchStartServersRequest(
                body=BatchStartServersRequestBody(os_start=BatchStartServersOption(servers=servers))
            )
        ),
        "reboot server": lambda: b_ecs.batch_reboot_servers(
            BatchRebootServersRequest(
                body=BatchRebootServersRequestBody(
                    reboot=BatchRebootSeversOption(servers=servers, type="SOFT")
                )
            )
        ),
        "delete server": lambda: b_ecs.delete_servers(
            DeleteServersRequest(body=DeleteServersRequestBody(servers=servers))
        ),
        "attach A's volume to A's server": lambda: b_ecs.attach_server_volume(
            AttachServerVolumeRequest(
                server_id=server_id,
                body=AttachServerVolumeRequestBody(
                    volume_attachment=AttachServerVolumeOption(volume_id=volume_id)
                ),
            )
        ),
        "detach": lambda: b_ecs.detach_server_volume(
            DetachServerVolumeRequest(server_id=server_id, volume_id=volume_id)
        ),
        "show job": lambda: b_ecs.show_job(ShowJobRequest(job_id=job.job_id)),
        "show keypair": lambda: b_ecs.nova_show_keypair(NovaShowKeypairRequest(keypair_name="shared")),
        "delete keypair": lambda: b_ecs.nova_delete_keypair(NovaDeleteKeypairRequest(keypair_name="shared")),
        "show server group": lambda: b_ecs.show_server_group(
            ShowServerGroupRequest(server_group_id=server_group.id)
        ),
        "delete server group": lambda: b_ecs.delete_server_group(
            DeleteServerGroupRequest(server_group_id=server_group.id)
        ),
        "show vpc": lambda: b_vpc.show_vpc(ShowVpcRequest(vpc_id=net.vpc_id)),
        "update vpc": lambda: b_vpc.update_vpc(
            UpdateVpcRequest(vpc_id=net.vpc_id, body=UpdateVpcRequestBody(vpc=UpdateVpcOption(name="mine")))
        ),
        "delete vpc": lambda: b_vpc.delete_vpc(DeleteVpcRequest(vpc_id=net.vpc_id)),
        "subnet in A's vpc": lambda: create_subnet(
            b_vpc, net.vpc_id, cidr="10.20.9.0/24", gateway_ip="10.20.9.1"
        ),
        "show subnet": lambda: b_vpc.show_subnet(ShowSubnetRequest(subnet_id=net.subnet_id)),
        "update subnet": lambda: b_vpc.update_subnet(
            UpdateSubnetRequest(
                vpc_id=net.vpc_id,
                subnet_id=net.subnet_id,
                body=UpdateSubnetRequestBody(subnet=UpdateSubnetOption(name="mine")),
            )
        ),
        "delete subnet": lambda: b_vpc.delete_subnet(
            DeleteSubnetRequest(vpc_id=net.vpc_id, subnet_id=net.subnet_id)
        ),
        "show security group": lambda: b_vpc.show_security_group(
            ShowSecurityGroupRequest(security_group_id=group.id)
        ),
        "delete security group": lambda: b_vpc.delete_security_group(
            DeleteSecurityGroupRequest(security_group_id=group.id)
        ),
        "rule in A's group": lambda: b_vpc.create_security_group_rule(
            CreateSecurityGroupRuleRequest(body=rule_body)
        ),
        "show rule": lambda: b_vpc.show_security_group_rule(
            ShowSecurityGroupRuleRequest(security_group_rule_id=rule.id)
        ),
        "delete rule": lambda: b_vpc.delete_security_group_rule(
            DeleteSecurityGroupRuleRequest(security_group_rule_id=rule.id)
        ),
        "show volume": lambda: b_evs.show_volume(ShowVolumeRequest(volume_id=volume_id)),
        "update volume": lambda: b_evs.update_volume(
            UpdateVolumeRequest(
                volume_id=volume_id, body=UpdateVolumeRequestBody(volume=UpdateVolumeOption(name="mine"))
            )
        ),
        "extend volume": lambda: b_evs.resize_volume(
            ResizeVolumeRequest(
                volume_id=volume_id, body=ResizeVolumeRequestBody(os_extend=OsExtend(new_size=2))
            )
        ),
        "delete volume": lambda: b_evs.delete_volume(DeleteVolumeRequest(volume_id=volume_id)),
        "show image": lambda: b_ims.glance_show_image(GlanceShowImageRequest(image_id=image_id)),
        "delete image": lambda: b_ims.glance_delete_image(GlanceDeleteImageRequest(image_id=image_id)),
    }
    leaked = []
    for what, call in calls.items():
        err = expect_not_found(call)
        for secret in (a.project_id, "tenant-a"):
            if secret in err.error_msg:
                leaked.append(f"{what}: {err.error_msg}")
    assert leaked == []

    # B's own create naming A's VPC and subnet: 404 too. A's server group as a scheduler hint is refused
    # exactly like a group that does not exist (ECS answers 400 for a bad hint), so nothing is revealed.
    expect_not_found(lambda: create_and_wait(b_ecs, server(net, name="intruder")))
    answers = []
    for group_id in (server_group.id, str(uuid.uuid4())):
        hints = PostPaidServerSchedulerHints(group=group_id)
        with pytest.raises(ClientRequestException) as info:
            create_and_wait(b_ecs, server(b_net, name="intruder", osscheduler_hints=hints))
        answers.append(
            (info.value.status_code, info.value.error_code, info.value.error_msg.replace(group_id, "?"))
        )
    assert answers[0] == answers[1] and answers[0][0] in (400, 404), answers

    # --- lists never show A's resources ---
    assert b_ecs.list_servers_details(ListServersDetailsRequest()).servers == []
    assert b_ecs.nova_list_keypairs(NovaListKeypairsRequest()).keypairs == []
    assert b_ecs.list_server_groups(ListServerGroupsRequest()).server_groups == []
    assert net.vpc_id not in {v.id for v in b_vpc.list_vpcs(ListVpcsRequest()).vpcs}
    assert net.subnet_id not in {s.id for s in b_vpc.list_subnets(ListSubnetsRequest()).subnets}
    assert [g.name for g in b_vpc.list_security_groups(ListSecurityGroupsRequest()).security_groups] == [
        "default"
    ]
    b_rules = b_vpc.list_security_group_rules(ListSecurityGroupRulesRequest()).security_group_rules
    assert rule.id not in {r.id for r in b_rules}
    assert b_evs.list_volumes(ListVolumesRequest()).volumes == []
    assert image_id not in {i.id for i in b_ims.list_images(ListImagesRequest()).images}

    # --- and A still has everything, untouched ---
    with Session(api.ctx.engine) as session:
        assert owned_resources(session, a.project_id) == a_before
    assert a_ecs.show_server(ShowServerRequest(server_id=server_id)).server.status == "ACTIVE"
    assert a_evs.show_volume(ShowVolumeRequest(volume_id=volume_id)).volume.name == ""
    assert a_vpc.show_vpc(ShowVpcRequest(vpc_id=net.vpc_id)).vpc.name != "mine"


class TestResourcesAddedLater:
    """The same promise for what came after the first walk: EVS snapshots, CBR vaults, backups, checkpoints and
    restores, EIPs, private images (update, capture, use in a create or a volume), and a server's resize,
    reinstall, change of OS and security groups."""

    @pytest.fixture
    def api_settings(self, seed_image_file: Path) -> dict[str, Any]:
        return {
            "seed_image": seed_image_file,
            "external_cidr": "203.0.113.0/24",
            "external_pool": "203.0.113.10-203.0.113.20",
            "external_gateway": "203.0.113.1",
        }

    def test_another_projects_newer_resources_are_404_everywhere(self, api, agent_host) -> None:  # type: ignore[no-untyped-def]
        # (test_backups imports this module: its helpers are imported here, not at the top)
        from tests.controller.api.test_backups import back_up, cbr_client, make_vault, restore

        a, b = new_tenant(api, "tenant-a"), new_tenant(api, "tenant-b")
        a_ecs, a_evs, a_cbr, a_eip = a.ecs(), evs_client(a), cbr_client(a), eip_client(a)

        # --- project A: a server, a volume with a snapshot and a backup, an EIP, a private image ---
        net = make_net(api, clients=a)
        (server_id,), job = create_and_wait(a_ecs, server(net))
        assert job.status == "SUCCESS", job.fail_reason
        made = create_volume(a_evs, size=1)
        assert wait_evs_job(a_evs, made.job_id).status == "SUCCESS"
        (volume_id,) = made.volume_ids
        snapshot = wait_snapshot(a_evs, create_snapshot(a_evs, volume_id).id, "available")
        vault = make_vault(a_cbr, "disk", [(volume_id, "OS::Cinder::Volume")])
        (backup,) = back_up(a_cbr, vault.id)
        eip = create_eip(a_eip)
        (nic,) = a_ecs.list_server_interfaces(
            ListServerInterfacesRequest(server_id=server_id)
        ).interface_attachments
        with session_scope(api.ctx.engine) as session:
            image = Image(name="a-private", owner=a.project_id, status=ACTIVE, visibility="private")
            session.add(image)
            session.flush()
            image_id = image.id
        with Session(api.ctx.engine) as session:
            a_before = owned_resources(session, a.project_id)
        rows_before = table_counts(api)

        # --- project B: 404 for each of them, whatever it does ---
        b_ecs, b_evs, b_cbr, b_eip, b_ims = b.ecs(), evs_client(b), cbr_client(b), eip_client(b), b.ims()
        b_net = make_net(api, clients=b, cidr="10.30.0.0/16", subnet_cidr="10.30.1.0/24", gateway="10.30.1.1")
        rename = UpdateSnapshotRequestBody(snapshot=UpdateSnapshotOption(name="mine"))
        calls = {
            "show snapshot": lambda: b_evs.show_snapshot(ShowSnapshotRequest(snapshot_id=snapshot.id)),
            "update snapshot": lambda: b_evs.update_snapshot(
                UpdateSnapshotRequest(snapshot_id=snapshot.id, body=rename)
            ),
            "delete snapshot": lambda: b_evs.delete_snapshot(DeleteSnapshotRequest(snapshot_id=snapshot.id)),
            "rollback snapshot": lambda: rollback(b_evs, snapshot.id, volume_id),
            "volume from snapshot": lambda: new_volume(b_evs, size=2, snapshot_id=snapshot.id),
            "show vault": lambda: b_cbr.show_vault(ShowVaultRequest(vault_id=vault.id)),
            "update vault": lambda: b_cbr.update_vault(
                UpdateVaultRequest(vault_id=vault.id, body=VaultUpdateReq(vault=VaultUpdate(name="mine")))
            ),
            "delete vault": lambda: b_cbr.delete_vault(DeleteVaultRequest(vault_id=vault.id)),
            "back up A's vault": lambda: back_up(b_cbr, vault.id),
            "vault of A's volume": lambda: make_vault(b_cbr, "disk", [(volume_id, "OS::Cinder::Volume")]),
            "vault of A's server": lambda: make_vault(b_cbr, "server", [(server_id, "OS::Nova::Server")]),
            "show backup": lambda: b_cbr.show_backup(ShowBackupRequest(backup_id=backup.id)),
            "delete backup": lambda: b_cbr.delete_backup(DeleteBackupRequest(backup_id=backup.id)),
            "restore backup": lambda: restore(b_cbr, backup.id, volume_id=volume_id),
            "volume from backup": lambda: new_volume(b_evs, backup_id=backup.id),
            "show checkpoint": lambda: b_cbr.show_checkpoint(
                ShowCheckpointRequest(checkpoint_id=backup.checkpoint_id)
            ),
            "show eip": lambda: b_eip.show_publicip(ShowPublicipRequest(publicip_id=eip.id)),
            "bind A's eip to A's port": lambda: bind_eip(b_eip, eip.id, nic.port_id),
            "delete eip": lambda: b_eip.delete_publicip(DeletePublicipRequest(publicip_id=eip.id)),
            "update image": lambda: b_ims.update_image(
                UpdateImageRequest(
                    image_id=image_id, body=[UpdateImageRequestBody(op="replace", path="/name", value="x")]
                )
            ),
            "capture A's server": lambda: capture(b, server_id),
            "server from A's image": lambda: create_and_wait(b_ecs, server(b_net, image_ref=image_id)),
            "volume from A's image": lambda: new_volume(b_evs, image_ref=image_id),
            "resize": lambda: resize(b_ecs, server_id, "s6.small.1"),
            "resize flavors": lambda: b_ecs.list_resize_flavors(
                ListResizeFlavorsRequest(instance_uuid=server_id)
            ),
            "reinstall": lambda: reinstall(b_ecs, server_id, adminpass="Secret-123!"),
            "change os": lambda: change_os(b_ecs, server_id, net.image_id, adminpass="Secret-123!"),
            "add security group": lambda: add_security_group(b_ecs, server_id, "default"),
            "server security groups": lambda: b_ecs.nova_list_server_security_groups(
                NovaListServerSecurityGroupsRequest(server_id=server_id)
            ),
            "block devices": lambda: b_ecs.list_server_block_devices(
                ListServerBlockDevicesRequest(server_id=server_id)
            ),
        }
        leaked = []
        for what, call in calls.items():
            err = expect_not_found(call)
            for secret in (a.project_id, "tenant-a"):
                if secret in err.error_msg:
                    leaked.append(f"{what}: {err.error_msg}")
        assert leaked == []

        # --- lists never show A's resources ---
        assert snapshot.id not in {s.id for s in b_evs.list_snapshots(ListSnapshotsRequest()).snapshots}
        assert b_cbr.list_vault(ListVaultRequest()).vaults == []
        assert b_cbr.list_backups(ListBackupsRequest()).backups == []
        assert b_cbr.list_op_logs(ListOpLogsRequest()).operation_logs == []
        assert b_eip.list_publicips(ListPublicipsRequest()).publicips == []

        # --- A still has everything, untouched, and B made nothing ---
        with Session(api.ctx.engine) as session:
            assert owned_resources(session, a.project_id) == a_before
        after = table_counts(api)
        assert {t: n for t, n in after.items() if t not in ("vpc", "subnet", "securitygroup", "port")} == {
            t: n for t, n in rows_before.items() if t not in ("vpc", "subnet", "securitygroup", "port")
        }  # (B's own network is all that is new)
        assert after["port"] == rows_before["port"]
        assert a_evs.show_snapshot(ShowSnapshotRequest(snapshot_id=snapshot.id)).snapshot.name != "mine"
        assert a_cbr.show_backup(ShowBackupRequest(backup_id=backup.id)).backup.status == "available"
        assert a_eip.show_publicip(ShowPublicipRequest(publicip_id=eip.id)).publicip.port_id in (None, "")
        assert a_ecs.show_server(ShowServerRequest(server_id=server_id)).server.status == "ACTIVE"


def table_counts(api: Any) -> dict[str, int]:
    with Session(api.ctx.engine) as session:
        return {
            t.name: int(session.connection().execute(select(func.count()).select_from(t)).scalar_one())
            for t in SQLModel.metadata.sorted_tables
        }
