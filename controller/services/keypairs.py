"""SSH key pairs: import a public key (checked by really parsing it) or generate a pair.

Fingerprints are the MD5 colon form (`aa:bb:…`, as `ssh-keygen -l -E md5` prints) for every key type, the form
Nova and Huawei show. A generated private key is returned once and never stored.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import re
from dataclasses import dataclass

from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from controller.errors import BadRequest, Conflict, NotFound
from controller.models.keypair import Keypair

log = logging.getLogger(__name__)

KEYPAIR_NOT_FOUND = "Ecs.0314"
KEYPAIR_EXISTS = "Ecs.0315"
BAD = "Ecs.0005"
GENERATED_RSA_BITS = 2048
MIN_RSA_BITS = 2048

_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")

# `cryptography` is imported where keys are handled, not at start: it adds ~7 MB to an idle controller.


@dataclass(frozen=True)
class NewKeypair:
    keypair: Keypair
    private_key: str | None  # only for a generated pair


def fingerprint(public_key: str) -> str:
    """MD5 of the key blob, colon separated: the same value as `ssh-keygen -l -E md5`."""
    blob = base64.b64decode(public_key.split()[1])
    digest = hashlib.md5(blob, usedforsecurity=False).hexdigest()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


def normalize_public_key(text: str) -> str:
    """`<type> <base64>` plus the comment if any, after checking that the key really parses."""
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    line = " ".join(text.strip().split())
    parts = line.split(" ", 2)
    if len(parts) < 2:
        raise BadRequest(
            "Invalid public_key: expected an OpenSSH public key such as 'ssh-ed25519 AAAA…'", code=BAD
        )
    try:
        key = serialization.load_ssh_public_key(" ".join(parts[:2]).encode())
        base64.b64decode(parts[1], validate=True)
    except (ValueError, UnsupportedAlgorithm, binascii.Error) as exc:
        raise BadRequest(
            f"Invalid public_key: it does not parse as an OpenSSH public key ({exc})", code=BAD
        ) from None
    if not isinstance(key, (rsa.RSAPublicKey, ed25519.Ed25519PublicKey, ec.EllipticCurvePublicKey)):
        raise BadRequest("Invalid public_key: use ssh-ed25519, ssh-rsa or ecdsa-sha2-nistp*", code=BAD)
    if isinstance(key, rsa.RSAPublicKey) and key.key_size < MIN_RSA_BITS:
        raise BadRequest(f"Invalid public_key: RSA keys need at least {MIN_RSA_BITS} bits", code=BAD)
    return line


def generate() -> tuple[str, str]:
    """A new RSA pair: (OpenSSH public key, PEM private key); every SSH client and server accepts RSA."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    private = rsa.generate_private_key(public_exponent=65537, key_size=GENERATED_RSA_BITS)
    public = private.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    return public.decode(), pem.decode()


def create_keypair(
    session: Session,
    project_id: str,
    *,
    name: str,
    user_id: str,
    public_key: str | None = None,
    key_type: str | None = None,
) -> NewKeypair:
    """Import `public_key`, or generate a pair when it is None. A name is unique within a project (409)."""
    if not _NAME.fullmatch(name or ""):
        raise BadRequest(
            f"Invalid key pair name {name!r}: use 1-64 letters, digits, '_', '-' or '.'", code=BAD
        )
    if key_type not in (None, "ssh"):
        raise BadRequest(f"Invalid key pair type {key_type!r}: only 'ssh' is supported", code=BAD)
    _refuse_duplicate(session, project_id, name)
    private_key = None
    if public_key is None:
        public_key, private_key = generate()
    else:
        public_key = normalize_public_key(public_key)
    keypair = Keypair(
        project_id=project_id,
        user_id=user_id,
        name=name,
        public_key=public_key,
        fingerprint=fingerprint(public_key),
    )
    try:
        with session.begin_nested():
            session.add(keypair)
    except IntegrityError:
        raise Conflict(f"Key pair '{name}' already exists.", code=KEYPAIR_EXISTS) from None
    log.info(
        "%s key pair %s (%s) in project %s",
        "generated" if private_key else "imported",
        name,
        keypair.fingerprint,
        project_id,
    )
    return NewKeypair(keypair, private_key)


def get_keypair(session: Session, project_id: str, name: str) -> Keypair:
    stmt = select(Keypair).where(Keypair.project_id == project_id, Keypair.name == name)
    keypair = session.exec(stmt).first()
    if keypair is None:
        raise NotFound(f"Keypair {name} could not be found.", code=KEYPAIR_NOT_FOUND)
    return keypair


def list_keypairs(
    session: Session, project_id: str, *, marker: str | None = None, limit: int | None = None
) -> list[Keypair]:
    """By name; `marker` is the last name of the previous page."""
    stmt = select(Keypair).where(Keypair.project_id == project_id)
    if marker:
        stmt = stmt.where(col(Keypair.name) > marker)
    stmt = stmt.order_by(col(Keypair.name))
    if limit:
        stmt = stmt.limit(limit)
    return list(session.exec(stmt).all())


def delete_keypair(session: Session, project_id: str, name: str) -> None:
    session.delete(get_keypair(session, project_id, name))
    session.flush()
    log.info("deleted key pair %s in project %s", name, project_id)


def _refuse_duplicate(session: Session, project_id: str, name: str) -> None:
    stmt = select(Keypair.id).where(Keypair.project_id == project_id, Keypair.name == name)
    if session.exec(stmt).first() is not None:
        raise Conflict(f"Key pair '{name}' already exists.", code=KEYPAIR_EXISTS)
