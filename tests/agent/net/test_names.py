"""Kernel object names: short, derived from ids, within the kernel's length limits."""

from __future__ import annotations

import pytest

from agent.net import names

VPC = "0A1B2C3D-4E5F-4061-8000-000000000001"
PORT = "7c3e9f10-2b44-4d5e-9a1b-1234567890ab"


def test_names_use_the_first_eleven_id_characters_without_dashes() -> None:
    assert names.id11(VPC) == "0a1b2c3d4e5"
    assert names.bridge_name(VPC) == "lcb0a1b2c3d4e5"
    assert names.router_port_name(VPC) == "lcr0a1b2c3d4e5"
    assert names.host_uplink_name(VPC) == "lch0a1b2c3d4e5"
    assert names.tap_name(PORT) == "lct7c3e9f102b4"
    assert names.ingress_chain(PORT) == "lci-7c3e9f102b4"
    assert names.egress_chain(PORT) == "lco-7c3e9f102b4"
    assert names.group_set(PORT) == "lcg-7c3e9f102b4"
    assert names.staging_set(names.group_set(PORT)) == "lcn-7c3e9f102b4"
    assert names.dhcp_tag(PORT) == "s7c3e9f102b444d5e9a1b1234567890ab"


def test_every_name_fits_the_kernel_limits() -> None:
    for device in (names.bridge_name, names.tap_name, names.router_port_name, names.host_uplink_name):
        assert len(device(VPC)) <= 15  # IFNAMSIZ - 1
    for chain in (
        names.ingress_chain,
        names.egress_chain,
        names.group_ingress_chain,
        names.group_egress_chain,
    ):
        assert len(chain(PORT)) <= 28
    assert (
        max(map(len, (names.FORWARD_CHAIN, names.EGRESS_DISPATCH_CHAIN, names.INGRESS_DISPATCH_CHAIN))) <= 28
    )
    assert len(names.staging_set(names.group_set(PORT))) <= 31


def test_short_ids_give_short_names() -> None:
    assert names.tap_name("p-1") == "lctp1"


@pytest.mark.parametrize("bad", ["", "---", "vpc/1", "vpc 1", "vpç"])
def test_ids_that_cannot_name_a_device_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        names.bridge_name(bad)


def test_ownership_is_recognised_by_prefix() -> None:
    assert names.is_owned_chain("lc-FORWARD")
    assert names.is_owned_chain("lci-0a1b2c3d4e5")
    assert names.is_owned_chain(names.group_ingress_chain("0a1b2c3d4e5"))
    assert names.is_owned_chain(names.group_egress_chain("0a1b2c3d4e5"))
    assert names.is_owned_chain(names.EGRESS_ALLOWED_CHAIN)
    assert not names.is_owned_chain("FORWARD")
    assert not names.is_owned_chain("DOCKER")
    assert names.is_owned_set("lcg-0a1b2c3d4e5")
    assert not names.is_owned_set("blocklist")
