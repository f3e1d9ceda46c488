"""Ed25519 fleet signing keys: create, load, sign, verify."""

from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edgefleet.contract.errors import BundleError, EdgefleetError

PRIVATE_KEY_FILE = "fleet.key"
PUBLIC_KEY_FILE = "fleet.pub"


def default_key_dir() -> Path:
    return Path(os.environ.get("EDGEFLEET_HOME", Path.home() / ".edgefleet")) / "keys"


def key_id(public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def create_key_pair(directory: Path, overwrite: bool = False) -> tuple[Path, Path]:
    """Write fleet.key (PKCS8 PEM, mode 0600) and fleet.pub (PEM) into `directory`."""
    private_path, public_path = directory / PRIVATE_KEY_FILE, directory / PUBLIC_KEY_FILE
    if private_path.exists() and not overwrite:
        raise EdgefleetError(
            f"{private_path} already exists; refusing to overwrite the fleet key (pass --force to replace it)"
        )
    directory.mkdir(parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
    public_path.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return private_path, public_path


def load_private_key(path: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        raise EdgefleetError(
            f"signing key {path}: cannot load it ({exc}); create one with `edgefleet keys init`"
        ) from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise EdgefleetError(f"signing key {path}: not an Ed25519 private key")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except FileNotFoundError as exc:
        raise EdgefleetError(
            f"trusted key {path} does not exist: copy the fleet's public key there ({PUBLIC_KEY_FILE}, "
            "next to the signing key; `edgefleet keys init` made both)"
        ) from exc
    except (OSError, ValueError) as exc:
        raise EdgefleetError(f"trusted key {path}: cannot load it ({exc})") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise EdgefleetError(f"trusted key {path}: not an Ed25519 public key")
    return key


def sign(private_key: Ed25519PrivateKey, data: bytes) -> dict[str, str]:
    """A detached signature record: which key signed, and the base64 signature."""
    return {
        "algorithm": "ed25519",
        "key_id": key_id(private_key.public_key()),
        "signature": base64.b64encode(private_key.sign(data)).decode(),
    }


def verify(public_key: Ed25519PublicKey, data: bytes, record: dict[str, str], what: str = "bundle") -> None:
    """Check a detached signature record over `data` (BundleError naming `what` otherwise)."""
    if record.get("algorithm") != "ed25519":
        raise BundleError(f"signature algorithm {record.get('algorithm')!r} is not supported (want ed25519)")
    if record.get("key_id") != key_id(public_key):
        signer, trusted = record.get("key_id"), key_id(public_key)
        raise BundleError(f"{what} was signed by key {signer}, but this device trusts key {trusted}")
    signature = record.get("signature", "")
    try:
        if not isinstance(signature, str):
            raise ValueError("the signature is not a base64 string")
        public_key.verify(base64.b64decode(signature, validate=True), data)
    except (InvalidSignature, ValueError) as exc:
        signed = "manifest" if what == "bundle" else what
        raise BundleError(
            f"{signed} signature does not verify: the {what} was altered after signing"
        ) from exc
