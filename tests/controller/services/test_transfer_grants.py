"""Transfer grants, the pure logic: a presigned URL opens one object with one method until it expires, under the
key of the controller that signed it."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from controller.config import Settings
from controller.errors import Unauthorized
from controller.services.transfer_grants import GRANT_TTL_S, KEY_FILE, check, signed_url


def grant_of(url: str) -> str:
    return url.partition("?grant=")[2]


def refused(
    settings: Settings, kind: str, object_id: str, method: str, grant: str | None, words: str
) -> None:
    with pytest.raises(Unauthorized) as info:
        check(settings, kind, object_id, method, grant)  # type: ignore[arg-type]
    assert (info.value.status, info.value.code) == (401, "Agent.0401")
    assert words in info.value.message, info.value.message


def test_a_grant_opens_its_object_and_method_only(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home", public_url="http://controller:8778")
    url = signed_url(settings, "backup", "bk-1", "PUT")
    assert url.startswith("http://controller:8778/internal/backups/bk-1/file?grant=")
    grant = grant_of(url)
    check(settings, "backup", "bk-1", "PUT", grant)
    for kind, object_id, method in (
        ("image", "bk-1", "PUT"),
        ("backup", "bk-2", "PUT"),
        ("backup", "bk-1", "GET"),
    ):
        refused(settings, kind, object_id, method, grant, "not valid")

    # The expiry is signed too; an old grant has expired.
    expires, _, mac = grant.partition(".")
    refused(settings, "backup", "bk-1", "PUT", f"{int(expires) + 86400}.{mac}", "not valid")
    old = grant_of(signed_url(settings, "backup", "bk-1", "PUT", now=time.time() - GRANT_TTL_S - 1))
    refused(settings, "backup", "bk-1", "PUT", old, "has expired")
    for malformed in (None, "", "123", ".abc", "abc.def", "-5.abc"):
        refused(settings, "backup", "bk-1", "PUT", malformed, "needs the transfer grant")

    # The key stays in the controller's home (root only) and is the same for another process on that home;
    # a controller with another home does not accept the grant.
    key = settings.home / KEY_FILE
    assert key.stat().st_mode & 0o777 == 0o600
    check(Settings(home=tmp_path / "home"), "backup", "bk-1", "PUT", grant)
    refused(Settings(home=tmp_path / "other"), "backup", "bk-1", "PUT", grant, "not valid")
    image_url = signed_url(settings, "image", "img/../x", "GET")
    assert "/internal/images/img%2F..%2Fx/file?grant=" in image_url
