"""BundleStore: the verified bundles unpacked in the state directory and the atomic `active` pointer.

Layout: bundles/{bundle_id}/ (unpacked, verified; a bundle is unpacked into bundles/.{bundle_id}.tmp and
renamed, so the final name only ever holds a complete bundle), incoming/{bundle_id}.part (a delivery in
progress) with {bundle_id}.chunks (the chunks verified so far) and {bundle_id}.meta.json (its BundleMeta),
active (the bundle_id to load at start, replaced with tmp file + fsync + os.replace).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edgefleet.agent.log import EventLog
from edgefleet.contract.bundle import MANIFEST_NAME, SIGNATURE_NAME, extract_bundle, sha256_file
from edgefleet.contract.errors import BundleError
from edgefleet.contract.ids import is_sha256_hex
from edgefleet.contract.manifest import BundleManifest
from edgefleet.contract.messages import BundleMeta
from edgefleet.contract.signing import verify

log = EventLog("store")
ACTIVE_POINTER = "active"


@dataclass(frozen=True)
class InstalledBundle:
    bundle_id: str
    manifest: BundleManifest
    path: Path


def _fsync_path(path: Path) -> None:
    """fsync a file or a directory (a directory's fsync makes the names in it durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes) -> None:
    """Replace `path` with `data` so that a crash leaves either the old or the new content, never a mix."""
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    _fsync_path(path.parent)


SPACE_MARGIN = 16 * 1024 * 1024  # kept free besides what a delivery needs (ledger, logs, the system)
MIB = 1024 * 1024


class BundleStore:
    def __init__(
        self,
        state_dir: Path,
        public_key: Ed25519PublicKey,
        profile_name: str,
        keep: int = 3,
        free_bytes: Callable[[Path], int] | None = None,
    ) -> None:
        self.state_dir = state_dir
        self._free_bytes = free_bytes or (lambda path: shutil.disk_usage(path).free)
        self.bundles_dir = state_dir / "bundles"
        self.incoming_dir = state_dir / "incoming"
        self.public_key = public_key
        self.profile_name = profile_name
        self.keep = keep
        for directory in (self.state_dir, self.bundles_dir, self.incoming_dir):
            directory.mkdir(parents=True, exist_ok=True)

    def part_path(self, bundle_id: str) -> Path:
        return self.incoming_dir / f"{bundle_id}.part"

    def chunk_log_path(self, bundle_id: str) -> Path:
        return self.incoming_dir / f"{bundle_id}.chunks"

    def meta_path(self, bundle_id: str) -> Path:
        return self.incoming_dir / f"{bundle_id}.meta.json"

    def check_space(self, meta: BundleMeta) -> None:
        """Before a delivery starts: room for its part file and the unpacked bundle, with a margin, or
        OSError(ENOSPC) naming what is needed (the deployment is tried again later, not rejected)."""
        part = self.part_path(meta.bundle_id)
        have = part.stat().st_size if part.exists() else 0  # a resumed delivery already holds this much
        needed = 2 * meta.size - have + SPACE_MARGIN
        free = self._free_bytes(self.state_dir)
        if free < needed:
            raise OSError(
                errno.ENOSPC,
                f"not enough disk space in {self.state_dir} for bundle {meta.bundle_id[:12]}: it needs "
                f"{needed / MIB:.1f} MiB (the download and its unpacked copy), {free / MIB:.1f} MiB are free",
            )

    def save_meta(self, meta: BundleMeta) -> None:
        """Keep the meta of a delivery in progress: after a restart the agent knows which chunks it lacks
        even when the broker lost the retained meta (a broker killed before its last save)."""
        write_atomic(self.meta_path(meta.bundle_id), meta.to_bytes())

    def load_meta(self, bundle_id: str) -> BundleMeta | None:
        try:
            meta = BundleMeta.model_validate_json(self.meta_path(bundle_id).read_bytes())
        except (OSError, ValueError):
            return None
        return meta if meta.bundle_id == bundle_id else None

    def cleanup_at_start(self, delivery_to_keep: str | None) -> list[str]:
        """Remove what a crash can leave behind: half-unpacked staging dirs, tmp files, and the part files
        of every delivery except the one still wanted (which resumes). Returns what was removed."""
        removed = []
        for staging in self.bundles_dir.glob(".*.tmp"):
            shutil.rmtree(staging, ignore_errors=True)
            removed.append(staging.name)
        for tmp in self.state_dir.glob("*.tmp"):
            tmp.unlink(missing_ok=True)
            removed.append(tmp.name)
        for path in self.incoming_dir.iterdir():
            if delivery_to_keep is None or not path.name.startswith(delivery_to_keep):
                if path.is_dir():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)
                removed.append(path.name)
        if removed:
            log.info("cleaned_at_start", removed=",".join(sorted(removed))[:500])
        return removed

    def bundle_dir(self, bundle_id: str) -> Path:
        return self.bundles_dir / bundle_id

    def _check_profile(self, manifest: BundleManifest, bundle_id: str) -> None:
        if manifest.profile != self.profile_name:
            raise BundleError(
                f"bundle {bundle_id[:12]} ({manifest.name} v{manifest.version}) was built for profile "
                f"'{manifest.profile}', this device runs profile '{self.profile_name}'; convert the model "
                f"for '{self.profile_name}'"
            )

    def install(self, bundle_file: Path, bundle_id: str, file_sha256: str | None = None) -> InstalledBundle:
        """Verify the bundle file (whole-file sha256, signature, each file's sha256, profile); unpack it.

        `file_sha256`: the file's sha256 when the caller has just computed it (the chunk assembler hashes
        the whole file as it finishes), so a 20 MiB bundle is not read and hashed a second time."""
        if (file_sha256 or sha256_file(bundle_file)) != bundle_id:
            raise BundleError(f"bundle file does not hash to its id {bundle_id[:12]}: it is corrupt")
        staging = self.bundles_dir / f".{bundle_id}.tmp"
        shutil.rmtree(staging, ignore_errors=True)
        manifest = extract_bundle(bundle_file, staging, self.public_key)
        try:
            self._check_profile(manifest, bundle_id)
        except BundleError:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        # extract_bundle fsyncs the files it hashes; the manifest, its signature and the directory
        # entries must be on disk too before the rename makes the bundle visible under its final name
        for name in (MANIFEST_NAME, SIGNATURE_NAME):
            _fsync_path(staging / name)
        directories = {(staging / entry.path).parent for entry in manifest.files} | {staging}
        for directory in sorted(directories, reverse=True):
            _fsync_path(directory)
        final = self.bundle_dir(bundle_id)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(staging, final)
        _fsync_path(self.bundles_dir)
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

    def installed_ids(self) -> list[str]:
        """Installed bundles, most recently installed first."""
        dirs = [p for p in self.bundles_dir.iterdir() if p.is_dir() and is_sha256_hex(p.name)]
        return [p.name for p in sorted(dirs, key=lambda p: p.stat().st_mtime, reverse=True)]

    def read_manifest(self, bundle_id: str) -> BundleManifest | None:
        """The installed manifest WITHOUT verification: for reporting only (activation re-verifies)."""
        try:
            return BundleManifest.model_validate_json(
                (self.bundle_dir(bundle_id) / MANIFEST_NAME).read_bytes()
            )
        except (OSError, ValueError):
            return None

    def active_id(self) -> str | None:
        try:
            text = (self.state_dir / ACTIVE_POINTER).read_text().strip()
        except OSError:
            return None
        return text if is_sha256_hex(text) else None

    def set_active(self, bundle_id: str) -> None:
        """Only ever called with a bundle that is installed and verified (activation is idempotent)."""
        if not is_sha256_hex(bundle_id):
            raise ValueError(f"not a bundle id: {bundle_id!r}")
        write_atomic(self.state_dir / ACTIVE_POINTER, (bundle_id + "\n").encode())

    def prune(
        self,
        ranked: Sequence[str] | None = None,
        protect: Iterable[str] = (),
        delivery_in_progress: str | None = None,
    ) -> list[str]:
        """Keep the active bundle, `protect`, and the first of `ranked` (default: the most recently
        installed) up to `keep`; drop the part files of deliveries other than `delivery_in_progress`."""
        active = self.active_id()
        installed = self.installed_ids()
        keep = {active} if active else set()
        keep |= set(protect)
        ranked_ids = [i for i in (ranked if ranked is not None else installed) if i in installed]
        for bundle_id in ranked_ids + installed:
            if len(keep) >= self.keep:
                break
            keep.add(bundle_id)
        removed = []
        for bundle_id in installed:
            if bundle_id not in keep:
                shutil.rmtree(self.bundle_dir(bundle_id), ignore_errors=True)
                removed.append(bundle_id)
        for path in self.incoming_dir.iterdir():  # deliveries that were given up
            if delivery_in_progress is None or not path.name.startswith(delivery_in_progress):
                path.unlink(missing_ok=True)
        if removed:
            log.info("bundles_pruned", removed=",".join(r[:12] for r in removed))
        return removed

    def remove(self, bundle_id: str) -> None:
        """Delete an unpacked bundle (one that no longer verifies), so it can be fetched again."""
        shutil.rmtree(self.bundle_dir(bundle_id), ignore_errors=True)

    def discard_part(self, bundle_id: str) -> None:
        for path in (self.part_path(bundle_id), self.chunk_log_path(bundle_id), self.meta_path(bundle_id)):
            path.unlink(missing_ok=True)
