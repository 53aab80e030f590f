"""Typed HTTP client for one agent, used by the controller.

Imports only httpx and the wire schemas, so the controller can use it on a machine without libvirt.
"""

from __future__ import annotations

import functools
import logging
import ssl
from typing import Any

import httpx
from pydantic import TypeAdapter, ValidationError

from agent.schemas import (
    AgentError,
    BackupFile,
    BackupTake,
    BackupUpload,
    ConsoleOutput,
    DiskExport,
    ExternalSpec,
    HostInfo,
    NetworkSpec,
    OverlaySpec,
    RebuildRequest,
    SecurityGroupSpec,
    ServerAction,
    ServerRestore,
    ServerSpec,
    ServerState,
    SnapshotSpec,
    SnapshotState,
    StagedBackup,
    UploadedBackup,
    VolumeAttachment,
    VolumeExport,
    VolumeFetch,
    VolumeRollback,
    VolumeSpec,
    VolumeState,
)

log = logging.getLogger(__name__)

REQUEST_ID_HEADER = "X-Request-Id"
# A soft stop waits for an ACPI shutdown and a first boot may download its image: minutes, not seconds.
DEFAULT_TIMEOUT = 180.0
FETCH_TIMEOUT = 3600.0  # copying a whole volume between hosts
CONNECT_TIMEOUT = 5.0

_GROUPS = TypeAdapter(list[SecurityGroupSpec])
_STAGED = TypeAdapter(list[StagedBackup])


class AgentClientError(Exception):
    """Base of everything AgentClient raises."""


class AgentUnreachable(AgentClientError):
    """The agent could not be reached, or did not answer in time."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"agent at {url} unreachable: {reason}")
        self.url = url
        self.reason = reason


class AgentCallError(AgentClientError):
    """The agent answered with a non-2xx status."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """One verifying TLS context for every client: httpx builds (and loads the CA bundle for) a new one per
    client otherwise, ~20 ms each, paid by the controller once per agent it talks to."""
    return httpx.create_ssl_context()


class AgentClient:
    def __init__(
        self,
        base_url: str,
        token: str,
        timeout: float = DEFAULT_TIMEOUT,
        *,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(
            base_url=self.base_url,
            headers={"Authorization": f"Bearer {token}"},
            timeout=httpx.Timeout(timeout, connect=min(timeout, CONNECT_TIMEOUT)),
            transport=transport,
            verify=_tls_context(),
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> AgentClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def host_info(self, *, request_id: str | None = None) -> HostInfo:
        return HostInfo.model_validate(self._call("GET", "/v1/host", request_id=request_id))

    def put_server(self, spec: ServerSpec, *, request_id: str | None = None) -> ServerState:
        body = spec.model_dump(mode="json")
        data = self._call("PUT", f"/v1/servers/{spec.id}", json=body, request_id=request_id)
        return ServerState.model_validate(data)

    def resize_server(self, spec: ServerSpec, *, request_id: str | None = None) -> ServerState:
        """Give the existing server `spec`'s vCPUs, memory and (larger) root disk; stops and starts it."""
        body = spec.model_dump(mode="json")
        data = self._call("POST", f"/v1/servers/{spec.id}/resize", json=body, request_id=request_id)
        return ServerState.model_validate(data)

    def rebuild_server(
        self, spec: ServerSpec, rebuild_id: str, *, request_id: str | None = None
    ) -> ServerState:
        """A new root disk from `spec.image` and a new seed for the existing server (same id, ports, volumes)."""
        body = RebuildRequest(spec=spec, rebuild_id=rebuild_id).model_dump(mode="json")
        data = self._call("POST", f"/v1/servers/{spec.id}/rebuild", json=body, request_id=request_id)
        return ServerState.model_validate(data)

    def get_server(self, server_id: str, *, request_id: str | None = None) -> ServerState:
        return ServerState.model_validate(
            self._call("GET", f"/v1/servers/{server_id}", request_id=request_id)
        )

    def delete_server(self, server_id: str, *, request_id: str | None = None) -> None:
        self._call("DELETE", f"/v1/servers/{server_id}", request_id=request_id)

    def server_action(
        self, server_id: str, action: ServerAction, *, request_id: str | None = None
    ) -> ServerState:
        body = action.model_dump(mode="json")
        data = self._call("POST", f"/v1/servers/{server_id}/action", json=body, request_id=request_id)
        return ServerState.model_validate(data)

    def console_output(
        self, server_id: str, length: int | None = None, *, request_id: str | None = None
    ) -> str:
        params = {"length": length} if length is not None else None
        data = self._call("GET", f"/v1/servers/{server_id}/console", params=params, request_id=request_id)
        return ConsoleOutput.model_validate(data).output

    def put_security_groups(self, groups: list[SecurityGroupSpec], *, request_id: str | None = None) -> None:
        body = _GROUPS.dump_python(groups, mode="json")
        self._call("PUT", "/v1/security-groups", json=body, request_id=request_id)

    def put_overlay(self, vpc_id: str, spec: OverlaySpec, *, request_id: str | None = None) -> None:
        """Tell the host the VPC's current VXLAN peers and remote ports (it ignores an older version)."""
        body = spec.model_dump(mode="json")
        self._call("PUT", f"/v1/networks/{vpc_id}/overlay", json=body, request_id=request_id)

    def put_external(self, spec: ExternalSpec, *, request_id: str | None = None) -> None:
        """Tell the host its EIP bindings and shared-SNAT VPCs, whole (it ignores an older version)."""
        self._call("PUT", "/v1/external", json=spec.model_dump(mode="json"), request_id=request_id)

    def put_network(self, spec: NetworkSpec, *, request_id: str | None = None) -> None:
        """Tell the host a VPC's current subnets (DNS, DHCP on/off); a host without the VPC ignores it."""
        body = spec.model_dump(mode="json")
        self._call("PUT", f"/v1/networks/{spec.vpc_id}", json=body, request_id=request_id)

    def put_volume(self, spec: VolumeSpec, *, request_id: str | None = None) -> VolumeState:
        body = spec.model_dump(mode="json")
        data = self._call("PUT", f"/v1/volumes/{spec.id}", json=body, request_id=request_id)
        return VolumeState.model_validate(data)

    def get_volume(self, volume_id: str, *, request_id: str | None = None) -> VolumeState:
        return VolumeState.model_validate(
            self._call("GET", f"/v1/volumes/{volume_id}", request_id=request_id)
        )

    def delete_volume(self, volume_id: str, *, request_id: str | None = None) -> None:
        self._call("DELETE", f"/v1/volumes/{volume_id}", request_id=request_id)

    def rollback_volume(
        self, volume_id: str, rollback: VolumeRollback, *, request_id: str | None = None
    ) -> VolumeState:
        body = rollback.model_dump(mode="json")
        data = self._call("POST", f"/v1/volumes/{volume_id}/rollback", json=body, request_id=request_id)
        return VolumeState.model_validate(data)

    def put_snapshot(self, spec: SnapshotSpec, *, request_id: str | None = None) -> SnapshotState:
        body = spec.model_dump(mode="json")
        data = self._call("PUT", f"/v1/snapshots/{spec.id}", json=body, request_id=request_id)
        return SnapshotState.model_validate(data)

    def get_snapshot(self, snapshot_id: str, *, request_id: str | None = None) -> SnapshotState:
        return SnapshotState.model_validate(
            self._call("GET", f"/v1/snapshots/{snapshot_id}", request_id=request_id)
        )

    def delete_snapshot(self, snapshot_id: str, *, request_id: str | None = None) -> None:
        self._call("DELETE", f"/v1/snapshots/{snapshot_id}", request_id=request_id)

    def attach_volume(
        self, server_id: str, attachment: VolumeAttachment, *, request_id: str | None = None
    ) -> VolumeAttachment:
        body = attachment.model_dump(mode="json")
        data = self._call("POST", f"/v1/servers/{server_id}/volumes", json=body, request_id=request_id)
        return VolumeAttachment.model_validate(data)

    def detach_volume(self, server_id: str, volume_id: str, *, request_id: str | None = None) -> None:
        self._call("DELETE", f"/v1/servers/{server_id}/volumes/{volume_id}", request_id=request_id)

    def export_root_disk(
        self, server_id: str, export_id: str, *, request_id: str | None = None
    ) -> DiskExport:
        path = f"/v1/servers/{server_id}/root-export/{export_id}"
        return DiskExport.model_validate(self._call("POST", path, request_id=request_id))

    def export_download(self, export_id: str) -> tuple[str, dict[str, str]]:
        """URL and headers to stream an export's file (the caller streams it; it can be gigabytes). The headers
        carry this client's secret: for the controller only, never to be handed to another host."""
        return self.export_file_url(export_id), {"Authorization": self._http.headers["Authorization"]}

    def export_file_url(self, export_id: str) -> str:
        """Where an export's file is served; another host fetches it with the export's own download token."""
        return f"{self.base_url}/v1/exports/{export_id}/file"

    def delete_export(self, export_id: str, *, request_id: str | None = None) -> None:
        self._call("DELETE", f"/v1/exports/{export_id}", request_id=request_id)

    def export_volume(self, volume_id: str, export_id: str, *, request_id: str | None = None) -> VolumeExport:
        """Offer a detached volume's file to another host (a volume move), which fetches it from
        `export_file_url` with the returned `download_token`."""
        path = f"/v1/volumes/{volume_id}/export/{export_id}"
        return VolumeExport.model_validate(self._call("POST", path, request_id=request_id))

    def fetch_volume(
        self, volume_id: str, fetch: VolumeFetch, *, request_id: str | None = None
    ) -> VolumeState:
        """Copy a volume another host exports into this host (streamed, verified): as long as the copy takes."""
        body = fetch.model_dump(mode="json")
        data = self._call(
            "POST", f"/v1/volumes/{volume_id}/fetch", json=body, request_id=request_id, timeout=FETCH_TIMEOUT
        )
        return VolumeState.model_validate(data)

    def take_backups(self, request: BackupTake, *, request_id: str | None = None) -> list[StagedBackup]:
        """Stage point-in-time copies of the disks on the host (idempotent: staged copies are kept)."""
        body = request.model_dump(mode="json")
        data = self._call("POST", "/v1/backups/take", json=body, request_id=request_id)
        return _STAGED.validate_python(data)

    def upload_backup(self, backup_id: str, url: str, *, request_id: str | None = None) -> UploadedBackup:
        body = BackupUpload(url=url).model_dump(mode="json")
        data = self._call("POST", f"/v1/backups/{backup_id}/upload", json=body, request_id=request_id)
        return UploadedBackup.model_validate(data)

    def discard_backup(self, backup_id: str, *, request_id: str | None = None) -> None:
        self._call("DELETE", f"/v1/backups/{backup_id}", request_id=request_id)

    def restore_server(
        self, server_id: str, request: ServerRestore, *, request_id: str | None = None
    ) -> None:
        body = request.model_dump(mode="json")
        self._call("POST", f"/v1/servers/{server_id}/restore", json=body, request_id=request_id)

    def restore_volume(
        self, volume_id: str, backup: BackupFile, *, request_id: str | None = None
    ) -> VolumeState:
        body = backup.model_dump(mode="json")
        data = self._call("POST", f"/v1/volumes/{volume_id}/restore", json=body, request_id=request_id)
        return VolumeState.model_validate(data)

    def _call(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, Any] | None = None,
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> Any:
        headers = {REQUEST_ID_HEADER: request_id} if request_id else None
        extra: dict[str, Any] = (
            {} if timeout is None else {"timeout": httpx.Timeout(timeout, connect=CONNECT_TIMEOUT)}
        )
        try:
            response = self._http.request(method, path, json=json, params=params, headers=headers, **extra)
        except httpx.TransportError as exc:
            raise AgentUnreachable(self.base_url, f"{type(exc).__name__}: {exc}") from exc
        log.debug("agent %s %s %s -> %s", self.base_url, method, path, response.status_code)
        if response.is_success:
            return response.json() if response.content else None
        raise _call_error(response)


def _call_error(response: httpx.Response) -> AgentCallError:
    try:
        error = AgentError.model_validate_json(response.content)
    except ValidationError:
        text = response.text.strip()[:500] or response.reason_phrase
        return AgentCallError(response.status_code, f"HTTP.{response.status_code}", text)
    return AgentCallError(response.status_code, error.code, error.message)
