"""Client tokens on a real SQLite database: digests, replay, conflict and expiry."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest
from sqlmodel import Session

from controller.db import create_schema, make_engine, session_scope
from controller.errors import BadRequest, Conflict
from controller.models.server import CreateServersIn
from controller.services import idempotency

TTL = timedelta(hours=8)
BODY = {
    "server": {
        "imageRef": "img",
        "flavorRef": "s6.nano.1",
        "name": "web",
        "vpcid": "vpc",
        "nics": [{"subnet_id": "sub"}],
        "root_volume": {"volumetype": "SSD"},
    }
}


def _digest(doc: dict[str, object]) -> str:
    return idempotency.body_digest(CreateServersIn.model_validate_json(json.dumps(doc)))


def test_digest_ignores_key_order_and_defaults_but_not_values() -> None:
    reordered = {"server": dict(reversed(list(BODY["server"].items())))}
    explicit = {"server": {**BODY["server"], "count": 1}, "dry_run": False}
    assert _digest(BODY) == _digest(reordered) == _digest(explicit)
    assert _digest(BODY) != _digest({"server": {**BODY["server"], "name": "db"}})


def test_tokens_are_checked() -> None:
    assert idempotency.check_token("a" * 64) == "a" * 64
    for bad in ("", "a" * 65, "tab\there"):
        with pytest.raises(BadRequest):
            idempotency.check_token(bad)


def test_replay_conflict_and_expiry(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'tokens.db'}")
    create_schema(engine)
    answer = idempotency.Replay("job1", ["s1", "s2"])
    with session_scope(engine) as session:
        assert idempotency.find(session, "p", "t", "d1", TTL) is None
        idempotency.remember(session, "p", "t", "d1", answer, TTL)
    with Session(engine) as session:
        assert idempotency.find(session, "p", "t", "d1", TTL) == answer
        assert idempotency.find(session, "other", "t", "d2", TTL) is None  # tokens are per project
        with pytest.raises(Conflict) as info:
            idempotency.find(session, "p", "t", "d2", TTL)
        assert info.value.code == "Ecs.0213" and info.value.status == 409
        # Past its lifetime the token is free again, and a new answer replaces the old.
        assert idempotency.find(session, "p", "t", "d2", timedelta(0)) is None
    with session_scope(engine) as session:
        idempotency.remember(session, "p", "t", "d2", idempotency.Replay("job2", []), timedelta(0))
    with Session(engine) as session:
        assert idempotency.find(session, "p", "t", "d2", TTL) == idempotency.Replay("job2", [])
    engine.dispose()
