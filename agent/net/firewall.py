"""Applying a rendered `Ruleset` to the kernel with ipset, iptables-restore and nft, and removing it again.

Order matters: ipsets must exist before rules refer to them, and can be destroyed only after no rule does.
Unchanged state is detected by comparing with what the kernel holds (`iptables-save`, `ipset save`, `nft list`,
or what was last written, trusted for a while), so re-applying writes nothing and a change writes only the
chains, lines and map elements that differ.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping

from agent.errors import NetworkError
from agent.net import antispoof, proc, rules
from agent.net.rules import FilterState, Ruleset

log = logging.getLogger(__name__)

Chains = Mapping[str, tuple[str, ...]]
KERNEL_READ_EVERY_S = 20.0


class _Table:
    """The filter table of one IP family, read with *-save and written with *-restore.

    Reading is what costs (iptables-save of 20,000 rules takes about a second), writing only the changed chains
    is cheap. So the table remembers what it last wrote and trusts that for `KERNEL_READ_EVERY_S`; after that
    the next sync reads the kernel again, compares everything and rewrites whatever drifted. The agent's
    housekeeping syncs every 30 s, so a change made behind our back is repaired within a minute.
    """

    def __init__(self, tool: str) -> None:
        self.tool = tool  # iptables or ip6tables
        self._known: FilterState | None = None  # what the kernel holds, as of `_known_at`
        self._known_at = 0.0
        self._verified = False  # the kernel was read back once after a write (spelling check)

    def read(self) -> FilterState:
        return rules.parse_iptables_save(proc.run([f"{self.tool}-save", "-t", "filter"]))

    def write(self, desired: Chains, current: FilterState) -> None:
        restore = rules.render_restore(desired, current)
        log.debug("%s-restore input:\n%s", self.tool, restore)
        proc.run([f"{self.tool}-restore", "-w", "--noflush"], stdin=restore)

    def sync(self, desired: Chains) -> bool:
        """Make our chains exactly `desired`; False if they already were."""
        fresh = self._known is None or time.monotonic() - self._known_at > KERNEL_READ_EVERY_S
        current = self.read() if fresh or self._known is None else self._known
        if fresh:
            self._remember(current, read=True)
        if current.chains == desired and current.jump_in_place:
            return False
        try:
            self.write(desired, current)
        except NetworkError:
            if fresh:
                raise
            # What we remembered was wrong (someone deleted a chain we meant to keep): start from the kernel.
            current = self.read()
            self.write(desired, current)
        self._remember(FilterState(chains=dict(desired), forward=(rules.FORWARD_JUMP,) if desired else ()))
        if not self._verified:
            self._check_read_back(desired)
        return True

    def _remember(self, state: FilterState, *, read: bool = False) -> None:
        """Keep `state` as the kernel's; only a kernel read restarts the clock (writes do not)."""
        self._known = state
        if read:
            self._known_at = time.monotonic()

    def _check_read_back(self, desired: Chains) -> None:
        """A rule rendered differently from iptables-save's spelling would be rewritten on every sync: say so."""
        self._verified = True
        after = self.read()
        for chain in sorted(set(desired) | set(after.chains)):
            if desired.get(chain) != after.chains.get(chain):
                log.warning("%s chain %s reads back as %s", self.tool, chain, after.chains.get(chain))
        if not after.jump_in_place:
            log.warning("%s FORWARD jump not in place after restore: %s", self.tool, after.forward)

    def clear(self) -> int:
        self._known = None
        current = self.read()
        if current.chains or current.jumps:
            self.write({}, current)
        return len(current.chains)


class Firewall:
    """The labcloud chains of both filter tables and the labcloud ipsets of the current network namespace."""

    def __init__(self) -> None:
        self._v4 = _Table("iptables")
        self._v6 = _Table("ip6tables")
        self._bridge = antispoof.Table()

    def sets(self) -> dict[str, frozenset[str]]:
        return rules.parse_ipset_save(proc.run(["ipset", "save"]))

    def apply(self, desired: Ruleset) -> bool:
        """Make the kernel hold exactly `desired`; returns False if it already did (nothing was written)."""
        current_sets = self.sets()
        changed = False
        set_update = rules.render_ipset_update(desired.sets, current_sets)
        if set_update:
            proc.run(["ipset", "restore"], stdin=set_update)
            changed = True
        changed |= self._v4.sync(desired.chains)
        changed |= self._v6.sync(desired.chains6)
        changed |= self._bridge.sync(desired.bridge)
        stale = set(current_sets) - set(desired.sets)
        if stale:
            proc.run(["ipset", "restore"], stdin=rules.render_ipset_destroy(stale))
            changed = True
        log.info(
            "firewall: %d chains, %d ipsets, %s",
            len(desired.chains),
            len(desired.sets),
            "updated" if changed else "unchanged",
        )
        return changed

    def teardown(self) -> None:
        """Remove every labcloud chain, the FORWARD jumps and every labcloud ipset."""
        removed = self._v4.clear() + self._v6.clear()
        self._bridge.forget()
        self._bridge.sync("")
        current_sets = self.sets()
        if current_sets:
            proc.run(["ipset", "restore"], stdin=rules.render_ipset_destroy(current_sets))
        log.info("firewall: removed %d chains and %d ipsets", removed, len(current_sets))
