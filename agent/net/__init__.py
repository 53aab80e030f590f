"""Host networking of the agent: per-VPC bridges, router namespaces, DHCP and security groups.

The only package of the agent that touches pyroute2, iptables, ipset and dnsmasq. Callers use
`agent.net.network.HostNetwork` (or `NullNetwork`) and `agent.net.ports.BoundPort`.
"""
