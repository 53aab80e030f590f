"""The agent's host networking facade: VPC bridges, router namespaces, DHCP and security groups.

Per VPC on a host:

    guest --tap lct<port>--+
                           +-- bridge lcb<vpc> (no IP) --lcr<vpc>==gw0 [router ns] up0==lch<vpc]-- host
    guest --tap lct<port>--+                                  gateways    169.254.0.2  169.254.0.1
                           +-- lcx<vpc> (VXLAN, VNI of the VPC) ==underlay==> the VPC's other hosts

The gateway sits behind a bridge port, so traffic from the gateway and from the host to a guest is bridged and
therefore filtered by the guest port's physdev rules. The host reaches a VPC through `lch<vpc>` with
link-local addresses only, so nothing private-range lands in the host namespace. All methods are idempotent
and serialized. With an underlay address (multi-host), the VPC also gets its VXLAN port and the filter that
keeps its distributed gateway local (`overlay`).
"""

from __future__ import annotations

import ipaddress
import logging
import re
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from agent.errors import NetworkError
from agent.net import host_checks, links, names, overlay, proc, router, rules, taps
from agent.net.dhcp import DhcpHost, Dnsmasq
from agent.net.external import ExternalConfig, ExternalNetwork
from agent.net.firewall import Firewall
from agent.net.ports import BoundPort
from agent.net.router import Router
from agent.net.state import NetworkRecord, NetworkStore
from agent.schemas import ExternalSpec, NetworkSpec, OverlaySpec, SecurityGroupSpec

if TYPE_CHECKING:
    from pyroute2 import IPRoute

log = logging.getLogger(__name__)

HOST_LINK_ADDR = "169.254.0.1"  # on every lch<vpc> in the host namespace
ROUTER_LINK_ADDR = "169.254.0.2"  # on up0 in every router namespace
REQUIRED_TOOLS = (
    "iptables-save",
    "iptables-restore",
    "ip6tables-save",
    "ip6tables-restore",
    "ipset",
    "nft",  # the anti-spoofing table of guest ports (antispoof)
    "dnsmasq",
    "dhcp_release",
    "unshare",
    "nsenter",
    "sysctl",
)
_MAC_RE = re.compile(r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$")


class Network(Protocol):
    """What the agent needs from host networking; `HostNetwork` and `NullNetwork` implement it."""

    def check(self) -> None: ...
    def ensure_network(self, spec: NetworkSpec) -> None: ...
    def delete_network(self, vpc_id: str) -> None: ...
    def network_ids(self) -> list[str]: ...
    def set_overlay(self, vpc_id: str, spec: OverlaySpec) -> bool: ...
    def overlay_views(self) -> dict[str, OverlaySpec]: ...
    def sync_ports(self, ports: list[BoundPort], groups: list[SecurityGroupSpec]) -> None: ...
    def set_external(self, spec: ExternalSpec) -> bool: ...
    def teardown_all(self) -> None: ...


class HostNetwork:
    """Real networking in the namespace the agent runs in, with its records under `state_dir/net`."""

    def __init__(
        self, state_dir: Path, underlay_ip: str | None = None, external: ExternalConfig | None = None
    ) -> None:
        self._store = NetworkStore(Path(state_dir).resolve() / "net")
        # This host's VTEP address; None for a single host (no VXLAN devices at all).
        self.underlay_ip = underlay_ip
        # Marks our router holders apart from those of other agents on this machine.
        self._owner = str(self._store.root)
        # EIPs and shared SNAT (`external`); None: this host has no external network.
        self._external = ExternalNetwork(self._store.root, self._owner, external) if external else None
        self.external_ip = str(external.address.ip) if external else None  # reported to the controller
        self._firewall = Firewall()
        self._lock = threading.RLock()
        self._checked = False
        # VPCs this process has fully ensured, with the router that serves them: an unchanged spec whose
        # router and bridge are still there needs no netlink, sysctl or dnsmasq work (the create fast path).
        self._ready: dict[str, tuple[NetworkSpec, Router]] = {}

    def check(self) -> None:
        """Prerequisites: the tools, and br_netfilter passing bridged IP to iptables (else no SG works)."""
        for tool in REQUIRED_TOOLS:
            proc.which(tool)
        if self.underlay_ip is not None:
            proc.which("nft")
            overlay.check_local_address(self.underlay_ip)
        if self._external is not None:
            self._external.check()
        host_checks.ensure_bridge_filtering()
        self._checked = True

    def ensure_network(self, spec: NetworkSpec) -> None:
        """Bridge, router namespace, veths, addresses, routes and dnsmasq of one VPC, as `spec` says."""
        _validate(spec)
        self._require_checked()
        with self._lock:
            record = self._store.load(spec.vpc_id)
            spec = _newest_overlay(spec, record)
            if self._still_ready(spec):
                if record is None or record.spec != spec:
                    # Only the overlay's version moved on (every create's spec and push carries a new one):
                    # nothing to plumb, but the record keeps the newest version, so stale pushes stay ignored.
                    holder = self._ready[spec.vpc_id][1]
                    self._store.save(NetworkRecord(spec=spec, router=holder))
                    self._ready[spec.vpc_id] = (spec, holder)
                return
            self._ready.pop(spec.vpc_id, None)
            self._check_name_clash(spec.vpc_id)
            holder = self._live_router(spec.vpc_id, record)
            if holder is None:
                holder = router.start(spec.vpc_id, self._owner)
            # Record the holder before plumbing, so a failure below never leaks the namespace.
            self._store.save(NetworkRecord(spec=spec, router=holder))
            self._plumb(spec, holder)
            dnsmasq = Dnsmasq(spec.vpc_id, self._store.dhcp_files(spec.vpc_id))
            if any(subnet.dhcp_enable for subnet in spec.subnets):
                dnsmasq.ensure(spec, holder)
            else:
                dnsmasq.stop()
            self._ready[spec.vpc_id] = (spec, holder)
            log.info(
                "vpc %s: network ready (%d subnets, router pid %s, %d overlay peers)",
                spec.vpc_id,
                len(spec.subnets),
                holder.pid,
                len(spec.overlay.peers),
            )

    def set_overlay(self, vpc_id: str, spec: OverlaySpec) -> bool:
        """New peers and remote ports for a VPC this host has; False if it has none (nothing to update).

        A push older than what the host already has is ignored, so pushes may arrive in any order.
        """
        _validate_overlay(vpc_id, spec)
        with self._lock:
            record = self._store.load(vpc_id)
            if record is None:
                return False
            if spec.version < record.spec.overlay.version:
                log.info(
                    "vpc %s: ignoring overlay version %s (have %s)",
                    vpc_id,
                    spec.version,
                    record.spec.overlay.version,
                )
                return True
            self.ensure_network(record.spec.model_copy(update={"overlay": spec}))
            return True

    def overlay_views(self) -> dict[str, OverlaySpec]:
        """The overlay view recorded for every VPC network here (none without an underlay), for heartbeats.

        Read without the lock (records are replaced atomically), so a long firewall apply never delays a
        heartbeat; a view recorded but not yet plumbed is re-plumbed by the housekeeping's `ensure_network`.
        """
        if self.underlay_ip is None:
            return {}
        records = {vpc_id: self._store.load(vpc_id) for vpc_id in self._store.ids()}
        return {vpc_id: record.spec.overlay for vpc_id, record in records.items() if record is not None}

    def delete_network(self, vpc_id: str) -> None:
        """Remove the VPC's bridge, router namespace, dnsmasq, routes and files; nothing to do is fine."""
        with self._lock:
            self._ready.pop(vpc_id, None)
            record = self._store.load(vpc_id)
            holder = self._live_router(vpc_id, record)
            if not self._name_taken_by_other(vpc_id):
                with links.netlink() as host:
                    # Deleting our veth ends now (not when the namespace is reaped later) lets an immediate
                    # ensure_network of the same VPC start clean.
                    for name in (names.router_port_name(vpc_id), names.host_uplink_name(vpc_id)):
                        links.delete_link(host, name)
                    links.delete_link(host, names.vxlan_name(vpc_id))
                    links.delete_link(host, names.bridge_name(vpc_id))
                if self.underlay_ip is not None:
                    overlay.delete_filter(vpc_id)
            Dnsmasq(vpc_id, self._store.dhcp_files(vpc_id)).stop()
            if holder is not None:
                router.stop(holder, vpc_id, self._owner)
            if self._external is not None:
                self._external.unplumb_vpc(vpc_id)
            self._store.remove(vpc_id)
            if record is not None:
                self._forget_overlapping(record.spec)
            log.info("vpc %s: network deleted", vpc_id)

    def network_ids(self) -> list[str]:
        """VPCs this host has a record for (ensure_network repairs one whose kernel parts are gone)."""
        with self._lock:
            return self._store.ids()

    def set_external(self, spec: ExternalSpec) -> bool:
        """EIPs bound to this host's ports and the shared-SNAT VPCs (a controller push); False if this host has
        no external network or already has a newer push."""
        if self._external is None:
            log.warning("external spec version %s ignored: this host has no external network", spec.version)
            return False
        self._require_checked()
        with self._lock:
            routers = {
                vpc_id: holder
                for vpc_id in self._store.ids()
                if (holder := self._live_router(vpc_id, self._store.load(vpc_id))) is not None
            }
            return self._external.set_spec(spec, routers)

    def sync_ports(self, ports: list[BoundPort], groups: list[SecurityGroupSpec]) -> None:
        """Firewall, ipsets and DHCP hosts of every VPC for exactly these ports; others lose theirs."""
        self._require_checked()
        with self._lock:
            records = {vpc_id: self._store.load(vpc_id) for vpc_id in self._store.ids()}
            specs = {vpc_id: record.spec for vpc_id, record in records.items() if record is not None}
            _validate_ports(ports, specs)
            self._firewall.apply(rules.render_ruleset(ports, groups))
            taps.reattach(ports)  # a bridge rebuilt behind libvirt's back comes back without its guests' taps
            for vpc_id, record in records.items():
                if record is None:
                    continue
                dhcp_subnets = {subnet.id for subnet in record.spec.subnets if subnet.dhcp_enable}
                hosts = [
                    DhcpHost(mac=bp.port.mac, ip=bp.port.ip, hostname=bp.hostname)
                    for bp in ports
                    if bp.port.vpc_id == vpc_id and bp.port.subnet_id in dhcp_subnets
                ]
                holder = self._live_router(vpc_id, record)
                Dnsmasq(vpc_id, self._store.dhcp_files(vpc_id)).set_hosts(hosts, holder)
            log.info("synced %d ports and %d security groups", len(ports), len(groups))

    def teardown_all(self) -> None:
        """Remove every labcloud bridge, router namespace, dnsmasq, chain and ipset here, and the records."""
        with self._lock:
            self._ready.clear()
            failures: list[str] = []
            holders = router.find(self._owner)
            for vpc_id in self._store.ids():
                record = self._store.load(vpc_id)
                if record is not None and record.router is not None:
                    holders.setdefault(vpc_id, record.router)
            for vpc_id in sorted(set(holders) | set(self._store.ids())):
                try:
                    Dnsmasq(vpc_id, self._store.dhcp_files(vpc_id)).stop()
                    if vpc_id in holders:
                        router.stop(holders[vpc_id], vpc_id, self._owner)
                except NetworkError as exc:
                    failures.append(exc.message)
            try:
                with links.netlink() as host:
                    prefixes = (
                        names.ROUTER_PORT_PREFIX,
                        names.HOST_UPLINK_PREFIX,
                        names.VXLAN_PREFIX,
                        names.BRIDGE_PREFIX,
                    )
                    for prefix in prefixes:
                        for name in links.names_with_prefix(host, prefix):
                            links.delete_link(host, name)
            except NetworkError as exc:
                failures.append(exc.message)
            try:
                self._firewall.teardown()
            except NetworkError as exc:
                failures.append(exc.message)
            if self._external is not None:
                try:
                    self._external.teardown()
                except NetworkError as exc:
                    failures.append(exc.message)
            if self.underlay_ip is not None:
                try:
                    overlay.delete_all_filters()
                except NetworkError as exc:
                    failures.append(exc.message)
            self._store.remove_all()
            if failures:
                raise NetworkError("teardown incomplete: " + "; ".join(failures))
            log.info("host network torn down (%d routers)", len(holders))

    # internals

    def _require_checked(self) -> None:
        if not self._checked:
            self.check()

    def _forget_overlapping(self, gone: NetworkSpec) -> None:
        """A VPC whose CIDR overlaps a deleted one's may have been denied the host's route (`links.sync_routes`:
        the first VPC keeps it): its next ensure, the housekeeping's at the latest, plumbs it again and takes
        the route, so the host reaches its guests again."""
        freed = _routed_nets(gone)
        for vpc_id, (spec, _) in list(self._ready.items()):
            if any(net.overlaps(other) for net in _routed_nets(spec) for other in freed):
                del self._ready[vpc_id]

    def _still_ready(self, spec: NetworkSpec) -> bool:
        ready = self._ready.get(spec.vpc_id)
        if (
            ready is None
            or not _same_plumbing(ready[0], spec)
            or not router.is_alive(ready[1], spec.vpc_id, self._owner)
        ):
            return False
        dhcp = any(subnet.dhcp_enable for subnet in spec.subnets)
        if dhcp and Dnsmasq(spec.vpc_id, self._store.dhcp_files(spec.vpc_id)).pid(ready[1]) is None:
            return False  # killed behind our back: the full ensure starts it again
        with links.netlink() as host:
            if links.index(host, names.bridge_name(spec.vpc_id)) is None:
                return False
            return self._overlay_intact(host, spec)

    def _overlay_intact(self, host: IPRoute, spec: NetworkSpec) -> bool:
        """The VXLAN port is there and floods to exactly the peers: one deleted or an fdb entry changed behind
        our back makes the next ensure (the housekeeping's) plumb the overlay again."""
        if self.underlay_ip is None:
            return True
        idx = links.index(host, names.vxlan_name(spec.vpc_id))
        wanted = set(spec.overlay.peers) - {self.underlay_ip}
        return idx is not None and links.flood_peers(host, idx) == wanted

    def _live_router(self, vpc_id: str, record: NetworkRecord | None) -> Router | None:
        if (
            record is not None
            and record.router is not None
            and router.is_alive(record.router, vpc_id, self._owner)
        ):
            return record.router
        # The record may be lost or stale while the holder still runs (e.g. state written by a crashed agent).
        return router.find(self._owner).get(vpc_id)

    def _name_taken_by_other(self, vpc_id: str) -> bool:
        bridge = names.bridge_name(vpc_id)
        return any(other != vpc_id and names.bridge_name(other) == bridge for other in self._store.ids())

    def _check_name_clash(self, vpc_id: str) -> None:
        if self._name_taken_by_other(vpc_id):
            raise NetworkError(
                f"VPC {vpc_id} would share bridge {names.bridge_name(vpc_id)} with another VPC on this host"
            )

    def _plumb(self, spec: NetworkSpec, holder: Router) -> None:
        _router_sysctls(holder)
        subnets = [(ipaddress.IPv4Network(s.cidr, strict=False), s.gateway_ip) for s in spec.subnets]
        gateways = {ipaddress.IPv4Interface(f"{gw}/{net.prefixlen}") for net, gw in subnets}
        vpc_net = ipaddress.IPv4Network(spec.cidr, strict=False)
        host_routes = {vpc_net} | {net for net, _ in subnets if not net.subnet_of(vpc_net)}
        with links.netlink() as host, links.netlink(holder.netns_path) as rtr:
            bridge = links.ensure_bridge(host, names.bridge_name(spec.vpc_id))
            port, gw0 = links.ensure_veth(
                host, names.router_port_name(spec.vpc_id), rtr, names.ROUTER_GATEWAY_DEV, holder.pid
            )
            links.set_master(host, port, bridge)
            uplink, up0 = links.ensure_veth(
                host, names.host_uplink_name(spec.vpc_id), rtr, names.ROUTER_UPLINK_DEV, holder.pid
            )
            links.set_up(rtr, "lo")
            links.sync_addresses(rtr, gw0, gateways)
            links.sync_addresses(rtr, up0, {ipaddress.IPv4Interface(f"{ROUTER_LINK_ADDR}/32")})
            links.sync_addresses(host, uplink, {ipaddress.IPv4Interface(f"{HOST_LINK_ADDR}/32")})
            if self._external is None:  # else the default route is the external leg (`external`)
                links.replace_default_route(rtr, up0, HOST_LINK_ADDR)
            links.sync_routes(host, uplink, host_routes, ROUTER_LINK_ADDR)
            # The same gateway MAC on every host: the distributed gateway (see `overlay`).
            links.set_mac(rtr, gw0, overlay.gateway_mac(spec.vni))
            remote = {p.ip: p.mac for p in spec.overlay.remote_ports}
            links.sync_neighbours(rtr, gw0, remote)
            if self.underlay_ip is not None:
                self._plumb_overlay(host, bridge, spec, [gw for _, gw in subnets])
        if self._external is not None:
            self._external.plumb_vpc(spec.vpc_id, holder)

    def _plumb_overlay(self, host: IPRoute, bridge: int, spec: NetworkSpec, gateways: list[str]) -> None:
        """The VPC's VXLAN port on its bridge, flooding to exactly the peers, and the gateway filter on it."""
        assert self.underlay_ip is not None
        underlay_idx, underlay_mtu = links.link_with_address(host, self.underlay_ip)
        device = names.vxlan_name(spec.vpc_id)
        # Filter first: the port must never forward a frame before the gateway is kept off the tunnel.
        overlay.apply_filter(
            overlay.render_filter(
                spec.vpc_id,
                device,
                overlay.gateway_mac(spec.vni),
                overlay.host_mac(self.underlay_ip),
                gateways,
            )
        )
        vxlan = links.ensure_vxlan(
            host, device, spec.vni, self.underlay_ip, underlay_idx, underlay_mtu - links.VXLAN_OVERHEAD
        )
        links.set_master(host, vxlan, bridge)
        peers = set(spec.overlay.peers) - {self.underlay_ip}
        links.sync_flood_peers(host, vxlan, peers)


def _routed_nets(spec: NetworkSpec) -> set[ipaddress.IPv4Network]:
    """What the host routes into the VPC: its CIDR and any subnet outside it."""
    return {ipaddress.IPv4Network(c, strict=False) for c in (spec.cidr, *(s.cidr for s in spec.subnets))}


def _router_sysctls(holder: Router) -> None:
    """Forwarding on; no ICMP redirects between subnets on gw0; no IPv6 (VPCs are IPv4 only for now)."""
    settings = [
        "net.ipv4.ip_forward=1",
        "net.ipv4.conf.all.send_redirects=0",
        "net.ipv4.conf.default.send_redirects=0",
    ]
    if Path("/proc/sys/net/ipv6").exists():
        settings += ["net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1"]
    proc.run(proc.in_netns(holder.netns_path, ["sysctl", "-q", "-w", *settings]))


def _same_plumbing(a: NetworkSpec, b: NetworkSpec) -> bool:
    """Whether two specs make the same network: equal but perhaps for their overlay's version."""
    return a == b.model_copy(update={"overlay": b.overlay.model_copy(update={"version": a.overlay.version})})


def _newest_overlay(spec: NetworkSpec, record: NetworkRecord | None) -> NetworkSpec:
    """`spec` with the overlay the host already has when that one is newer (a stale spec must not roll back
    peers that a later push set)."""
    if record is not None and record.spec.overlay.version > spec.overlay.version:
        return spec.model_copy(update={"overlay": record.spec.overlay})
    return spec


def _validate_overlay(vpc_id: str, spec: OverlaySpec) -> None:
    try:
        for peer in spec.peers:
            ipaddress.IPv4Address(peer)
        for port in spec.remote_ports:
            ipaddress.IPv4Address(port.ip)
            if not _MAC_RE.match(port.mac):
                raise ValueError(f"{port.mac!r} is not a MAC address")
    except ValueError as exc:
        raise NetworkError(f"VPC {vpc_id} overlay: {exc}") from exc


def _validate(spec: NetworkSpec) -> None:
    """Refuse a spec the kernel or dnsmasq would reject, before anything is touched."""
    _validate_overlay(spec.vpc_id, spec.overlay)
    try:
        names.id11(spec.vpc_id)
        overlay.gateway_mac(spec.vni)
        ipaddress.IPv4Network(spec.cidr, strict=False)
        tags = [names.dhcp_tag(subnet.id) for subnet in spec.subnets]
        if len(set(tags)) != len(tags):
            raise ValueError("two subnets have the same id")
        for subnet in spec.subnets:
            net = ipaddress.IPv4Network(subnet.cidr, strict=False)
            if ipaddress.IPv4Address(subnet.gateway_ip) not in net:
                raise ValueError(f"gateway {subnet.gateway_ip} is outside subnet {subnet.cidr}")
            for server in subnet.dns:
                ipaddress.IPv4Address(server)
            if not 68 <= subnet.mtu <= 65535:
                raise ValueError(f"MTU {subnet.mtu} of subnet {subnet.id} is out of range")
    except ValueError as exc:
        raise NetworkError(f"VPC {spec.vpc_id}: {exc}") from exc


def _validate_ports(ports: list[BoundPort], specs: dict[str, NetworkSpec]) -> None:
    """Refuse the whole sync before touching anything if a port cannot be wired as asked."""
    seen: dict[str, str] = {}
    for bp in ports:
        port = bp.port
        if not bp.tap.startswith(names.TAP_PREFIX) or len(bp.tap) > 15:
            raise NetworkError(
                f"port {port.id}: tap {bp.tap!r} must start with {names.TAP_PREFIX!r} and fit 15 characters"
            )
        if not _MAC_RE.match(port.mac):
            raise NetworkError(f"port {port.id}: {port.mac!r} is not a MAC address")
        try:
            key = names.id11(port.id)
            ip = ipaddress.IPv4Address(port.ip)
        except ValueError as exc:
            raise NetworkError(f"port {port.id}: {exc}") from exc
        for claim in (key, bp.tap):
            if seen.setdefault(claim, port.id) != port.id:
                raise NetworkError(f"ports {seen[claim]} and {port.id} would share {claim}")
        spec = specs.get(port.vpc_id)
        if spec is None:
            raise NetworkError(
                f"port {port.id}: VPC {port.vpc_id} has no network on this host (ensure it first)"
            )
        subnet = next((s for s in spec.subnets if s.id == port.subnet_id), None)
        if subnet is None:
            raise NetworkError(f"port {port.id}: subnet {port.subnet_id} is not in VPC {port.vpc_id}")
        if ip not in ipaddress.IPv4Network(subnet.cidr, strict=False):
            raise NetworkError(f"port {port.id}: {ip} is outside subnet {subnet.cidr}")


class NullNetwork:
    """Does nothing but remember which networks exist and their overlay views (the newest, as a real host
    keeps them): for simulated hosts on libvirt's test driver. With an `underlay_ip` it reports those views
    like a multi-host agent does."""

    def __init__(
        self, state_dir: Path | None = None, underlay_ip: str | None = None, external_ip: str | None = None
    ) -> None:
        self._networks: set[str] = set()
        self._overlays: dict[str, OverlaySpec] = {}
        self.underlay_ip = underlay_ip
        self.external_ip = external_ip  # reported, so the controller lets EIPs bind here; nothing is plumbed

    def check(self) -> None:
        return None

    def ensure_network(self, spec: NetworkSpec) -> None:
        self._networks.add(spec.vpc_id)
        self._keep_newest(spec.vpc_id, spec.overlay)

    def delete_network(self, vpc_id: str) -> None:
        self._networks.discard(vpc_id)
        self._overlays.pop(vpc_id, None)

    def network_ids(self) -> list[str]:
        return sorted(self._networks)

    def set_overlay(self, vpc_id: str, spec: OverlaySpec) -> bool:
        if vpc_id not in self._networks:
            return False
        self._keep_newest(vpc_id, spec)
        return True

    def overlay_views(self) -> dict[str, OverlaySpec]:
        return dict(self._overlays) if self.underlay_ip is not None else {}

    def _keep_newest(self, vpc_id: str, spec: OverlaySpec) -> None:
        have = self._overlays.get(vpc_id)
        if have is None or spec.version >= have.version:
            self._overlays[vpc_id] = spec

    def sync_ports(self, ports: list[BoundPort], groups: list[SecurityGroupSpec]) -> None:
        return None

    def set_external(self, spec: ExternalSpec) -> bool:
        return False

    def teardown_all(self) -> None:
        self._networks.clear()
        self._overlays.clear()
