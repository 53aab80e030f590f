"""Huawei Cloud `SDK-HMAC-SHA256` request signatures: one HMAC-SHA256 keyed with the SK, no derived key.

Pure functions shared by the server (verify) and labcloud's own clients (sign). The canonical form follows the
official SDK's signer: see ../shared/api/ECS-API.md §2.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import quote, unquote

ALGORITHM = "SDK-HMAC-SHA256"
DATE_FORMAT = "%Y%m%dT%H%M%SZ"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


class SignatureError(Exception):
    """The Authorization header is missing, malformed or does not match."""


@dataclass(frozen=True)
class AuthorizationHeader:
    access_key: str
    signed_headers: tuple[str, ...]
    signature: str


def canonical_uri(path: str) -> str:
    segments = [quote(seg, safe="~") for seg in unquote(path).split("/")]
    uri = "/".join(segments)
    return uri if uri.endswith("/") else uri + "/"


def canonical_query(pairs: Sequence[tuple[str, str]]) -> str:
    return "&".join(f"{quote(k, safe='~')}={quote(v, safe='~')}" for k, v in sorted(pairs))


def canonical_request(
    method: str,
    path: str,
    query: Sequence[tuple[str, str]],
    headers: Mapping[str, str],
    signed_headers: Sequence[str],
    body_sha256: str,
) -> str:
    lowered = {k.lower(): v for k, v in headers.items()}
    header_block = "".join(f"{name}:{lowered.get(name, '').strip()}\n" for name in signed_headers)
    return "\n".join(
        [
            method.upper(),
            canonical_uri(path),
            canonical_query(query),
            header_block,
            ";".join(signed_headers),
            body_sha256,
        ]
    )


def string_to_sign(sdk_date: str, canonical: str) -> str:
    return f"{ALGORITHM}\n{sdk_date}\n{hashlib.sha256(canonical.encode()).hexdigest()}"


def compute_signature(secret_key: str, to_sign: str) -> str:
    return hmac.new(secret_key.encode(), to_sign.encode(), hashlib.sha256).hexdigest()


def parse_authorization(value: str) -> AuthorizationHeader:
    algorithm, _, rest = value.strip().partition(" ")
    if algorithm != ALGORITHM:
        raise SignatureError(f"unsupported signing algorithm {algorithm or '(none)'!r}; use {ALGORITHM}")
    fields: dict[str, str] = {}
    for part in rest.split(","):
        key, sep, val = part.strip().partition("=")
        if sep:
            fields[key] = val
    try:
        return AuthorizationHeader(
            access_key=fields["Access"],
            signed_headers=tuple(h for h in fields["SignedHeaders"].split(";") if h),
            signature=fields["Signature"],
        )
    except KeyError as missing:
        raise SignatureError(f"Authorization header lacks {missing.args[0]}") from None


def body_digest(headers: Mapping[str, str], body: bytes) -> str:
    lowered = {k.lower(): v for k, v in headers.items()}
    return lowered.get("x-sdk-content-sha256") or hashlib.sha256(body).hexdigest()


def verify(
    *,
    secret_key: str,
    auth: AuthorizationHeader,
    method: str,
    path: str,
    query: Sequence[tuple[str, str]],
    headers: Mapping[str, str],
    body: bytes,
    now: datetime,
    max_skew_seconds: int,
) -> None:
    """Raise SignatureError unless the request is signed by `secret_key` within the allowed clock skew."""
    lowered = {k.lower(): v for k, v in headers.items()}
    for required in ("host", "x-sdk-date"):
        if required not in auth.signed_headers:
            raise SignatureError(f"the signature must cover the {required} header")
    sdk_date = lowered.get("x-sdk-date", "")
    try:
        signed_at = datetime.strptime(sdk_date, DATE_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        raise SignatureError(f"X-Sdk-Date {sdk_date!r} is not of the form YYYYMMDDTHHMMSSZ") from None
    if abs((now - signed_at).total_seconds()) > max_skew_seconds:
        raise SignatureError(
            f"X-Sdk-Date {sdk_date} is more than {max_skew_seconds} s from the server's clock"
        )
    canonical = canonical_request(
        method, path, query, lowered, auth.signed_headers, body_digest(lowered, body)
    )
    expected = compute_signature(secret_key, string_to_sign(sdk_date, canonical))
    if not hmac.compare_digest(expected, auth.signature.lower()):
        raise SignatureError("the request signature does not match")


def sign(
    *,
    access_key: str,
    secret_key: str,
    method: str,
    path: str,
    query: Sequence[tuple[str, str]],
    headers: dict[str, str],
    body: bytes,
    now: datetime | None = None,
) -> dict[str, str]:
    """Return `headers` plus X-Sdk-Date and Authorization, signing every header (as the official SDK does)."""
    signed = dict(headers)
    signed["X-Sdk-Date"] = (now or datetime.now(UTC)).strftime(DATE_FORMAT)
    names = sorted(k.lower() for k in signed if "_" not in k)
    canonical = canonical_request(method, path, query, signed, names, body_digest(signed, body))
    signature = compute_signature(secret_key, string_to_sign(signed["X-Sdk-Date"], canonical))
    signed["Authorization"] = (
        f"{ALGORITHM} Access={access_key}, SignedHeaders={';'.join(names)}, Signature={signature}"
    )
    return signed
