"""The guest's NoCloud parsing (yaml.awk, mime.awk, nocloud.sh) and its chpasswd, run on the host with the
image's own static busybox, so the shell and awk are exactly the guest's. The seeds come from labcloud's own
seed writer (agent/storage/seed.py) as well as from hand-written edge cases."""

from __future__ import annotations

import base64
import subprocess
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from pathlib import Path

import pytest

from agent.storage.seed import render_meta_data, render_user_data
from tests.images.conftest import RECIPE

LIB = RECIPE / "rootfs" / "usr" / "lib" / "tinycloud"
CHPASSWD = RECIPE / "rootfs" / "usr" / "sbin" / "chpasswd"
KEY1 = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOne one@example"
KEY2 = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQTwo two@example"
KEY3 = "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAThree"


class Guest:
    """Runs shell snippets with nocloud.sh sourced, under the guest's busybox and nothing else on PATH."""

    def __init__(self, bindir: Path, workdir: Path) -> None:
        self.bindir = bindir
        self.workdir = workdir

    def sh(self, script: str, *, env: dict[str, str] | None = None, stdin: str | None = None) -> str:
        proc = subprocess.run(
            [self.bindir / "sh", "-c", f". {LIB}/nocloud.sh\n{script}"],
            cwd=self.workdir,
            env={"PATH": str(self.bindir), "TC_LIB": str(LIB), "LC_ALL": "C", **(env or {})},
            input=stdin,
            capture_output=True,
            text=True,
            check=False,
        )
        assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stderr}{proc.stdout}"
        return proc.stdout

    def write(self, name: str, text: str, newline: str | None = None) -> Path:
        path = self.workdir / name
        with path.open("w", newline=newline) as f:
            f.write(text)
        return path

    def flatten(self, text: str) -> list[tuple[str, str, str]]:
        self.write("doc.yaml", text)
        out = self.sh("nc_flatten doc.yaml")
        return [tuple(line.split("\t", 2)) for line in out.splitlines()]  # type: ignore[misc]

    def split(self, user_data: str, newline: str | None = None) -> list[tuple[str, str]]:
        """Parts of `user_data` as (kind, content)."""
        self.write("user-data", user_data, newline)
        manifest = self.sh("nc_split_userdata user-data parts && cat parts/manifest")
        parts = []
        for line in manifest.splitlines():
            file, kind = line.split("\t")
            parts.append((kind, Path(self.workdir, file).read_text()))
        return parts

    def seed(self, meta_data: str, user_data: str) -> dict[str, list[str]]:
        """Everything nocloud_boot derives from a seed, without applying it."""
        self.write("meta-data", meta_data)
        self.write("user-data", user_data)
        out = self.sh(
            "nc_flatten meta-data > meta.flat\n"
            "nc_split_userdata user-data parts\n"
            "nc_config_flat parts/manifest > config.flat\n"
            "echo '== instance-id'; nc_first meta.flat instance-id\n"
            "echo '== hostname'; nc_hostname meta.flat config.flat; echo\n"
            "echo '== keys'; nc_ssh_keys meta.flat config.flat\n"
            "echo '== passwords'; nc_passwords config.flat\n"
            "echo '== scripts'; nc_parts parts/manifest script\n"
            "echo '== runcmd'; nc_values config.flat runcmd i\n"
        )
        result: dict[str, list[str]] = {}
        section: list[str] = []
        for line in out.splitlines():
            if line.startswith("== "):
                section = result.setdefault(line[3:], [])
            elif line:
                section.append(line)
        return result


@pytest.fixture
def guest(guest_bin: Path, tmp_path: Path) -> Guest:
    return Guest(guest_bin, tmp_path)


GUEST_SCRIPTS = [
    RECIPE / "initrd" / "init",
    *sorted((RECIPE / "rootfs" / "etc" / "init.d").iterdir()),
    RECIPE / "rootfs" / "etc" / "acpi" / "PWRF" / "00000080",
    RECIPE / "rootfs" / "usr" / "share" / "udhcpc" / "default.script",
    CHPASSWD,
    *sorted(LIB.glob("*.sh")),
]


@pytest.mark.parametrize("script", GUEST_SCRIPTS, ids=lambda p: str(p.relative_to(RECIPE)))
def test_guest_scripts_parse_with_busybox(guest_bin: Path, script: Path) -> None:
    subprocess.run([guest_bin / "sh", "-n", script], check=True)


@pytest.mark.parametrize("program", sorted(LIB.glob("*.awk")), ids=lambda p: p.name)
def test_awk_programs_parse_with_busybox(guest_bin: Path, program: Path) -> None:
    subprocess.run([guest_bin / "awk", "-f", program], stdin=subprocess.DEVNULL, check=True)


def test_flatten_reads_the_yaml_shapes_seeds_use(guest: Guest) -> None:
    doc = """#cloud-config
hostname: "vm-1"
ssh_authorized_keys:
  - "ssh-ed25519 AAAA key1"
  - ssh-rsa AAAB key2 # a comment
password: "p\\"a\\\\ss w\\u00e9rd:x #y"
chpasswd:
  expire: false
  list: |
    root:secret
    other:pw
runcmd:
- echo hi > /tmp/x
- [sh, -c, "echo 'it''s' $HOME"]
- 'single ''quoted'''
users: [a, "b c", 'd']
public-keys:
  k1: ssh-ed25519 AAAC k1
'quoted-key': v
empty:
last: ~
"""
    assert guest.flatten(doc) == [
        ("hostname", "s", "vm-1"),
        ("ssh_authorized_keys", "i", "ssh-ed25519 AAAA key1"),
        ("ssh_authorized_keys", "i", "ssh-rsa AAAB key2"),
        ("password", "s", 'p"a\\ss wérd:x #y'),
        ("chpasswd.expire", "s", "false"),
        ("chpasswd.list", "b", "root:secret"),
        ("chpasswd.list", "b", "other:pw"),
        ("runcmd", "i", "echo hi > /tmp/x"),
        ("runcmd", "i", "'sh' '-c' 'echo '\\''it'\\'''\\''s'\\'' $HOME'"),
        ("runcmd", "i", "single 'quoted'"),
        ("users", "i", "a"),
        ("users", "i", "b c"),
        ("users", "i", "d"),
        ("public-keys.k1", "s", "ssh-ed25519 AAAC k1"),
        ("quoted-key", "s", "v"),
        ("last", "s", ""),
    ]


def test_labcloud_seed_is_understood(guest: Guest) -> None:
    """The contract with agent/storage/seed.py: what it writes is what the image reads."""
    password = 'p "a\\ss:wé'
    meta = render_meta_data(instance_id="i-0001", hostname="web-1", ssh_keys=[KEY1, KEY2])
    user_data = render_user_data(
        hostname="web-1", ssh_keys=[KEY1, KEY2], admin_pass=password, user_data="#!/bin/bash\necho hi\n"
    )
    seen = guest.seed(meta, user_data)
    assert seen["instance-id"] == ["i-0001"]
    assert seen["hostname"] == ["web-1"]
    assert seen["keys"] == [KEY1, KEY2]
    # `password:` and `chpasswd.list` both name root's password: applied once.
    assert seen["passwords"] == [f"root:{password}"]
    [script] = seen["scripts"]
    assert (guest.workdir / script).read_text() == "#!/bin/bash\necho hi\n"


def test_labcloud_seed_without_password_or_user_data(guest: Guest) -> None:
    meta = render_meta_data(instance_id="i-0002", hostname="db", ssh_keys=[])
    user_data = render_user_data(hostname="db", ssh_keys=[KEY3], admin_pass=None, user_data=None)
    seen = guest.seed(meta, user_data)
    assert seen["keys"] == [KEY3]
    assert seen["passwords"] == []
    assert seen["scripts"] == []


def test_users_own_mime_nested_in_labcloud_multipart(guest: Guest) -> None:
    inner = MIMEMultipart("mixed")
    inner.attach(
        MIMEText(f"#cloud-config\nssh_authorized_keys:\n  - {KEY3}\nruncmd:\n  - touch /x\n", "cloud-config")
    )
    inner.attach(MIMEText("#!/bin/sh\necho inner\n", "x-shellscript"))
    user_data = render_user_data(hostname="n", ssh_keys=[KEY1], admin_pass=None, user_data=inner.as_string())
    seen = guest.seed("instance-id: i-3\n", user_data)
    assert seen["keys"] == [KEY1, KEY3]
    assert seen["runcmd"] == ["touch /x"]
    [script] = seen["scripts"]
    assert (guest.workdir / script).read_text() == "#!/bin/sh\necho inner\n"


def test_plain_user_data_is_sniffed(guest: Guest) -> None:
    assert guest.split("#cloud-config\nhostname: a\n") == [("cloud-config", "#cloud-config\nhostname: a\n")]
    assert guest.split("#!/bin/sh\necho a\n") == [("script", "#!/bin/sh\necho a\n")]
    assert guest.split("just some text\n") == [("ignored:text/plain", "just some text\n")]
    assert guest.split("") == []


def test_mime_edge_cases(guest: Guest) -> None:
    script = "#!/bin/sh\necho from-base64\n"
    encoded = base64.encodebytes(script.encode()).decode()
    user_data = (
        "MIME-Version: 1.0\n"
        "Content-Type: multipart/mixed;\n"  # parameters folded onto the next line
        '\tboundary="==b+1=="\n'
        "\n"
        "This is the preamble.\n"
        "--==b+1==\n"
        "Content-Type: text/x-shellscript\n"
        "Content-Transfer-Encoding: base64\n"
        "\n"
        f"{encoded}"
        "--==b+1==\n"
        "Content-Type: text/plain\n"  # typed by its first line, like cloud-init does
        "\n"
        "#cloud-config\n"
        "hostname: sniffed\n"
        "--==b+1==\n"
        "Content-Type: text/x-include-url\n"
        "\n"
        "http://example.invalid/x\n"
        "--==b+1==\n"
        "Content-Type: text/x-shellscript\n"
        "Content-Transfer-Encoding: quoted-printable\n"
        "\n"
        "echo=20qp\n"
        "--==b+1==\n"
        "Content-Type: text/x-shellscript-per-boot\n"
        "\n"
        "#!/bin/sh\n"
        "echo every boot\n"
        "--==b+1==--\n"
        "epilogue\n"
    )
    # The line break before a delimiter belongs to the delimiter (RFC 2046), so these parts end without one.
    expected = [
        ("script", script),
        ("cloud-config", "#cloud-config\nhostname: sniffed"),
        ("ignored:text/x-include-url", "http://example.invalid/x"),
        ("ignored:quoted-printable", "echo=20qp"),
        ("script-per-boot", "#!/bin/sh\necho every boot"),
    ]
    assert guest.split(user_data) == expected
    # The same document with CRLF line endings splits the same way, carriage returns dropped.
    assert guest.split(user_data, newline="\r\n") == expected


def test_keys_and_hostname_sources(guest: Guest) -> None:
    meta = (
        "instance-id: i-9\n"
        "local-hostname: meta-name\n"
        "public-keys:\n"
        f"  mine: {KEY1}\n"  # a mapping of names to keys (EC2 / OpenStack style)
        "  junk: not-a-key\n"
    )
    seen = guest.seed(meta, f"#cloud-config\nfqdn: fq.example.com\nssh_authorized_keys: [{KEY1}, {KEY2}]\n")
    assert seen["keys"] == [KEY1, KEY2]
    assert seen["hostname"] == ["fq.example.com"]
    seen = guest.seed(meta, "#cloud-config\nhostname: 'bad name!_x'\n")
    assert seen["hostname"] == ["badnamex"]
    assert guest.seed(meta, "")["hostname"] == ["meta-name"]


def test_run_script_logs_and_falls_back_to_sh(guest: Guest) -> None:
    marker = guest.workdir / "ran"
    script = f'#!/opt/no/bash\necho out\necho err >&2\n[ -n "$HOME" ] && echo $HOME > {marker}\nexit 3\n'
    guest.write("bash-script", script)
    guest.sh("nc_run_script bash-script log || echo status=$? > status")
    log = (guest.workdir / "log").read_text()
    assert "/opt/no/bash not found, running bash-script with sh" in log
    assert "out\nerr\n" in log
    assert "bash-script exited with status 3" in log
    assert (guest.workdir / "status").read_text() == "status=3\n"
    assert marker.read_text() == "/root\n"


def openssl_sha512(password: str, salt: str) -> str:
    return subprocess.run(
        ["openssl", "passwd", "-6", "-salt", salt, "-stdin"],
        input=password,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


def test_chpasswd_writes_sha512_hashes(guest: Guest) -> None:
    passwd = guest.write("passwd", "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/:/bin/false\n")
    shadow = guest.write("shadow", "root:*:19000:0:99999:7:::\nnobody:*:19000:0:99999:7:::\n")
    env = {"SHADOW_FILE": str(shadow), "PASSWD_FILE": str(passwd)}
    password = 'pa ss:w"\\x'
    proc = subprocess.run(
        [guest.bindir / "sh", CHPASSWD],
        input=f"root:{password}\nghost:pw\n",
        env={"PATH": str(guest.bindir), **env},
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 1
    assert "unknown user ghost" in proc.stderr
    root, nobody = shadow.read_text().splitlines()
    fields = root.split(":")
    assert fields[2] != "19000"  # last change updated
    hashed = fields[1]
    assert hashed.startswith("$6$")
    assert openssl_sha512(password, hashed.split("$")[2]) == hashed  # an independent crypt(3)
    assert nobody == "nobody:*:19000:0:99999:7:::"
    assert (shadow.stat().st_mode & 0o777) == 0o600

    subprocess.run(
        [guest.bindir / "sh", CHPASSWD, "-e"], input="nobody:$6$abc$def\n",
        env={"PATH": str(guest.bindir), **env}, text=True, check=True,
    )  # fmt: skip
    assert shadow.read_text().splitlines()[1].split(":")[1] == "$6$abc$def"
