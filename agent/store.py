"""BundleStore: the verified bundles unpacked in the state directory and the atomic `active` pointer.

Layout: bundles/{bundle_id}/ (unpacked, verified), incoming/{bundle_id}.part (deliveries in progress),
active (the bundle_id to load at start, replaced with tmp file + fsync + os.replace).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edgefleet.agent.log import EventLog
from edgefleet.contract.bundle import MANIFEST_NAME, SIGNATURE_NAME, extract_bundle, sha256_file
from edgefleet.contract.errors import BundleError
from edgefleet.contract.manifest import BundleManifest
from edgefleet.contract.signing import verify

log = EventLog("store")
_BUNDLE_ID = re.compile(r"^[0-9a-f]{64}$")
ACTIVE_POINTER = "active"


@dataclass(frozen=True)
class InstalledBundle:
    bundle_id: str
    manifest: BundleManifest
    path: Path


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class BundleStore:
    def __init__(
        self, state_dir: Path, public_key: Ed25519PublicKey, profile_name: str, keep: int = 3
    ) -> None:
        self.state_dir = state_dir
        self.bundles_dir = state_dir / "bundles"
        self.incoming_dir = state_dir / "incoming"
        self.public_key = public_key
        self.profile_name = profile_name
        self.keep = keep
        for directory in (self.state_dir, self.bundles_dir, self.incoming_dir):
            directory.mkdir(parents=True, exist_ok=True)

    def part_path(self, bundle_id: str) -> Path:
        return self.incoming_dir / f"{bundle_id}.part"

    def bundle_dir(self, bundle_id: str) -> Path:
        return self.bundles_dir / bundle_id

    def _check_profile(self, manifest: BundleManifest, bundle_id: str) -> None:
        if manifest.profile != self.profile_name:
            raise BundleError(
                f"bundle {bundle_id[:12]} ({manifest.name} v{manifest.version}) was built for profile "
                f"'{manifest.profile}', this device runs profile '{self.profile_name}'; convert the model "
                f"for '{self.profile_name}'"
            )

    def install(self, bundle_file: Path, bundle_id: str) -> InstalledBundle:
        """Verify the bundle file (whole-file sha256, signature, each file's sha256, profile); unpack it."""
        if sha256_file(bundle_file) != bundle_id:
            raise BundleError(f"bundle file does not hash to its id {bundle_id[:12]}: it is corrupt")
        staging = self.bundles_dir / f".{bundle_id}.tmp"
        shutil.rmtree(staging, ignore_errors=True)
        manifest = extract_bundle(bundle_file, staging, self.public_key)
        try:
            self._check_profile(manifest, bundle_id)
        except BundleError:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        final = self.bundle_dir(bundle_id)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(staging, final)
        _fsync_dir(self.bundles_dir)
        return InstalledBundle(bundle_id, manifest, final)

    def load_installed(self, bundle_id: str) -> InstalledBundle:
        """Re-verify an unpacked bundle (signature, file hashes, profile) before it is trusted again."""
        directory = self.bundle_dir(bundle_id)
        try:
            manifest_bytes = (directory / MANIFEST_NAME).read_bytes()
            record = json.loads((directory / SIGNATURE_NAME).read_bytes())
        except (OSError, ValueError) as exc:
            raise BundleError(f"installed bundle {bundle_id[:12]} is incomplete ({exc})") from exc
        if not isinstance(record, dict):
            raise BundleError(
                f"installed bundle {bundle_id[:12]}: {SIGNATURE_NAME} is not a signature record"
            )
        verify(self.public_key, manifest_bytes, record)
        try:
            manifest = BundleManifest.model_validate_json(manifest_bytes)
        except ValueError as exc:
            raise BundleError(f"installed bundle {bundle_id[:12]}: invalid manifest ({exc})") from exc
        for entry in manifest.files:
            path = directory / entry.path
            if not path.is_file() or path.stat().st_size != entry.size or sha256_file(path) != entry.sha256:
                raise BundleError(f"installed bundle {bundle_id[:12]}: {entry.path} is missing or altered")
        self._check_profile(manifest, bundle_id)
        return InstalledBundle(bundle_id, manifest, directory)

    def is_installed(self, bundle_id: str) -> bool:
        return (self.bundle_dir(bundle_id) / MANIFEST_NAME).is_file()

    def active_id(self) -> str | None:
        try:
            text = (self.state_dir / ACTIVE_POINTER).read_text().strip()
        except OSError:
            return None
        return text if _BUNDLE_ID.match(text) else None

    def set_active(self, bundle_id: str) -> None:
        pointer = self.state_dir / ACTIVE_POINTER
        tmp = pointer.with_name(ACTIVE_POINTER + ".tmp")
        with tmp.open("w") as handle:
            handle.write(bundle_id + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, pointer)
        _fsync_dir(self.state_dir)

    def prune(self) -> list[str]:
        """Keep the active bundle and the most recently installed ones up to `keep`; drop stale part files."""
        active = self.active_id()
        installed = sorted(
            (p for p in self.bundles_dir.iterdir() if p.is_dir() and _BUNDLE_ID.match(p.name)),
            key=lambda p: p.stat().st_mtime,
            reverse=True,
        )
        keep = {active} if active else set()
        for path in installed:
            if len(keep) >= self.keep:
                break
            keep.add(path.name)
        removed = []
        for path in installed:
            if path.name not in keep:
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path.name)
        for path in self.bundles_dir.glob(".*.tmp"):
            shutil.rmtree(path, ignore_errors=True)
        for part in self.incoming_dir.glob("*.part"):  # deliveries that were given up
            part.unlink(missing_ok=True)
        if removed:
            log.info("bundles_pruned", removed=",".join(r[:12] for r in removed))
        return removed

    def discard_part(self, bundle_id: str) -> None:
        self.part_path(bundle_id).unlink(missing_ok=True)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
