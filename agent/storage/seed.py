"""NoCloud seed ISOs: how a guest learns its hostname, SSH keys, password and user-data.

The ISO has volume id `cidata` and Joliet + Rock Ridge names (`meta-data`, `user-data`, `network-config`);
without them a guest would see `USERDATA.;1`. It is padded to at least 256 KiB because busybox `findfs`
(the project's tiny image) does not recognise ISO9660 images under ~96 KiB.

YAML is written by hand: every string value is a JSON string, which is a valid YAML double-quoted scalar.
Stock images (cloud-init) and the tiny image read the same files; the tiny image parses exactly the shapes
written here (the `ssh_authorized_keys:` list, `password:`, and `text/x-shellscript` MIME parts).
"""

from __future__ import annotations

import grp
import io
import json
import logging
import os
import secrets
from collections.abc import Sequence
from email import message_from_string
from email.message import Message
from email.mime.multipart import MIMEMultipart
from pathlib import Path
from typing import Any

from agent.errors import StorageError

log = logging.getLogger(__name__)

MIN_SEED_BYTES = 256 * 1024
VOLUME_ID = "cidata"
# The seed may hold the admin password: readable by QEMU's group, not by everyone.
SEED_MODE = 0o640
QEMU_GROUP = "libvirt-qemu"

# (ISO9660 level-3 name, Joliet / Rock Ridge name)
_FILES = {
    "meta-data": "/META_DATA.;1",
    "user-data": "/USER_DATA.;1",
    "network-config": "/NETWORK_CONFIG.;1",
}

# First-line prefixes cloud-init uses to infer a part's type, longest first.
_STARTS_WITH = (
    ("#cloud-config-archive", "text/cloud-config-archive"),
    ("#cloud-config", "text/cloud-config"),
    ("#cloud-boothook", "text/cloud-boothook"),
    ("#include-once", "text/x-include-once-url"),
    ("#include", "text/x-include-url"),
    ("#part-handler", "text/part-handler"),
    ("## template: jinja", "text/jinja2"),
    ("#!", "text/x-shellscript"),
)


def build_seed(
    path: Path,
    *,
    instance_id: str,
    hostname: str,
    ssh_keys: list[str],
    admin_pass: str | None,
    user_data: str | None,
    network_config: dict[str, Any] | None = None,
) -> None:
    """Write the NoCloud seed ISO for one server at `path`, atomically (temp file + rename)."""
    files = {
        "meta-data": render_meta_data(instance_id=instance_id, hostname=hostname, ssh_keys=ssh_keys),
        "user-data": render_user_data(
            hostname=hostname, ssh_keys=ssh_keys, admin_pass=admin_pass, user_data=user_data
        ),
    }
    if network_config is not None:
        files["network-config"] = json.dumps(network_config, indent=2, sort_keys=True) + "\n"
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        with tmp.open("xb") as out:
            _write_iso({name: text.encode() for name, text in files.items()}, out)
            size = out.tell()
            if size < MIN_SEED_BYTES:
                out.truncate(MIN_SEED_BYTES)
            out.flush()
            os.fsync(out.fileno())
        _restrict(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        raise StorageError(f"cannot write seed {path}: {exc}") from exc
    finally:
        tmp.unlink(missing_ok=True)
    log.info("wrote seed %s for %s (%s)", path, instance_id, ", ".join(files))


def read_seed(path: Path) -> dict[str, str]:
    """Return the seed's files by their long (Joliet) names; for tests and debugging."""
    import pycdlib

    iso = pycdlib.PyCdlib()
    try:
        iso.open(str(path))
    except (OSError, pycdlib.pycdlibexception.PyCdlibException) as exc:
        raise StorageError(f"cannot read seed {path}: {exc}") from exc
    try:
        result: dict[str, str] = {}
        for _dirname, _dirs, names in iso.walk(joliet_path="/"):
            for name in names:
                buf = io.BytesIO()
                iso.get_file_from_iso_fp(buf, joliet_path=f"/{name}")
                result[name] = buf.getvalue().decode()
        return result
    finally:
        iso.close()


def render_meta_data(*, instance_id: str, hostname: str, ssh_keys: Sequence[str]) -> str:
    lines = [
        f"instance-id: {_q(instance_id)}",
        f"local-hostname: {_q(hostname)}",
        *_yaml_list("public-keys", ssh_keys),
    ]
    return "\n".join(lines) + "\n"


def render_cloud_config(*, hostname: str, ssh_keys: Sequence[str], admin_pass: str | None) -> str:
    """labcloud's cloud-config: hostname, keys and, if given, the password of root and the default user."""
    lines = ["#cloud-config", f"hostname: {_q(hostname)}", *_yaml_list("ssh_authorized_keys", ssh_keys)]
    if admin_pass is not None:
        if "\n" in admin_pass or "\r" in admin_pass:
            raise StorageError("admin password must be a single line")
        # `password` is the default user's (cloud-init); `chpasswd.list` also sets root's, which the tiny
        # image logs in as.
        lines += [
            f"password: {_q(admin_pass)}",
            "chpasswd:",
            "  expire: false",
            *("  " + line for line in _yaml_list("list", [f"root:{admin_pass}"])),
            "ssh_pwauth: true",
        ]
    return "\n".join(lines) + "\n"


def render_user_data(
    *, hostname: str, ssh_keys: Sequence[str], admin_pass: str | None, user_data: str | None
) -> str:
    """Plain cloud-config, or a MIME multipart of that cloud-config plus the user's own data."""
    config = render_cloud_config(hostname=hostname, ssh_keys=ssh_keys, admin_pass=admin_pass)
    if user_data is None:
        return config
    mime = MIMEMultipart("mixed")
    mime.attach(_text_part(config, "text/cloud-config", "labcloud.cfg"))
    if user_data.lstrip().lower().startswith(("content-type:", "mime-version:")):
        # Already MIME: nest it whole; cloud-init walks nested multiparts.
        mime.attach(message_from_string(user_data))
    else:
        mime.attach(_text_part(user_data, user_data_type(user_data), "user-data"))
    return mime.as_string()


def user_data_type(text: str) -> str:
    """The content type cloud-init infers from the first line of a user-data part."""
    for prefix, ctype in _STARTS_WITH:
        if text.startswith(prefix):
            return ctype
    return "text/plain"


def dhcp_network_config(macs: Sequence[str]) -> dict[str, Any]:
    """NoCloud network-config v2: DHCPv4 on every NIC, named eth0, eth1, ... in port order by MAC."""
    ethernets = {
        f"eth{index}": {"match": {"macaddress": mac.lower()}, "set-name": f"eth{index}", "dhcp4": True}
        for index, mac in enumerate(macs)
    }
    return {"version": 2, "ethernets": ethernets}


def _text_part(text: str, ctype: str, filename: str) -> Message:
    part = Message()
    part.add_header("Content-Type", ctype, charset="utf-8")
    part["Content-Transfer-Encoding"] = "7bit" if text.isascii() else "8bit"
    part.add_header("Content-Disposition", "attachment", filename=filename)
    part.set_payload(text)
    return part


def _write_iso(files: dict[str, bytes], out: io.BufferedWriter) -> None:
    import pycdlib  # on first use, like pyroute2: an idle agent need not carry it

    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, joliet=3, rock_ridge="1.09", vol_ident=VOLUME_ID)
    try:
        for name, data in files.items():
            iso.add_fp(io.BytesIO(data), len(data), _FILES[name], rr_name=name, joliet_path=f"/{name}")
        iso.write_fp(out)
    except pycdlib.pycdlibexception.PyCdlibException as exc:
        raise StorageError(f"pycdlib could not build the seed: {exc}") from exc
    finally:
        iso.close()


def _restrict(path: Path) -> None:
    """0640 with QEMU's group where it exists (libvirt's dynamic ownership also chowns it at start)."""
    try:
        gid = grp.getgrnam(QEMU_GROUP).gr_gid
    except KeyError:
        gid = -1
    if gid != -1:
        os.chown(path, -1, gid)
    path.chmod(SEED_MODE)


def _yaml_list(key: str, items: Sequence[str]) -> list[str]:
    if not items:
        return [f"{key}: []"]
    return [f"{key}:", *(f"  - {_q(item)}" for item in items)]


def _q(value: str) -> str:
    """A YAML double-quoted scalar. JSON quoting is valid YAML, except that YAML 1.1 parsers (PyYAML,
    cloud-init) fold NEL, LS and PS as line breaks, so those are escaped too."""
    quoted = json.dumps(value, ensure_ascii=False)
    for char in ("\u0085", "\u2028", "\u2029", "\ufeff"):
        quoted = quoted.replace(char, f"\\u{ord(char):04x}")
    return quoted
