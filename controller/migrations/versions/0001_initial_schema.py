"""The initial schema: every table as `SQLModel.metadata.create_all` made it before migrations existed.

Revision ID: 0001
Revises: (none)
Create Date: 2026-11-28 05:43:45.761698
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    """Every table with its indexes and constraints; referenced tables come first."""
    op.create_table(
        "clienttoken",
        sa.Column("project_id", sa.String(), nullable=False),
        sa.Column("token", sa.String(), nullable=False),
        sa.Column("body_sha256", sa.String(), nullable=False),
        sa.Column("job_id", sa.String(), nullable=False),
        sa.Column("server_ids", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("project_id", "token"),
    )
    op.create_index("ix_clienttoken_created_at", "clienttoken", ["created_at"], unique=False)
    op.create_table(
        "flavor",
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("vcpus", sa.Integer(), nullable=False),
        sa.Column("ram_mib", sa.Integer(), nullable=False),
        sa.Column("disk_gib", sa.Integer(), nullable=False),
        sa.Column("disabled", sa.Boolean(), nullable=False),
        sa.Column("is_public", sa.Boolean(), nullable=False),
        sa.Column("performancetype", sa.String(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
    )
    op.create_table(
        "host",
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("hostname", sa.String(), nullable=False),
        sa.Column("url", sa.String(), nullable=False),
        sa.Column("accelerator", sa.String(), nullable=False),
        sa.Column("vcpus", sa.Integer(), nullable=False),
        sa.Column("memory_mib", sa.Integer(), nullable=False),
        sa.Column("disk_gib", sa.Integer(), nullable=False),
        sa.Column("availability_zone", sa.String(), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("disabled_reason", sa.String(), nullable=True),
        sa.Column("registered_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_heartbeat", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_host_availability_zone", "host", ["availability_zone"], unique=False)
    op.create_table(
        "id_counter",
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("value", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    op.create_table(
        "image",
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("owner", sa.String(), nullable=True),
        sa.Column("visibility", sa.String(), nullable=False),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("disk_format", sa.String(), nullable=False),
        sa.Column("container_format", sa.String(), nullable=False),
        sa.Column("min_disk", sa.Integer(), nullable=False),
        sa.Column("min_ram", sa.Integer(), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("checksum", sa.String(), nullable=True),
        sa.Column("os_type", sa.String(), nullable=False),
        sa.Column("os_version", sa.String(), nullable=False),
        sa.Column("platform", sa.String(), nullable=False),
        sa.Column("imagetype", sa.String(), nullable=False),
        sa.Column("file_path", sa.String(), nullable=True),
        sa.Column("description", sa.String(), nullable=False),
        sa.Column("protected", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_image_checksum", "image", ["checksum"], unique=False)
    op.create_index("ix_image_created_at", "image", ["created_at"], unique=False)
    op.create_index("ix_image_name", "image", ["name"], unique=False)
    op.create_index("ix_image_owner", "image", ["owner"], unique=False)
    op.create_index("ix_image_status", "image", ["status"], unique=False)
    op.create_table(
        "job",
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("project_id", sa.String(), nullable=False),
        sa.Column("kind", sa.String(), nullable=False),
        sa.Column("parent_id", sa.String(), nullable=True),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("entities", sa.JSON(), nullable=False),
        sa.Column("error_code", sa.String(), nullable=True),
        sa.Column("fail_reason", sa.String(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("lease_owner", sa.String(), nullable=True),
        sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("request_id", sa.String(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("begin_time", sa.DateTime(timezone=True), nullable=True),
        sa.Column("end_time", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_job_lease_until", "job", ["lease_until"], unique=False)
    op.create_index("ix_job_parent_id", "job", ["parent_id"], unique=False)
    op.create_index("ix_job_project_id", "job", ["project_id"], unique=False)
    op.create_index("ix_job_status", "job", ["status"], unique=False)
    op.create_table(
        "keypair",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("project_id", sa.String(), nullable=False),
        sa.Column("user_id", sa.String(), nullable=False),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("public_key", sa.String(), nullable=False),
        sa.Column("fingerprint", sa.String(), nullable=False),
        sa.Column("type", sa.String(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("project_id", "name", name="uq_keypair_project_name"),
    )
    op.create_index("ix_keypair_project_id", "keypair", ["project_id"], unique=False)
    op.create_table(
        "project",
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_project_name", "project", ["name"], unique=True)
    op.create_table(
        "securitygroup",
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("project_id", sa.String(), nullable=False),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("description", sa.String(), nullable=False),
        sa.Column("vpc_id", sa.String(), nullable=True),
        sa.Column("default_of", sa.String(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("default_of"),
    )
    op.create_index("ix_securitygroup_created_at", "securitygroup", ["created_at"], unique=False)
    op.create_index("ix_securitygroup_project_id", "securitygroup", ["project_id"], unique=False)
    op.create_table(
        "server",
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("project_id", sa.String(), nullable=False),
        sa.Column("user_id", sa.String(), nullable=False),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("description", sa.String(), nullable=False),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("task_state", sa.String(), nullable=True),
        sa.Column("fault_code", sa.String(), nullable=True),
        sa.Column("fault_message", sa.String(), nullable=True),
        sa.Column("fault_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("flavor_id", sa.String(), nullable=False),
        sa.Column("image_id", sa.String(), nullable=False),
        sa.Column("host_id", sa.String(), nullable=True),
        sa.Column("availability_zone", sa.String(), nullable=False),
        sa.Column("key_name", sa.String(), nullable=True),
        sa.Column("vpc_id", sa.String(), nullable=False),
        sa.Column("security_group_ids", sa.JSON(), nullable=False),
        sa.Column("metadata", sa.JSON(), nullable=False),
        sa.Column("tags", sa.JSON(), nullable=False),
        sa.Column("root_volume_type", sa.String(), nullable=False),
        sa.Column("root_volume_size", sa.Integer(), nullable=False),
        sa.Column("user_data", sa.String(), nullable=True),
        sa.Column("admin_pass", sa.String(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("launched_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_server_created_at", "server", ["created_at"], unique=False)
    op.create_index("ix_server_host_id", "server", ["host_id"], unique=False)
    op.create_index("ix_server_name", "server", ["name"], unique=False)
    op.create_index("ix_server_project_id", "server", ["project_id"], unique=False)
    op.create_index("ix_server_status", "server", ["status"], unique=False)
    op.create_table(
        "volume",
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("project_id", sa.String(), nullable=False),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("description", sa.String(), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("volume_type", sa.String(), nullable=False),
        sa.Column("availability_zone", sa.String(), nullable=False),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("host_id", sa.String(), nullable=True),
        sa.Column("server_id", sa.String(), nullable=True),
        sa.Column("device", sa.String(), nullable=True),
        sa.Column("attached_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("bootable", sa.String(), nullable=False),
        sa.Column("multiattach", sa.Boolean(), nullable=False),
        sa.Column("metadata", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_volume_created_at", "volume", ["created_at"], unique=False)
    op.create_index("ix_volume_host_id", "volume", ["host_id"], unique=False)
    op.create_index("ix_volume_name", "volume", ["name"], unique=False)
    op.create_index("ix_volume_project_id", "volume", ["project_id"], unique=False)
    op.create_index("ix_volume_server_id", "volume", ["server_id"], unique=False)
    op.create_index("ix_volume_status", "volume", ["status"], unique=False)
    op.create_table(
        "vpc",
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("project_id", sa.String(), nullable=False),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("cidr", sa.String(), nullable=False),
        sa.Column("description", sa.String(), nullable=False),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("vni", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("vni"),
    )
    op.create_index("ix_vpc_created_at", "vpc", ["created_at"], unique=False)
    op.create_index("ix_vpc_project_id", "vpc", ["project_id"], unique=False)
    op.create_table(
        "credential",
        sa.Column("access_key", sa.String(), nullable=False),
        sa.Column("secret_key", sa.String(), nullable=False),
        sa.Column("project_id", sa.String(), nullable=False),
        sa.Column("user_id", sa.String(), nullable=False),
        sa.Column("is_admin", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["project_id"], ["project.id"]),
        sa.PrimaryKeyConstraint("access_key"),
    )
    op.create_index("ix_credential_project_id", "credential", ["project_id"], unique=False)
    op.create_table(
        "quota",
        sa.Column("project_id", sa.String(), nullable=False),
        sa.Column("instances", sa.Integer(), nullable=True),
        sa.Column("cores", sa.Integer(), nullable=True),
        sa.Column("ram", sa.Integer(), nullable=True),
        sa.Column("security_groups", sa.Integer(), nullable=True),
        sa.Column("key_pairs", sa.Integer(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["project_id"], ["project.id"]),
        sa.PrimaryKeyConstraint("project_id"),
    )
    op.create_table(
        "securitygrouprule",
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("project_id", sa.String(), nullable=False),
        sa.Column("security_group_id", sa.String(), nullable=False),
        sa.Column("direction", sa.String(), nullable=False),
        sa.Column("ethertype", sa.String(), nullable=False),
        sa.Column("protocol", sa.String(), nullable=True),
        sa.Column("port_range_min", sa.Integer(), nullable=True),
        sa.Column("port_range_max", sa.Integer(), nullable=True),
        sa.Column("remote_ip_prefix", sa.String(), nullable=True),
        sa.Column("remote_group_id", sa.String(), nullable=True),
        sa.Column("description", sa.String(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["security_group_id"], ["securitygroup.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_securitygrouprule_created_at", "securitygrouprule", ["created_at"], unique=False)
    op.create_index("ix_securitygrouprule_project_id", "securitygrouprule", ["project_id"], unique=False)
    op.create_index(
        "ix_securitygrouprule_remote_group_id", "securitygrouprule", ["remote_group_id"], unique=False
    )
    op.create_index(
        "ix_securitygrouprule_security_group_id", "securitygrouprule", ["security_group_id"], unique=False
    )
    op.create_table(
        "subnet",
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("project_id", sa.String(), nullable=False),
        sa.Column("vpc_id", sa.String(), nullable=False),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("description", sa.String(), nullable=False),
        sa.Column("cidr", sa.String(), nullable=False),
        sa.Column("gateway_ip", sa.String(), nullable=False),
        sa.Column("dhcp_enable", sa.Boolean(), nullable=False),
        sa.Column("primary_dns", sa.String(), nullable=True),
        sa.Column("secondary_dns", sa.String(), nullable=True),
        sa.Column("availability_zone", sa.String(), nullable=True),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["vpc_id"], ["vpc.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_subnet_created_at", "subnet", ["created_at"], unique=False)
    op.create_index("ix_subnet_project_id", "subnet", ["project_id"], unique=False)
    op.create_index("ix_subnet_vpc_id", "subnet", ["vpc_id"], unique=False)
    op.create_table(
        "port",
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("project_id", sa.String(), nullable=False),
        sa.Column("vpc_id", sa.String(), nullable=False),
        sa.Column("subnet_id", sa.String(), nullable=False),
        sa.Column("ip_address", sa.String(), nullable=False),
        sa.Column("mac_address", sa.String(), nullable=False),
        sa.Column("server_id", sa.String(), nullable=True),
        sa.Column("device_owner", sa.String(), nullable=False),
        sa.Column("security_group_ids", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["subnet_id"], ["subnet.id"]),
        sa.ForeignKeyConstraint(["vpc_id"], ["vpc.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("mac_address"),
        sa.UniqueConstraint("subnet_id", "ip_address", name="uq_port_subnet_ip"),
    )
    op.create_index("ix_port_created_at", "port", ["created_at"], unique=False)
    op.create_index("ix_port_project_id", "port", ["project_id"], unique=False)
    op.create_index("ix_port_server_id", "port", ["server_id"], unique=False)
    op.create_index("ix_port_subnet_id", "port", ["subnet_id"], unique=False)
    op.create_index("ix_port_vpc_id", "port", ["vpc_id"], unique=False)


def downgrade() -> None:
    for table in [
        "port",
        "subnet",
        "securitygrouprule",
        "quota",
        "credential",
        "vpc",
        "volume",
        "server",
        "securitygroup",
        "project",
        "keypair",
        "job",
        "image",
        "id_counter",
        "host",
        "flavor",
        "clienttoken",
    ]:
        op.drop_table(table)
