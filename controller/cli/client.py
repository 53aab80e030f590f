"""A small AK/SK-signed HTTP client for labcloud's API, signed exactly like the official Huawei SDK."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import httpx

from controller.auth.signature import canonical_query, sign
from controller.cli.errors import CliError

log = logging.getLogger(__name__)

USER_AGENT = "labcloud-cli/0.1"
JOB_DONE = ("SUCCESS", "FAIL")


class ApiCallError(CliError):
    """The API answered with an error (Huawei shape) or could not be reached."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(code, message)
        self.status = status


@dataclass(frozen=True)
class Credentials:
    endpoint: str
    ak: str
    sk: str
    project_id: str
    region: str = "lab-1"

    @classmethod
    def load(cls, path: Path) -> Credentials:
        try:
            doc = json.loads(path.read_text())
            return cls(
                endpoint=doc["endpoint"].rstrip("/"),
                ak=doc["ak"],
                sk=doc["sk"],
                project_id=doc["project_id"],
                region=doc.get("region", "lab-1"),
            )
        except FileNotFoundError:
            raise CliError(
                "credentials",
                f"{path} does not exist: run `labcloud up` first, or set LABCLOUD_HOME / --credentials",
            ) from None
        except PermissionError:
            raise CliError("credentials", f"cannot read {path}: permission denied (run as root)") from None
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise CliError("credentials", f"{path} is not a labcloud credentials file: {exc}") from None


Query = Sequence[tuple[str, str]]


class ApiClient:
    """Signed JSON requests to one labcloud endpoint; errors become ApiCallError."""

    def __init__(
        self, creds: Credentials, *, timeout: float = 60.0, transport: httpx.BaseTransport | None = None
    ):
        self.creds = creds
        self._netloc = urlsplit(creds.endpoint).netloc
        # trust_env=False: an HTTP(S)_PROXY in the environment must never see requests to a local cloud.
        self._http = httpx.Client(
            timeout=httpx.Timeout(timeout, connect=10.0), transport=transport, trust_env=False
        )

    @property
    def project_id(self) -> str:
        return self.creds.project_id

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def get(self, path: str, query: Query = ()) -> Any:
        return self.request("GET", path, query=query)

    def post(self, path: str, body: Any = None) -> Any:
        return self.request("POST", path, body=body)

    def put(self, path: str, body: Any = None) -> Any:
        return self.request("PUT", path, body=body)

    def delete(self, path: str, query: Query = ()) -> Any:
        return self.request("DELETE", path, query=query)

    def request(self, method: str, path: str, *, query: Query = (), body: Any = None) -> Any:
        """Send one signed request; returns the decoded JSON body (None for an empty one)."""
        pairs = [(k, str(v)) for k, v in query]
        raw_path = quote(path, safe="/~")
        payload = b"" if body is None else json.dumps(body).encode()
        headers = {
            "Content-Type": "application/json",
            "Host": self._netloc,
            "User-Agent": USER_AGENT,
            "X-Project-Id": self.creds.project_id,
        }
        signed = sign(
            access_key=self.creds.ak,
            secret_key=self.creds.sk,
            method=method,
            path=raw_path,
            query=pairs,
            headers=headers,
            body=payload,
        )
        url = self.creds.endpoint + raw_path + (f"?{canonical_query(pairs)}" if pairs else "")
        try:
            response = self._http.request(method, url, headers=signed, content=payload)
        except httpx.HTTPError as exc:
            raise ApiCallError(0, "connection", f"cannot reach {self.creds.endpoint}: {exc}") from None
        log.debug("%s %s -> %s", method, url, response.status_code)
        if response.status_code >= 400:
            code, message = parse_error(response)
            raise ApiCallError(response.status_code, code, message)
        if not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            raise ApiCallError(
                response.status_code,
                "bad-response",
                f"{method} {path} answered with non-JSON: {response.text[:200]!r}",
            ) from None

    def put_stream(
        self, path: str, chunks: Iterable[bytes], *, size: int, headers: Mapping[str, str] | None = None
    ) -> None:
        """PUT a body streamed from `chunks` (`size` bytes). The signature covers the literal UNSIGNED-PAYLOAD
        instead of the body, as Huawei's signer does for file uploads, so nothing is held in memory."""
        raw_path = quote(path, safe="/~")
        plain = {
            "Content-Type": "application/octet-stream",
            "Content-Length": str(size),
            "Host": self._netloc,
            "User-Agent": USER_AGENT,
            "X-Project-Id": self.creds.project_id,
            "X-Sdk-Content-Sha256": "UNSIGNED-PAYLOAD",
            **(headers or {}),
        }
        signed = sign(
            access_key=self.creds.ak,
            secret_key=self.creds.sk,
            method="PUT",
            path=raw_path,
            query=[],
            headers=plain,
            body=b"",
        )
        try:
            response = self._http.request(
                "PUT", self.creds.endpoint + raw_path, headers=signed, content=chunks
            )
        except httpx.HTTPError as exc:
            raise ApiCallError(0, "connection", f"cannot reach {self.creds.endpoint}: {exc}") from None
        if response.status_code >= 400:
            code, message = parse_error(response)
            raise ApiCallError(response.status_code, code, message)

    def wait_job(self, job_id: str, *, timeout: float = 1800.0, interval: float = 1.0) -> dict[str, Any]:
        """Poll `GET /v1/{project}/jobs/{id}` until SUCCESS or FAIL; returns the final job."""
        deadline = time.monotonic() + timeout
        while True:
            job: dict[str, Any] = self.get(f"/v1/{self.project_id}/jobs/{job_id}")
            if job.get("status") in JOB_DONE:
                return job
            if time.monotonic() >= deadline:
                raise CliError("timeout", f"job {job_id} is still {job.get('status')} after {timeout:.0f} s")
            time.sleep(interval)


def parse_error(response: httpx.Response) -> tuple[str, str]:
    """(code, message) from the error shapes the official SDK understands (ECS-API.md §3)."""
    fallback = (str(response.status_code), response.text.strip()[:500] or response.reason_phrase)
    try:
        doc = response.json()
    except ValueError:
        return fallback
    found = _find_error(doc)
    return found if found is not None else fallback


def _find_error(doc: Any) -> tuple[str, str] | None:
    if not isinstance(doc, dict):
        return None
    for code_key, msg_key in (("error_code", "error_msg"), ("errorCode", "errorMsg"), ("code", "message")):
        if code_key in doc and msg_key in doc:
            return str(doc[code_key]), str(doc[msg_key])
    for value in doc.values():
        found = _find_error(value)
        if found is not None:
            return found
    return None


def job_failure(job: dict[str, Any]) -> CliError:
    """The error a FAIL job reports (its own, or its first failed sub-job's)."""
    code, reason = job.get("error_code") or "", job.get("fail_reason") or ""
    for sub in (job.get("entities") or {}).get("sub_jobs") or []:
        if sub.get("status") == "FAIL" and not (code and reason):
            code, reason = sub.get("error_code") or code, sub.get("fail_reason") or reason
    return CliError(code or "job", f"job {job.get('job_id')} failed: {reason or 'no reason given'}")
