"""Disks on a hypervisor host: layout, qcow2 overlays, the base-image cache and NoCloud seeds.

The only package in labcloud that runs `qemu-img`.
"""
