"""Every table, imported here so `SQLModel.metadata` knows them all before `create_all`."""

from controller.models.backup import Backup, Checkpoint, OperationLog, Vault
from controller.models.eip import Eip
from controller.models.flavor import Flavor
from controller.models.host import Host
from controller.models.image import Image
from controller.models.job import Job
from controller.models.keypair import Keypair
from controller.models.network import IdCounter, Port, SecurityGroup, SecurityGroupRule, Subnet, Vpc
from controller.models.project import Credential, JoinToken, Project
from controller.models.quota import ClientToken, Quota
from controller.models.server import Server
from controller.models.server_group import ServerGroup, ServerGroupMember
from controller.models.snapshot import Snapshot
from controller.models.view_stamp import ViewStamp
from controller.models.volume import Volume

__all__ = [
    "Backup",
    "Checkpoint",
    "ClientToken",
    "Credential",
    "Eip",
    "Flavor",
    "Host",
    "IdCounter",
    "Image",
    "Job",
    "JoinToken",
    "Keypair",
    "OperationLog",
    "Port",
    "Project",
    "Quota",
    "SecurityGroup",
    "SecurityGroupRule",
    "Server",
    "ServerGroup",
    "ServerGroupMember",
    "Snapshot",
    "Subnet",
    "Vault",
    "ViewStamp",
    "Volume",
    "Vpc",
]
