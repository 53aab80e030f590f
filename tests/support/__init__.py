"""Helpers shared by tests: network namespaces, SSH into guests, the guest image."""
