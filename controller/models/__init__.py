"""Every table, imported here so `SQLModel.metadata` knows them all before `create_all`."""

from controller.models.host import Host
from controller.models.job import Job
from controller.models.project import Credential, Project
from controller.models.server import Server

__all__ = ["Credential", "Host", "Job", "Project", "Server"]
