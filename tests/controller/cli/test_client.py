"""The CLI's signed client against a real controller: the server's own verifier must accept its signatures."""

from __future__ import annotations

import json

import httpx
import pytest

from controller.cli.client import ApiCallError, ApiClient, Credentials, job_failure, parse_error
from controller.cli.errors import CliError


def _client(api, **changes: str) -> ApiClient:  # type: ignore[no-untyped-def]
    fields = {"endpoint": api.endpoint, "ak": api.ak, "sk": api.sk, "project_id": api.project_id, **changes}
    return ApiClient(Credentials(**fields))


def test_signed_requests_are_accepted(api) -> None:  # type: ignore[no-untyped-def]
    with _client(api) as client:
        assert client.get("/v1/admin/hosts") == {"hosts": []}
        keypairs = client.get(f"/v2.1/{api.project_id}/os-keypairs")
    assert keypairs == {"keypairs": []}


def test_query_strings_are_signed_like_the_sdk_does(api) -> None:  # type: ignore[no-untyped-def]
    # Reserved and non-ASCII characters in query values: a wrong canonical form would be a 401, not this 404.
    with _client(api) as client, pytest.raises(ApiCallError) as info:
        client.get(
            f"/v1/{api.project_id}/jobs/nosuchjob",
            [("marker", "a b/c?d=e&f"), ("name", "wéb-1"), ("limit", "5")],
        )
    assert (info.value.status, info.value.code) == (404, "Ecs.0015")


def test_a_wrong_secret_key_is_refused(api) -> None:  # type: ignore[no-untyped-def]
    with _client(api, sk="not-the-secret") as client, pytest.raises(ApiCallError) as info:
        client.get("/v1/admin/hosts")
    assert (info.value.status, info.value.code) == (401, "APIGW.0301")
    assert str(info.value).startswith("error APIGW.0301: ")


def test_an_unreachable_endpoint_is_a_connection_error(unused_port: int) -> None:
    creds = Credentials(endpoint=f"http://127.0.0.1:{unused_port}", ak="AK", sk="SK", project_id="p")
    with ApiClient(creds) as client, pytest.raises(ApiCallError) as info:
        client.get("/healthz")
    assert info.value.code == "connection"


@pytest.fixture
def unused_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            {"error": {"code": "Ecs.0114", "message": "Instance[x] could not be found."}},
            ("Ecs.0114", "Instance[x] could not be found."),
        ),
        ({"error_code": "APIGW.0301", "error_msg": "bad signature"}, ("APIGW.0301", "bad signature")),
        ({"code": "VPC.0101", "message": "no vpc"}, ("VPC.0101", "no vpc")),
        ({"itemNotFound": {"code": 404, "message": "gone"}}, ("404", "gone")),
    ],
)
def test_error_bodies_are_read_like_the_sdk_reads_them(
    body: dict[str, object], expected: tuple[str, str]
) -> None:
    response = httpx.Response(404, content=json.dumps(body).encode())
    assert parse_error(response) == expected


def test_a_non_json_error_keeps_the_status_and_text() -> None:
    assert parse_error(httpx.Response(502, text="Bad Gateway from proxy")) == (
        "502",
        "Bad Gateway from proxy",
    )


def test_a_failed_job_reports_its_first_failed_sub_job() -> None:
    job = {
        "job_id": "j1",
        "status": "FAIL",
        "error_code": "",
        "fail_reason": "",
        "entities": {
            "sub_jobs": [
                {"status": "SUCCESS"},
                {"status": "FAIL", "error_code": "Ecs.0010", "fail_reason": "no valid host"},
            ]
        },
    }
    error = job_failure(job)
    assert (error.code, error.message) == ("Ecs.0010", "job j1 failed: no valid host")


def test_missing_credentials_say_how_to_get_them(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(CliError) as info:
        Credentials.load(tmp_path / "credentials.json")
    assert info.value.code == "credentials" and "labcloud up" in info.value.message
