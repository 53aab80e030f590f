"""Durable asynchronous jobs (`GET /v1/{project_id}/jobs/{job_id}`).

A parent job (e.g. createServer) groups sub-jobs (createSingleServer); only jobs whose kind has a handler are run, a
parent's status follows its children. `lease_until` lets a restarted controller pick up a job whose runner died.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Column
from sqlmodel import Field, SQLModel

from controller.models.common import new_hex_id, utcnow

INIT, RUNNING, SUCCESS, FAIL = "INIT", "RUNNING", "SUCCESS", "FAIL"
FINISHED = (SUCCESS, FAIL)


class Job(SQLModel, table=True):
    id: str = Field(default_factory=new_hex_id, primary_key=True)
    project_id: str = Field(index=True)
    kind: str
    parent_id: str | None = Field(default=None, index=True)
    status: str = Field(default=INIT, index=True)
    payload: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    entities: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    error_code: str | None = None
    fail_reason: str | None = None
    attempts: int = 0
    lease_owner: str | None = None
    lease_until: datetime | None = Field(default=None, index=True)
    request_id: str | None = None
    created_at: datetime = Field(default_factory=utcnow)
    begin_time: datetime | None = None
    end_time: datetime | None = None
