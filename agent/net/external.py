"""The host's side of the external network: EIPs (1:1 NAT) and shared SNAT.

    external segment ── <external dev> (host ns, no address)
                           └─ macvlan ext0 ── [external ns: host's external IP, proxy ARP for bound EIPs]
                                                  ├─ lce<vpc A> ══ ex0 [router ns of VPC A: DNAT/SNAT] ── gw0 ── guests
                                                  └─ lce<vpc B> ══ ex0 [router ns of VPC B] …

One external namespace per host (held open by a holder process, like the routers) owns the host's address on
the external segment, through a macvlan on the configured device so that the device itself stays untouched.
It answers ARP for the EIPs of this host's ports and routes each to its VPC's router over a point-to-point
transit link; the router does the NAT, because only there is a fixed IP unambiguous (VPCs may overlap). So a
packet to an EIP reaches the guest through the router's gateway port and the bridge, and passes the guest's
security-group chains like any other. Shared SNAT is two steps: the router maps a guest without an EIP to its
transit address, the external namespace maps transit addresses to the host's external address. Unbinding an EIP
removes its rules, routes and proxy entry and flushes its conntrack entries, so established connections end too.
An EIP that arrives is announced with a gratuitous ARP (`garp`), so an EIP moved from another host works at once.

`ExternalNetwork` is driven by `HostNetwork`, under its lock: `plumb_vpc` from `ensure_network`, `unplumb_vpc`
from `delete_network`, `set_spec` for a controller push. The desired state and the transit link allocation live
in `<state>/net/external.json`.
"""

from __future__ import annotations

import ipaddress
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from agent.errors import NetworkError
from agent.net import garp, links, names, nat, proc, router
from agent.net.files import write_atomically
from agent.net.router import Router
from agent.schemas import ExternalSpec, FloatingIpSpec

log = logging.getLogger(__name__)

EXTERNAL_KEY = "lc-external"  # the holder's marker in place of a VPC id (VPC ids are UUIDs)
STATE_FILE = "external.json"
HOST_LINK_ADDR = "169.254.0.1"  # the host's end of every router's up0 link (see network.py)


@dataclass(frozen=True)
class ExternalConfig:
    """The agent's external settings: the device on the external segment, this host's address, the gateway."""

    device: str
    address: ipaddress.IPv4Interface
    gateway: str | None = None

    @classmethod
    def from_settings(
        cls, device: str | None, address: str | None, gateway: str | None
    ) -> ExternalConfig | None:
        if not device and not address:
            return None
        if not device or not address:
            raise NetworkError("the external network needs both LABCLOUD_AGENT_EXTERNAL_DEV and _EXTERNAL_IP")
        try:
            iface = ipaddress.IPv4Interface(address)
            if gateway:
                ipaddress.IPv4Address(gateway)
        except ValueError as exc:
            raise NetworkError(f"external network settings: {exc}") from exc
        if iface.network.prefixlen == 32:
            raise NetworkError(f"LABCLOUD_AGENT_EXTERNAL_IP {address} needs its prefix length (e.g. /24)")
        return cls(device=device, address=iface, gateway=gateway or None)


@dataclass
class ExternalState:
    spec: ExternalSpec = field(default_factory=ExternalSpec)
    links: dict[str, int] = field(default_factory=dict)  # VPC id -> transit link index
    holder: Router | None = None


def transit_link_name(vpc_id: str) -> str:
    return nat.TRANSIT_LINK_PREFIX + names.id11(vpc_id)


class ExternalNetwork:
    def __init__(self, net_root: Path, owner: str, config: ExternalConfig) -> None:
        self.config = config
        self._path = net_root / STATE_FILE
        self._owner = owner

    # --- state ---

    def load(self) -> ExternalState:
        try:
            data = json.loads(self._path.read_text())
            holder = data.get("holder")
            return ExternalState(
                spec=ExternalSpec.model_validate(data["spec"]),
                links={str(k): int(v) for k, v in data["links"].items()},
                holder=Router(pid=holder["pid"], netns_inode=holder["netns_inode"]) if holder else None,
            )
        except FileNotFoundError:
            return ExternalState()
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("unreadable %s (%s); starting from an empty external state", self._path, exc)
            return ExternalState()

    def _save(self, state: ExternalState) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        holder = state.holder
        data = {
            "spec": state.spec.model_dump(mode="json"),
            "links": state.links,
            "holder": {"pid": holder.pid, "netns_inode": holder.netns_inode} if holder else None,
        }
        write_atomically(self._path, json.dumps(data, indent=2, sort_keys=True) + "\n", mode=0o600)

    # --- verbs ---

    def check(self) -> None:
        for tool in ("conntrack", "iptables-restore", "ip"):
            proc.which(tool)
        # `ip`, not netlink: this runs in the agent's start-up, inside an event loop pyroute2 cannot share.
        try:
            proc.run(["ip", "-o", "link", "show", "dev", self.config.device])
        except NetworkError:
            raise NetworkError(
                f"the external device {self.config.device} (LABCLOUD_AGENT_EXTERNAL_DEV) does not exist here"
            ) from None

    def set_spec(self, spec: ExternalSpec, routers: dict[str, Router]) -> bool:
        """Store and apply a controller push; False if it is older than what the host has (ignored)."""
        state = self.load()
        if spec.version < state.spec.version:
            log.info("ignoring external spec version %s (have %s)", spec.version, state.spec.version)
            return False
        gone = _removed(state.spec, spec)
        snat_off = set(state.spec.snat_vpcs) - set(spec.snat_vpcs)
        state.spec = spec
        self._save(state)
        holder = self._ensure_holder(state)
        for vpc_id, rtr in routers.items():
            if vpc_id in state.links:
                self._apply_router(state, vpc_id, rtr)
        self._apply_external(state, holder)
        for fip in gone:
            self._flush(fip.eip, routers.get(fip.vpc_id), holder)
        for vpc_id in snat_off & set(routers) & set(state.links):
            # Connections through shared SNAT end when it is switched off, not when they time out.
            _conntrack_delete(
                routers[vpc_id].netns_path, "--reply-dst", nat.transit_pair(state.links[vpc_id])[1]
            )
        log.info(
            "external: %d EIPs, shared SNAT for %d VPCs (version %s)",
            len(spec.floating_ips),
            len(spec.snat_vpcs),
            spec.version,
        )
        return True

    def plumb_vpc(self, vpc_id: str, rtr: Router) -> None:
        """The VPC router's external leg, its default route through it, its NAT rules; the external side too."""
        state = self.load()
        holder = self._ensure_holder(state)
        index = state.links.get(vpc_id)
        if index is None:
            used = set(state.links.values())
            index = next(i for i in range(nat.MAX_TRANSIT_LINKS) if i not in used)
            state.links[vpc_id] = index
            self._save(state)  # before the link exists: a crash leaves an allocation, never an orphan link
        ext_ip, rtr_ip = nat.transit_pair(index)
        name = transit_link_name(vpc_id)
        with links.netlink(holder.netns_path) as ext, links.netlink(rtr.netns_path) as rtr_nl:
            lce, ex0 = links.ensure_veth(ext, name, rtr_nl, nat.ROUTER_EXTERNAL_DEV, rtr.pid)
            up0 = links.index(rtr_nl, names.ROUTER_UPLINK_DEV)
            links.sync_addresses(ext, lce, {ipaddress.IPv4Interface(f"{ext_ip}/31")})
            links.sync_addresses(rtr_nl, ex0, {ipaddress.IPv4Interface(f"{rtr_ip}/31")})
            # The host stays reachable on its link address; everything else leaves through the external leg.
            rtr_nl.route("replace", dst=f"{HOST_LINK_ADDR}/32", oif=up0, scope=253)
            rtr_nl.route("replace", dst="0.0.0.0/0", gateway=ext_ip, oif=ex0)
        self._apply_router(state, vpc_id, rtr)
        self._apply_external(state, holder)

    def unplumb_vpc(self, vpc_id: str) -> None:
        """Forget the VPC's transit link (its router namespace is going away with its end of it)."""
        state = self.load()
        if vpc_id not in state.links:
            return
        holder = self._live_holder(state)
        if holder is not None:
            with links.netlink(holder.netns_path) as ext:
                links.delete_link(ext, transit_link_name(vpc_id))
        del state.links[vpc_id]
        self._save(state)
        if holder is not None:
            self._apply_external(state, holder)

    def teardown(self) -> None:
        state = self.load()
        holder = self._live_holder(state)
        if holder is not None:
            router.stop(holder, EXTERNAL_KEY, self._owner)
        self._path.unlink(missing_ok=True)

    # --- internals ---

    def _live_holder(self, state: ExternalState) -> Router | None:
        if state.holder is not None and router.is_alive(state.holder, EXTERNAL_KEY, self._owner):
            return state.holder
        return router.find(self._owner).get(EXTERNAL_KEY)

    def _ensure_holder(self, state: ExternalState) -> Router:
        """The external namespace, with the macvlan, the host's address, the default route and forwarding."""
        holder = self._live_holder(state)
        if holder is None:
            holder = router.start(EXTERNAL_KEY, self._owner)
        if state.holder != holder:
            state.holder = holder
            self._save(state)
        cfg = self.config
        with links.netlink(holder.netns_path) as ext:
            if links.index(ext, nat.EXTERNAL_DEV) is None:
                proc.run(["ip", "link", "add", nat.EXTERNAL_DEV, "link", cfg.device, "netns", str(holder.pid),
                          "type", "macvlan", "mode", "bridge"])  # fmt: skip
                log.info("external namespace %s: macvlan on %s", holder.netns_inode, cfg.device)
            idx = links.index(ext, nat.EXTERNAL_DEV)
            if idx is None:
                raise NetworkError(f"the macvlan {nat.EXTERNAL_DEV} on {cfg.device} did not appear")
            links.set_up(ext, "lo")
            ext.link("set", index=idx, state="up")
            links.sync_addresses(ext, idx, {cfg.address})
            if cfg.gateway:
                ext.route("replace", dst="0.0.0.0/0", gateway=cfg.gateway, oif=idx)
        sysctls = [
            "net.ipv4.ip_forward=1",
            f"net.ipv4.neigh.{nat.EXTERNAL_DEV}.proxy_delay=0",  # answer ARP for EIPs at once
            f"net.ipv4.conf.{nat.EXTERNAL_DEV}.send_redirects=0",
        ]
        if Path("/proc/sys/net/ipv6").exists():
            sysctls += ["net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1"]
        proc.run(proc.in_netns(holder.netns_path, ["sysctl", "-q", "-w", *sysctls]))
        return holder

    def _apply_router(self, state: ExternalState, vpc_id: str, rtr: Router) -> None:
        index = state.links.get(vpc_id)
        transit = nat.transit_pair(index)[1] if index is not None else None
        fips = [f for f in state.spec.floating_ips if f.vpc_id == vpc_id]
        rules = nat.render_router(fips, snat=vpc_id in state.spec.snat_vpcs, transit_ip=transit)
        log.debug("vpc %s router NAT:\n%s", vpc_id, rules)
        proc.run(proc.in_netns(rtr.netns_path, ["iptables-restore", "-w"]), stdin=rules)

    def _apply_external(self, state: ExternalState, holder: Router) -> None:
        linked = {vpc: transit_link_name(vpc) for vpc in state.links}
        fips = [f for f in state.spec.floating_ips if f.vpc_id in linked]
        rules = nat.render_external(fips, linked, str(self.config.address.ip))
        proc.run(proc.in_netns(holder.netns_path, ["iptables-restore", "-w"]), stdin=rules)
        with links.netlink(holder.netns_path) as ext:
            for vpc_id, name in linked.items():
                idx = links.index(ext, name)
                if idx is None:
                    continue  # its router is being rebuilt; plumb_vpc adds it again
                rtr_ip = nat.transit_pair(state.links[vpc_id])[1]
                wanted = {ipaddress.IPv4Network(f.eip) for f in fips if f.vpc_id == vpc_id}
                links.sync_routes(ext, idx, wanted, rtr_ip)
        self._sync_proxies(holder, {f.eip for f in fips})

    def _sync_proxies(self, holder: Router, wanted: set[str]) -> None:
        """Proxy ARP entries on ext0: exactly one per bound EIP."""
        ns = holder.netns_path
        listing = proc.run(proc.in_netns(ns, ["ip", "-j", "neigh", "show", "proxy", "dev", nat.EXTERNAL_DEV]))
        present = {str(entry.get("dst")) for entry in json.loads(listing or "[]")}
        for ip in sorted(present - wanted):
            proc.run(proc.in_netns(ns, ["ip", "neigh", "del", "proxy", ip, "dev", nat.EXTERNAL_DEV]))
        for ip in sorted(wanted - present):
            proc.run(proc.in_netns(ns, ["ip", "neigh", "add", "proxy", ip, "dev", nat.EXTERNAL_DEV]))
        # An EIP new here may have lived on another host a moment ago: make the segment's neighbours forget it.
        garp.announce(ns, nat.EXTERNAL_DEV, wanted - present)

    def _flush(self, eip: str, rtr: Router | None, holder: Router) -> None:
        """End the connections of an EIP that went: its conntrack entries in its router and in the external ns."""
        places = [p.netns_path for p in (rtr, holder) if p is not None]
        for ns in places:
            for selector in ("--orig-dst", "--reply-dst"):
                _conntrack_delete(ns, selector, eip)
        log.info("external: EIP %s unbound, its connections flushed", eip)


def _conntrack_delete(netns_path: str, selector: str, ip: str) -> None:
    # conntrack exits 1 when nothing matched; that is fine here.
    try:
        proc.run(proc.in_netns(netns_path, ["conntrack", "-D", selector, ip]))
    except NetworkError as exc:
        if "0 flow entries" not in exc.message:
            raise


def _removed(old: ExternalSpec, new: ExternalSpec) -> list[FloatingIpSpec]:
    """EIP bindings in `old` that `new` no longer has (or has for another port)."""
    kept = {(f.eip, f.port_id, f.fixed_ip) for f in new.floating_ips}
    return [f for f in old.floating_ips if (f.eip, f.port_id, f.fixed_ip) not in kept]
