"""Rate limiting per credential through the real controller: with a tiny configured rate, a hammering client
gets 429 `APIGW.0308` with `Retry-After` (never a 5xx), and other credentials are unaffected."""

from __future__ import annotations

import collections
import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from huaweicloudsdkcore.auth.credentials import BasicCredentials
from huaweicloudsdkcore.exceptions.exceptions import ClientRequestException, ServerResponseException
from huaweicloudsdkcore.http.http_config import HttpConfig
from huaweicloudsdkecs.v2 import EcsClient, ListServerGroupsRequest

from tests.controller.api.server_helpers import raw_request

BURST = 5


@pytest.fixture
def api_settings() -> dict[str, Any]:
    # About one token per 100 s: the bucket does not noticeably refill while the test runs.
    return {"rate_limit_per_second": 0.01, "rate_limit_burst": BURST}


def call(clients: Any) -> int:
    """One signed SDK call: its HTTP status (200, or the status the SDK raised)."""
    try:
        clients.ecs().list_server_groups(ListServerGroupsRequest())
    except ClientRequestException as exc:
        # The SDK's urllib3 treats 429 as retryable: with its default retry_times=0 it gives up at once and
        # reports its own code "429" without reading the body (the raw check below reads it).
        assert (exc.status_code, exc.error_code) == (429, "429"), exc
        return 429
    except ServerResponseException as exc:  # pragma: no cover - the failure this test exists to catch
        pytest.fail(f"a 5xx under load: {exc}")
    return 200


def test_a_hammering_credential_is_throttled_and_others_are_not(api) -> None:  # type: ignore[no-untyped-def]
    tenant = api.new_project("hammer")
    statuses = [call(tenant) for _ in range(BURST)]
    assert statuses == [200] * BURST  # the burst passes
    with ThreadPoolExecutor(max_workers=8) as pool:
        hammered = list(pool.map(lambda _: call(tenant), range(40)))
    assert set(hammered) <= {200, 429} and hammered.count(429) >= 35

    path = f"/v1/{tenant.project_id}/cloudservers/os-server-groups"
    answer = raw_request(tenant, "GET", path, b"")
    assert answer.status_code == 429
    assert int(answer.headers["Retry-After"]) >= 1
    assert answer.json()["error_code"] == "APIGW.0308" and answer.headers["X-Request-Id"]

    # Another credential has its own bucket.
    assert call(api) == 200


def test_unsigned_requests_are_refused_before_any_bucket(api) -> None:  # type: ignore[no-untyped-def]
    # A bad signature is 401 whatever the bucket holds, and takes no token from the key it names.
    for _ in range(BURST * 2):
        answer = httpx.get(
            f"{api.endpoint}/v1/{api.project_id}/cloudservers/os-server-groups",
            headers={"Authorization": f"SDK-HMAC-SHA256 Access={api.ak}, SignedHeaders=host, Signature=00"},
            timeout=60.0,
        )
        assert answer.status_code == 401
    assert [call(api) for _ in range(BURST)] == [200] * BURST


class TestSdkRetries:
    @pytest.fixture
    def api_settings(self) -> dict[str, Any]:
        return {"rate_limit_per_second": 1.0, "rate_limit_burst": 1}

    def test_an_sdk_with_retries_waits_for_retry_after_and_succeeds(self, api) -> None:  # type: ignore[no-untyped-def]
        config = HttpConfig.get_default_config()
        config.retry_times = 3  # urllib3 then sleeps for Retry-After before each retry of a 429
        ecs = (
            EcsClient.new_builder()
            .with_http_config(config)
            .with_credentials(BasicCredentials(api.ak, api.sk, api.project_id))
            .with_endpoints([api.endpoint])
            .build()
        )
        for _ in range(3):
            assert ecs.list_server_groups(ListServerGroupsRequest()).server_groups == []


class TestUnderLoad:
    @pytest.fixture
    def api_settings(self) -> dict[str, Any]:
        # A bucket that refills while the test runs, so answers mix 2xx and 429 the whole time.
        return {"rate_limit_per_second": 2.0, "rate_limit_burst": 10}

    def test_parallel_reads_and_writes_from_several_credentials_never_get_a_5xx(self, api) -> None:  # type: ignore[no-untyped-def]
        tenants = [api, *(api.new_project(f"load-{n}") for n in range(2))]

        def one(i: int) -> tuple[int, str, dict[str, Any]]:
            clients = tenants[i % len(tenants)]
            if i % 3 == 0:  # a write: a key pair, made and (if it was made) deleted again
                name = f"k{i}"
                body = json.dumps({"keypair": {"name": name}}).encode()
                made = raw_request(clients, "POST", f"/v2.1/{clients.project_id}/os-keypairs", body)
                if made.status_code == 200:
                    raw_request(clients, "DELETE", f"/v2.1/{clients.project_id}/os-keypairs/{name}", b"")
                answer = made
            else:
                answer = raw_request(
                    clients, "GET", f"/v1/{clients.project_id}/cloudservers/os-server-groups", b""
                )
            return answer.status_code, answer.headers.get("Retry-After", ""), answer.json()

        with ThreadPoolExecutor(max_workers=24) as pool:
            answers = list(pool.map(one, range(300)))
        statuses = collections.Counter(status for status, _, _ in answers)
        assert set(statuses) <= {200, 429}, statuses  # never a 5xx (nor anything else)
        assert statuses[200] >= 10 and statuses[429] >= 1, statuses
        for status, retry_after, body in answers:
            if status == 429:
                assert int(retry_after) >= 1 and body["error_code"] == "APIGW.0308", (retry_after, body)
