"""The bundle file: a zip holding manifest.json, its detached signature manifest.sig, and the files the
manifest lists with their sha256. Nothing in a bundle is trusted until `verify_bundle` has passed.
"""

from __future__ import annotations

import hashlib
import json
import lzma
import os
import shutil
import zipfile
import zlib
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import ValidationError

from edgefleet.contract.errors import BundleError, is_resource_error
from edgefleet.contract.manifest import BundleManifest, FileEntry
from edgefleet.contract.signing import sign, verify

MANIFEST_NAME = "manifest.json"
SIGNATURE_NAME = "manifest.sig"
MAX_UNPACKED_BYTES = 2 * 1024**3
_CHUNK = 1024 * 1024


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(_CHUNK):
            digest.update(block)
    return digest.hexdigest()


MAX_MEMBER_NAME = 200  # characters: each path component must also fit the file system's 255 bytes


def _safe_member(name: str) -> bool:
    """A plain relative path, written one way only: no absolute path, no `.`/`..`/empty components (so
    `./model.onnx` cannot alias `model.onnx`), no backslash, not inside the manifest or signature names."""
    parts = name.split("/")
    return (
        0 < len(name) <= MAX_MEMBER_NAME
        and "\\" not in name
        and all(part not in ("", ".", "..") for part in parts)
        and parts[0] not in (MANIFEST_NAME, SIGNATURE_NAME)
    )


def write_bundle(
    out_path: Path, manifest: BundleManifest, files: dict[str, Path], private_key: Ed25519PrivateKey
) -> BundleManifest:
    """Write a signed bundle; `files` maps the path inside the bundle to a file on disk.

    Returns the manifest as written (with `files` filled in).
    """
    for name in files:
        if not _safe_member(name) or name in (MANIFEST_NAME, SIGNATURE_NAME):
            raise BundleError(f"bundle member name {name!r} is not allowed")
    entries = [
        FileEntry(path=name, sha256=sha256_file(src), size=src.stat().st_size) for name, src in files.items()
    ]
    final = manifest.model_copy(update={"files": entries})
    manifest_bytes = final.model_dump_json(indent=2).encode()
    signature = json.dumps(sign(private_key, manifest_bytes), indent=2).encode()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(out_path.name + ".tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as archive:
        archive.writestr(MANIFEST_NAME, manifest_bytes)
        archive.writestr(SIGNATURE_NAME, signature)
        for name, src in files.items():
            archive.write(src, name)
    os.replace(tmp, out_path)
    return final


# What reading a damaged or hostile zip raises besides BadZipFile: unsupported compression or flags
# (NotImplementedError), encryption (RuntimeError), corrupt compressed data (zlib, lzma, EOFError).
_ZIP_ERRORS = (
    OSError,
    zipfile.BadZipFile,
    NotImplementedError,
    RuntimeError,
    EOFError,
    zlib.error,
    lzma.LZMAError,
)


def _open(path: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except _ZIP_ERRORS as exc:
        if is_resource_error(exc):
            raise  # the machine's error (no descriptors...), not the bundle's: a device tries again later
        raise BundleError(f"bundle {path}: not a readable bundle file ({exc})") from exc


def _parse_manifest(raw: bytes, where: Path) -> BundleManifest:
    try:
        return BundleManifest.model_validate_json(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        raise BundleError(f"bundle {where}: manifest field {loc}: {first['msg']}") from exc


def read_manifest_unverified(path: Path) -> BundleManifest:
    """The manifest without checking the signature: for host-side tooling only, never for activation."""
    with _open(path) as archive:
        try:
            return _parse_manifest(archive.read(MANIFEST_NAME), path)
        except KeyError as exc:
            raise BundleError(f"bundle {path}: no {MANIFEST_NAME} inside") from exc


def _verified_manifest(archive: zipfile.ZipFile, path: Path, public_key: Ed25519PublicKey) -> BundleManifest:
    names = archive.namelist()
    if len(names) != len(set(names)):
        # zipfile reads the last of equal names: what was verified might not be what gets unpacked
        twice = sorted({name for name in names if names.count(name) > 1})
        raise BundleError(f"bundle {path}: the archive holds more than one member named {twice}")
    absent = [name for name in (MANIFEST_NAME, SIGNATURE_NAME) if name not in names]
    if absent:
        not_made = "it was not made by `edgefleet convert`"
        raise BundleError(f"bundle {path}: no {' or '.join(absent)} inside; {not_made}")
    try:
        manifest_bytes = archive.read(MANIFEST_NAME)
        record = json.loads(archive.read(SIGNATURE_NAME))
    except (*_ZIP_ERRORS, ValueError, RecursionError) as exc:
        if is_resource_error(exc):
            raise
        raise BundleError(f"bundle {path}: unreadable manifest or signature ({exc})") from exc
    if not isinstance(record, dict):
        raise BundleError(f"bundle {path}: {SIGNATURE_NAME} is not a signature record")
    verify(public_key, manifest_bytes, record)
    manifest = _parse_manifest(manifest_bytes, path)
    listed = {entry.path for entry in manifest.files}
    present = set(archive.namelist()) - {MANIFEST_NAME, SIGNATURE_NAME}
    if listed != present:
        raise BundleError(
            f"bundle {path}: files do not match the manifest (unlisted: {sorted(present - listed)}, "
            f"missing: {sorted(listed - present)})"
        )
    if manifest.artifact not in listed:
        raise BundleError(f"bundle {path}: artifact {manifest.artifact!r} is not among its files")
    if sum(entry.size for entry in manifest.files) > MAX_UNPACKED_BYTES:
        raise BundleError(f"bundle {path}: unpacked size exceeds {MAX_UNPACKED_BYTES} bytes")
    for entry in manifest.files:
        if not _safe_member(entry.path):
            raise BundleError(f"bundle {path}: unsafe member path {entry.path!r}")
    return manifest


def _copy_checked(archive: zipfile.ZipFile, entry: FileEntry, dest: Path | None, where: Path) -> None:
    digest, size = hashlib.sha256(), 0
    out = None
    try:
        if dest is not None:
            dest.parent.mkdir(parents=True, exist_ok=True)
            out = dest.open("wb")
        with archive.open(entry.path) as src:
            while block := src.read(_CHUNK):
                size += len(block)
                if size > entry.size:
                    break
                digest.update(block)
                if out is not None:
                    out.write(block)  # a full disk is the machine's error: OSError, not BundleError
        if out is not None:
            out.flush()
            os.fsync(out.fileno())
    except _ZIP_ERRORS as exc:
        if is_resource_error(exc):
            raise
        raise BundleError(f"bundle {where}: cannot unpack {entry.path} ({exc})") from exc
    finally:
        if out is not None:
            out.close()
    if size != entry.size or digest.hexdigest() != entry.sha256:
        raise BundleError(f"bundle {where}: {entry.path} does not match its sha256 in the manifest")


def verify_bundle(path: Path, public_key: Ed25519PublicKey) -> BundleManifest:
    """Check signature, file list and every file's sha256 without unpacking anything."""
    with _open(path) as archive:
        manifest = _verified_manifest(archive, path, public_key)
        for entry in manifest.files:
            _copy_checked(archive, entry, None, path)
    return manifest


def extract_bundle(path: Path, dest_dir: Path, public_key: Ed25519PublicKey) -> BundleManifest:
    """Verify the bundle and unpack it into `dest_dir` (which must not exist yet).

    Files are hashed while they are written; on any failure nothing is left in `dest_dir`.
    """
    if dest_dir.exists():
        raise BundleError(f"refusing to unpack into existing directory {dest_dir}")
    with _open(path) as archive:
        manifest = _verified_manifest(archive, path, public_key)
        dest_dir.mkdir(parents=True)
        try:
            for entry in manifest.files:
                _copy_checked(archive, entry, dest_dir / entry.path, path)
            try:
                (dest_dir / MANIFEST_NAME).write_bytes(archive.read(MANIFEST_NAME))
                (dest_dir / SIGNATURE_NAME).write_bytes(archive.read(SIGNATURE_NAME))
            except _ZIP_ERRORS as exc:
                if is_resource_error(exc):
                    raise
                raise BundleError(f"bundle {path}: cannot unpack its manifest ({exc})") from exc
        except BaseException:
            shutil.rmtree(dest_dir, ignore_errors=True)
            raise
    return manifest
