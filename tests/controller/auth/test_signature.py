"""The signature module against the official signing guide's example vector and the official SDK's signer."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from controller.auth import signature as sig

GUIDE_SK = "MFyfvK41ba2giqM7Uio6PznpdUKGpownRZlmVmHc"
GUIDE_PATH = "/v1/77b6a44cba5143ab91d13ab9a8ff44fd/vpcs"
GUIDE_QUERY = [("limit", "2"), ("marker", "13551d6b-755d-4757-b956-536f674975c0")]
GUIDE_HEADERS = {
    "Content-Type": "application/json",
    "Host": "service.region.example.com",
    "X-Sdk-Date": "20191115T033655Z",
}
GUIDE_SIGNED = ("content-type", "host", "x-sdk-date")


def test_canonical_request_hash_matches_the_signing_guide() -> None:
    canonical = sig.canonical_request(
        "GET", GUIDE_PATH, GUIDE_QUERY, GUIDE_HEADERS, GUIDE_SIGNED, sig.EMPTY_SHA256
    )
    to_sign = sig.string_to_sign("20191115T033655Z", canonical)
    assert to_sign.splitlines()[-1] == "b25362e603ee30f4f25e7858e8a7160fd36e803bb2dfe206278659d71a9bcd7a"


def test_signature_matches_the_signing_guide() -> None:
    canonical = sig.canonical_request(
        "GET", GUIDE_PATH, GUIDE_QUERY, GUIDE_HEADERS, GUIDE_SIGNED, sig.EMPTY_SHA256
    )
    signature = sig.compute_signature(GUIDE_SK, sig.string_to_sign("20191115T033655Z", canonical))
    assert signature == "7be6668032f70418fcc22abc52071e57aff61b84a1d2381bb430d6870f4f6ebe"


def _verify(headers: dict[str, str], *, now: datetime, body: bytes = b"", sk: str = GUIDE_SK) -> None:
    auth = sig.parse_authorization(headers["Authorization"])
    sig.verify(
        secret_key=sk,
        auth=auth,
        method="POST",
        path="/v1/p/cloudservers",
        query=[("a", "b c")],
        headers=headers,
        body=body,
        now=now,
        max_skew_seconds=900,
    )


def test_sign_then_verify_round_trip_and_tampering() -> None:
    now = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
    headers = sig.sign(
        access_key="AK",
        secret_key=GUIDE_SK,
        method="POST",
        path="/v1/p/cloudservers",
        query=[("a", "b c")],
        headers={"Host": "h:1", "Content-Type": "application/json"},
        body=b'{"x":1}',
        now=now,
    )
    _verify(headers, now=now, body=b'{"x":1}')
    with pytest.raises(sig.SignatureError, match="does not match"):
        _verify(headers, now=now, body=b'{"x":2}')
    with pytest.raises(sig.SignatureError, match="does not match"):
        _verify(headers, now=now, body=b'{"x":1}', sk="other")
    with pytest.raises(sig.SignatureError, match="900 s"):
        _verify(headers, now=now + timedelta(minutes=16), body=b'{"x":1}')


def test_malformed_authorization_headers_are_rejected() -> None:
    with pytest.raises(sig.SignatureError, match="unsupported"):
        sig.parse_authorization("V11-HMAC-SHA256 Access=a, SignedHeaders=host, Signature=x")
    with pytest.raises(sig.SignatureError, match="Signature"):
        sig.parse_authorization("SDK-HMAC-SHA256 Access=a, SignedHeaders=host")


def test_official_sdk_signer_is_accepted() -> None:
    """The real huaweicloudsdkcore Signer produces what our verifier accepts."""
    from huaweicloudsdkcore.auth.credentials import BasicCredentials
    from huaweicloudsdkcore.sdk_request import SdkRequest
    from huaweicloudsdkcore.signer.signer import Signer

    request = SdkRequest(
        method="GET",
        schema="http",
        host="127.0.0.1:8778",
        resource_path="/v1/proj/cloudservers/detail",
        query_params=[("limit", 10), ("name", "web 1")],
        header_params={"Content-Type": "application/json", "X-Project-Id": "proj"},
        body="",
    )
    credentials = BasicCredentials("AKTEST", "SKTEST", "proj")
    signed = Signer(credentials).sign(request)
    headers = dict(signed.header_params)
    headers.setdefault("Host", "127.0.0.1:8778")
    auth = sig.parse_authorization(headers["Authorization"])
    sdk_date = datetime.strptime(headers["X-Sdk-Date"], sig.DATE_FORMAT).replace(tzinfo=UTC)
    sig.verify(
        secret_key="SKTEST",
        auth=auth,
        method="GET",
        path="/v1/proj/cloudservers/detail",
        query=[("limit", "10"), ("name", "web 1")],
        headers=headers,
        body=b"",
        now=sdk_date,
        max_skew_seconds=900,
    )
