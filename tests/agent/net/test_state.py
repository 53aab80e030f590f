"""The per-VPC state records under <state_dir>/net."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.errors import NetworkError
from agent.net.router import Router
from agent.net.state import NetworkRecord, NetworkStore
from agent.schemas import NetworkSpec, SubnetSpec


def _spec(vpc_id: str = "vpc-1") -> NetworkSpec:
    subnet = SubnetSpec(id="s1", cidr="10.0.1.0/24", gateway_ip="10.0.1.1")
    return NetworkSpec(vpc_id=vpc_id, vni=5, cidr="10.0.0.0/16", subnets=[subnet])


def test_records_round_trip_and_list_by_vpc(tmp_path: Path) -> None:
    store = NetworkStore(tmp_path / "net")
    assert store.ids() == []
    store.save(NetworkRecord(spec=_spec("vpc-2"), router=Router(pid=42, netns_inode=4026530000)))
    store.save(NetworkRecord(spec=_spec("vpc-1"), router=None))
    assert store.ids() == ["vpc-1", "vpc-2"]
    assert store.load("vpc-2") == NetworkRecord(spec=_spec("vpc-2"), router=Router(42, 4026530000))
    assert store.load("vpc-1") == NetworkRecord(spec=_spec("vpc-1"), router=None)
    assert store.load("vpc-3") is None
    store.remove("vpc-2")
    assert store.ids() == ["vpc-1"]


def test_a_corrupt_record_reads_as_missing(tmp_path: Path) -> None:
    store = NetworkStore(tmp_path / "net")
    store.save(NetworkRecord(spec=_spec(), router=None))
    (tmp_path / "net" / "vpc-1" / "network.json").write_text("{not json")
    assert store.load("vpc-1") is None


@pytest.mark.parametrize("bad", ["../etc", ".hidden", "a/b", ""])
def test_ids_that_would_escape_the_state_dir_are_refused(tmp_path: Path, bad: str) -> None:
    with pytest.raises(NetworkError):
        NetworkStore(tmp_path).directory(bad)
