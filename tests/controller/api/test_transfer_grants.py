"""The controller's backup and image stores open to agents only with a transfer grant for that one object and
method: a real backup (taken by a real test-driver agent, which uploads with the grant it was given) is then
read and written by hand with the join token and every wrong or missing grant, and the stored file checked
byte for byte."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from huaweicloudsdkims.v2 import ListImagesRequest
from sqlmodel import Session

from controller.models.backup import Backup
from controller.services import transfer_grants
from tests.agent.storage.test_snapshots import write_pattern
from tests.controller.api.server_helpers import wait_job
from tests.controller.api.test_backups import back_up, cbr_client, make_vault
from tests.controller.api.test_volumes import attach, create_volume, evs_client, stopped_server, wait_volume


@pytest.fixture
def api_settings(seed_image_file: Path) -> dict[str, Any]:
    return {"seed_image": seed_image_file}


def with_grant(url: str, other: str) -> str:
    """`url`'s object with the grant of `other`."""
    return url.partition("?")[0] + "?" + other.partition("?")[2]


def test_backup_and_image_files_open_only_with_their_grant(api: Any, agent_host: Any) -> None:
    ecs, evs, cbr = api.ecs(), evs_client(api), cbr_client(api)
    server_id = stopped_server(api)
    volume_id = create_volume(evs, name="data").volume_ids[0]
    wait_volume(evs, volume_id, "available")
    assert wait_job(ecs, attach(ecs, server_id, volume_id).job_id).status == "SUCCESS"
    write_pattern(agent_host.settings.state_dir / "volumes" / f"{volume_id}.qcow2", 0x5A)
    (backup,) = back_up(cbr, make_vault(cbr, "disk", [(volume_id, "OS::Cinder::Volume")]).id)
    stored = api.ctx.settings.backup_store_dir / f"{backup.id}.qcow2"
    digest = hashlib.sha256(stored.read_bytes()).hexdigest()
    with Session(api.ctx.engine) as session:
        row = session.get(Backup, backup.id)
        assert row is not None and row.checksum == digest  # the agent's upload, with its PUT grant

    settings = api.ctx.settings
    get_url = transfer_grants.signed_url(settings, "backup", backup.id, "GET")
    join = {"Authorization": f"Bearer {api.ctx.join_token}"}
    secret = (agent_host.settings.state_dir / "api-token").read_text().strip()
    api_token = {"Authorization": f"Bearer {secret}"}
    expired = transfer_grants.signed_url(
        settings, "backup", backup.id, "GET", now=time.time() - transfer_grants.GRANT_TTL_S - 1
    )
    with httpx.Client(trust_env=False, timeout=60.0) as client:
        got = client.get(get_url, headers=join)
        assert got.status_code == 200 and hashlib.sha256(got.content).hexdigest() == digest

        wrong = {
            "no grant": get_url.partition("?")[0],
            "another backup's grant": with_grant(
                get_url, transfer_grants.signed_url(settings, "backup", "x", "GET")
            ),
            "an image grant": with_grant(
                get_url, transfer_grants.signed_url(settings, "image", backup.id, "GET")
            ),
            "a PUT grant": with_grant(
                get_url, transfer_grants.signed_url(settings, "backup", backup.id, "PUT")
            ),
            "an expired grant": expired,
        }
        for what, url in wrong.items():
            response = client.get(url, headers=join)
            assert response.status_code == 401, what
            assert response.json()["error"]["code"] == "Agent.0401", what
        # The grant does not stand in for the join token, nor does the agent's API token for either.
        assert client.get(get_url).status_code == 401
        assert client.get(get_url, headers=api_token).status_code == 401
        assert client.get(get_url.partition("?")[0], headers=api_token).status_code == 401

        # No host overwrites a backup: not without a grant, not with a read grant, and a write grant is only
        # good while the backup is being taken.
        put_url = transfer_grants.signed_url(settings, "backup", backup.id, "PUT")
        for url, status in ((get_url.partition("?")[0], 401), (get_url, 401), (put_url, 404)):
            response = client.put(url, content=b"not a backup", headers=join)
            assert response.status_code == status, response.text
        assert hashlib.sha256(stored.read_bytes()).hexdigest() == digest

        # Images alike: the seed image's grant reads the seed image only.
        seed = api.ims().list_images(ListImagesRequest()).images[0]
        image_url = transfer_grants.signed_url(settings, "image", seed.id, "GET")
        assert client.get(image_url, headers=join).status_code == 200
        assert client.get(with_grant(image_url, get_url), headers=join).status_code == 401
        assert client.get(image_url.partition("?")[0], headers=join).status_code == 401
