from __future__ import annotations

import errno
import json
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from support_bundles import make_fp32_bundle

from edgefleet.contract.bundle import (
    MANIFEST_NAME,
    SIGNATURE_NAME,
    extract_bundle,
    read_manifest_unverified,
    sha256_file,
    verify_bundle,
)
from edgefleet.contract.errors import BundleError
from edgefleet.contract.signing import create_key_pair, key_id, load_private_key, load_public_key, sign


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    return create_key_pair(tmp_path / "keys")


@pytest.fixture
def bundle(tmp_path: Path, keys: tuple[Path, Path], reference_dir: Path) -> Path:
    out = tmp_path / "digits.efb"
    make_fp32_bundle(out, reference_dir / "digits_cnn_v1.onnx", keys[0], version="1", profile="rpi4")
    return out


def _rewrite(src: Path, dst: Path, replace: dict[str, bytes]) -> None:
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for name in zin.namelist():
            zout.writestr(name, replace.pop(name, zin.read(name)))
        for name, data in replace.items():
            zout.writestr(name, data)


def test_signed_bundle_verifies_and_unpacks(
    bundle: Path, keys: tuple[Path, Path], tmp_path: Path, reference_dir: Path
) -> None:
    manifest = verify_bundle(bundle, load_public_key(keys[1]))
    assert manifest.file("model.onnx").sha256 == sha256_file(reference_dir / "digits_cnn_v1.onnx")
    out = tmp_path / "unpacked"
    extract_bundle(bundle, out, load_public_key(keys[1]))
    assert sha256_file(out / "model.onnx") == manifest.file("model.onnx").sha256
    assert (out / MANIFEST_NAME).exists() and (out / SIGNATURE_NAME).exists()


def test_tampered_artifact_is_rejected_and_nothing_unpacked(
    bundle: Path, keys: tuple[Path, Path], tmp_path: Path
) -> None:
    tampered = tmp_path / "tampered.efb"
    with zipfile.ZipFile(bundle) as archive:
        model = bytearray(archive.read("model.onnx"))
    model[len(model) // 2] ^= 0xFF
    _rewrite(bundle, tampered, {"model.onnx": bytes(model)})
    with pytest.raises(BundleError, match="does not match its sha256"):
        verify_bundle(tampered, load_public_key(keys[1]))
    with pytest.raises(BundleError):
        extract_bundle(tampered, tmp_path / "out", load_public_key(keys[1]))
    assert not (tmp_path / "out").exists()


def test_tampered_manifest_fails_signature(bundle: Path, keys: tuple[Path, Path], tmp_path: Path) -> None:
    manifest = json.loads(read_manifest_unverified(bundle).model_dump_json())
    manifest["version"] = "999"
    tampered = tmp_path / "tampered.efb"
    _rewrite(bundle, tampered, {MANIFEST_NAME: json.dumps(manifest).encode()})
    with pytest.raises(BundleError, match="signature does not verify"):
        verify_bundle(tampered, load_public_key(keys[1]))


def test_untrusted_key_is_rejected(bundle: Path, tmp_path: Path) -> None:
    _, other_public = create_key_pair(tmp_path / "other")
    with pytest.raises(BundleError, match=r"signed by key .* trusts key"):
        verify_bundle(bundle, load_public_key(other_public))


def test_unlisted_member_is_rejected(bundle: Path, keys: tuple[Path, Path], tmp_path: Path) -> None:
    extra = tmp_path / "extra.efb"
    _rewrite(bundle, extra, {"evil.sh": b"rm -rf /"})
    with pytest.raises(BundleError, match="unlisted"):
        verify_bundle(extra, load_public_key(keys[1]))


def test_garbage_file_is_a_clear_error(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    garbage = tmp_path / "garbage.efb"
    garbage.write_bytes(b"not a zip at all")
    with pytest.raises(BundleError, match="not a readable bundle"):
        verify_bundle(garbage, load_public_key(keys[1]))


def test_key_pair_is_not_overwritten(tmp_path: Path) -> None:
    from edgefleet.contract.errors import EdgefleetError

    create_key_pair(tmp_path)
    assert oct((tmp_path / "fleet.key").stat().st_mode & 0o777) == "0o600"
    with pytest.raises(EdgefleetError, match="refusing to overwrite"):
        create_key_pair(tmp_path)


def test_a_member_name_twice_in_the_archive_is_refused(
    bundle: Path, keys: tuple[Path, Path], tmp_path: Path
) -> None:
    """zipfile reads the last of equal names, so a second `model.onnx` after the signed one would be what
    gets unpacked; a bundle holding a name twice is refused before anything is read."""
    doubled = tmp_path / "doubled.efb"
    _rewrite(bundle, doubled, {})
    with zipfile.ZipFile(doubled, "a") as archive, pytest.warns(UserWarning, match="Duplicate name"):
        archive.writestr("model.onnx", b"not the signed model")
    with pytest.raises(BundleError, match=r"more than one member named \['model.onnx'\]"):
        verify_bundle(doubled, load_public_key(keys[1]))
    with pytest.raises(BundleError, match="more than one member"):
        extract_bundle(doubled, tmp_path / "out", load_public_key(keys[1]))
    assert not (tmp_path / "out").exists()


def test_a_bundle_without_its_signature_names_what_is_missing(
    bundle: Path, keys: tuple[Path, Path], tmp_path: Path
) -> None:
    unsigned = tmp_path / "unsigned.efb"
    with zipfile.ZipFile(bundle) as zin, zipfile.ZipFile(unsigned, "w") as zout:
        for name in zin.namelist():
            if name != SIGNATURE_NAME:
                zout.writestr(name, zin.read(name))
    with pytest.raises(BundleError, match=f"no {SIGNATURE_NAME} inside; it was not made by") as info:
        verify_bundle(unsigned, load_public_key(keys[1]))
    assert "There is no item" not in str(info.value)


def test_a_full_disk_while_unpacking_is_the_machines_error_not_the_bundles(
    bundle: Path, keys: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ENOSPC stays an OSError (a device tries the deployment again later); a BundleError would be a
    final verdict on a bundle that is fine."""

    def disk_full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("edgefleet.contract.bundle.os.fsync", disk_full)
    dest = tmp_path / "out"
    with pytest.raises(OSError) as caught:
        extract_bundle(bundle, dest, load_public_key(keys[1]))
    assert not isinstance(caught.value, BundleError) and caught.value.errno == errno.ENOSPC
    assert not dest.exists()


def _resigned(bundle: Path, dst: Path, private: Path, edit: Callable[[dict[str, Any]], None]) -> None:
    """The bundle with its manifest edited and signed again with the trusted key (what a signer can do)."""
    with zipfile.ZipFile(bundle) as archive:
        manifest = json.loads(archive.read(MANIFEST_NAME))
    edit(manifest)
    text = json.dumps(manifest).encode()
    signature = json.dumps(sign(load_private_key(private), text)).encode()
    _rewrite(bundle, dst, {MANIFEST_NAME: text, SIGNATURE_NAME: signature})


def test_zips_and_signatures_nobody_should_make_are_clear_bundle_errors(
    bundle: Path, keys: tuple[Path, Path], tmp_path: Path
) -> None:
    """Found by fuzzing (issue 10 item 9): these leaked NotImplementedError, TypeError, RuntimeError."""
    import struct

    public = load_public_key(keys[1])
    unknown_method = bytearray(bundle.read_bytes())
    for signature, method_at in ((b"PK\x03\x04", 8), (b"PK\x01\x02", 10)):  # the first member's headers
        struct.pack_into("<H", unknown_method, unknown_method.index(signature) + method_at, 99)
    (tmp_path / "method.efb").write_bytes(bytes(unknown_method))
    with pytest.raises(BundleError, match="unreadable manifest or signature"):
        verify_bundle(tmp_path / "method.efb", public)
    record = {"algorithm": "ed25519", "key_id": key_id(public), "signature": 5}
    _rewrite(bundle, tmp_path / "sig.efb", {SIGNATURE_NAME: json.dumps(record).encode()})
    with pytest.raises(BundleError, match="signature does not verify"):
        verify_bundle(tmp_path / "sig.efb", public)


@pytest.mark.parametrize(
    "path", ["./model.onnx", "a//model.onnx", "sub/./model.onnx", "manifest.json/x", "m" * 300]
)
def test_member_paths_are_written_one_way_only(
    bundle: Path, keys: tuple[Path, Path], tmp_path: Path, path: str
) -> None:
    """`./model.onnx` next to `model.onnx` let one file replace the other on disk, `manifest.json/x` made
    the unpacking fail on a directory, a 300-character name on the file system: refused up front."""

    def alias(manifest: dict[str, Any]) -> None:
        entry = next(f for f in manifest["files"] if f["path"] == "model.onnx")
        manifest["files"].append({**entry, "path": path})

    signed = tmp_path / "alias.efb"
    _resigned(bundle, signed, keys[0], alias)
    with zipfile.ZipFile(signed, "a") as archive:
        archive.writestr(path, _member(bundle, "model.onnx"))
    with pytest.raises(BundleError, match="unsafe member path"):
        extract_bundle(signed, tmp_path / "out", load_public_key(keys[1]))
    assert not (tmp_path / "out").exists()


def _member(bundle: Path, name: str) -> bytes:
    with zipfile.ZipFile(bundle) as archive:
        return archive.read(name)


def test_a_missing_trusted_key_says_where_it_comes_from(tmp_path: Path) -> None:
    from edgefleet.contract.errors import EdgefleetError

    with pytest.raises(
        EdgefleetError, match=r"does not exist: copy the fleet's public key there \(fleet.pub"
    ):
        load_public_key(tmp_path / "fleet.pub")
