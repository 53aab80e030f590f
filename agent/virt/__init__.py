"""Guests on this host: domain XML (`domain_xml`), the policy that designs it (`designer`), the libvirt
connection (`host`, the only module that imports libvirt) and accelerator detection (`accel`).

Nothing is imported here, so importing one module never drags libvirt in with it.
"""
