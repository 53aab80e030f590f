"""The ECS `absolute` limits document (`ShowServerLimitsResponse`) from a project's quotas and usage."""

from __future__ import annotations

from typing import Any

from controller.services.quotas import Limits

# Limits labcloud does not enforce (yet), answered with Huawei's usual figures so the SDK model is complete.
_FIXED = {
    "maxImageMeta": 128,
    "maxPersonality": 5,
    "maxPersonalitySize": 10240,
    "maxSecurityGroupRules": -1,
    "maxServerGroupMembers": 16,
    "maxServerGroups": 10,
    "maxServerMeta": 128,
    "maxTotalFloatingIps": 10,
    "totalFloatingIpsUsed": 0,
    "totalServerGroupsUsed": 0,
    "maxTotalSpotInstances": 0,
    "maxTotalSpotCores": 0,
    "maxTotalSpotRAMSize": 0,
    "totalSpotInstancesUsed": 0,
    "totalSpotCoresUsed": 0,
    "totalSpotRAMUsed": 0,
}


def limits_view(limits: Limits, used: Limits) -> dict[str, Any]:
    return {
        **_FIXED,
        "maxTotalInstances": limits.instances,
        "totalInstancesUsed": used.instances,
        "maxTotalCores": limits.cores,
        "totalCoresUsed": used.cores,
        "maxTotalRAMSize": limits.ram,
        "totalRAMUsed": used.ram,
        "maxSecurityGroups": limits.security_groups,
        "totalSecurityGroupsUsed": used.security_groups,
        "maxTotalKeypairs": limits.key_pairs,
        "limit_by_flavor": [],
    }
