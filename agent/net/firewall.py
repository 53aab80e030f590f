"""Applying a rendered `Ruleset` to the kernel with ipset and iptables-restore, and removing it again.

Order matters: ipsets must exist before rules refer to them, and can be destroyed only after no rule does.
Unchanged state is detected by comparing with `iptables-save` / `ipset save`, so re-applying writes nothing.
"""

from __future__ import annotations

import logging

from agent.net import proc, rules
from agent.net.rules import Ruleset

log = logging.getLogger(__name__)


class Firewall:
    """The labcloud part of the filter table and the labcloud ipsets of the current network namespace."""

    def current(self) -> tuple[Ruleset, int]:
        """What the kernel holds now: our chains and sets, and the number of FORWARD jumps into lc-FORWARD."""
        chains, jumps = rules.parse_iptables_save(proc.run(["iptables-save", "-t", "filter"]))
        sets = rules.parse_ipset_save(proc.run(["ipset", "save"]))
        return Ruleset(chains=chains, sets=sets), jumps

    def apply(self, desired: Ruleset) -> bool:
        """Make the kernel hold exactly `desired`; returns False if it already did (nothing was written)."""
        current, jumps = self.current()
        changed = False
        set_update = rules.render_ipset_update(desired.sets, current.sets)
        if set_update:
            proc.run(["ipset", "restore"], stdin=set_update)
            changed = True
        if current.chains != desired.chains or jumps != 1:
            restore = rules.render_restore(desired.chains, current.chains, jumps)
            log.debug("iptables-restore input:\n%s", restore)
            proc.run(["iptables-restore", "-w", "--noflush"], stdin=restore)
            changed = True
            self._check_converged(desired)
        stale = set(current.sets) - set(desired.sets)
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

    def _check_converged(self, desired: Ruleset) -> None:
        # A rule rendered differently from iptables-save's spelling would be rewritten on every sync; say so.
        after, jumps = self.current()
        for chain in sorted(set(desired.chains) | set(after.chains)):
            if desired.chains.get(chain) != after.chains.get(chain):
                log.warning(
                    "chain %s reads back differently:\n want %s\n have %s",
                    chain,
                    desired.chains.get(chain),
                    after.chains.get(chain),
                )
        if jumps != 1:
            log.warning("FORWARD jumps into lc-FORWARD %d times after restore", jumps)

    def teardown(self) -> None:
        """Remove every labcloud chain, the FORWARD jump and every labcloud ipset."""
        current, jumps = self.current()
        if current.chains or jumps:
            proc.run(
                ["iptables-restore", "-w", "--noflush"], stdin=rules.render_restore({}, current.chains, jumps)
            )
        if current.sets:
            proc.run(["ipset", "restore"], stdin=rules.render_ipset_destroy(current.sets))
        log.info("firewall: removed %d chains and %d ipsets", len(current.chains), len(current.sets))
