"""BundleStore: verification on install, the active pointer, re-verification, pruning."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest
from agent_helpers import OTHER_PROFILE, TEST_PROFILE, Keys, file_sha256, make_bundle

from edgefleet.agent.store import BundleStore
from edgefleet.contract.errors import BundleError
from edgefleet.contract.signing import load_public_key


@pytest.fixture
def store(tmp_path: Path, keys: Keys) -> BundleStore:
    return BundleStore(tmp_path / "state", load_public_key(keys.public), TEST_PROFILE, keep=2)


def _rewrite(src: Path, dst: Path, change: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for item in zin.infolist():
            zout.writestr(item.filename, change.get(item.filename, zin.read(item.filename)))
    return dst


def test_install_verifies_and_unpacks(store: BundleStore, bundles: dict[str, Path]) -> None:
    bundle_id = file_sha256(bundles["v1"])
    installed = store.install(bundles["v1"], bundle_id)
    assert installed.manifest.version == "1" and (installed.path / "model.onnx").is_file()
    assert store.is_installed(bundle_id)
    assert store.load_installed(bundle_id).manifest.version == "1"


def test_install_rejects_wrong_whole_file_hash(store: BundleStore, bundles: dict[str, Path]) -> None:
    with pytest.raises(BundleError, match="does not hash to its id"):
        store.install(bundles["v1"], "0" * 64)


def test_install_rejects_tampering(store: BundleStore, bundles: dict[str, Path], tmp_path: Path) -> None:
    with zipfile.ZipFile(bundles["v1"]) as archive:
        manifest = archive.read("manifest.json")
        model = archive.read("model.onnx")
    altered_manifest = _rewrite(
        bundles["v1"], tmp_path / "a.bundle", {"manifest.json": manifest.replace(b'"1"', b'"9"')}
    )
    with pytest.raises(BundleError, match="signature does not verify"):
        store.install(altered_manifest, file_sha256(altered_manifest))
    altered_model = _rewrite(bundles["v1"], tmp_path / "b.bundle", {"model.onnx": model[:-1] + b"\x00"})
    with pytest.raises(BundleError, match="does not match its sha256"):
        store.install(altered_model, file_sha256(altered_model))
    assert not any(p.name[0] != "." for p in store.bundles_dir.iterdir())


def test_install_rejects_untrusted_key_and_other_profile(
    store: BundleStore, reference_dir: Path, other_keys: Keys, keys: Keys, tmp_path: Path
) -> None:
    untrusted = make_bundle(
        tmp_path / "u.bundle", reference_dir / "digits_cnn_v1.onnx", other_keys.private, "1"
    )
    with pytest.raises(BundleError, match="signed by key"):
        store.install(untrusted, file_sha256(untrusted))
    foreign = make_bundle(
        tmp_path / "f.bundle", reference_dir / "digits_cnn_v1.onnx", keys.private, "1", profile=OTHER_PROFILE
    )
    with pytest.raises(BundleError, match=f"built for profile '{OTHER_PROFILE}', this device runs profile"):
        store.install(foreign, file_sha256(foreign))
    assert not store.is_installed(file_sha256(foreign))


def test_active_pointer_is_replaced_atomically(store: BundleStore) -> None:
    assert store.active_id() is None
    store.set_active("a" * 64)
    store.set_active("b" * 64)
    assert store.active_id() == "b" * 64
    assert not (store.state_dir / "active.tmp").exists()
    (store.state_dir / "active").write_text("garbage")
    assert store.active_id() is None


def test_load_installed_detects_altered_files(store: BundleStore, bundles: dict[str, Path]) -> None:
    bundle_id = file_sha256(bundles["v1"])
    installed = store.install(bundles["v1"], bundle_id)
    with (installed.path / "model.onnx").open("r+b") as handle:
        handle.seek(100)
        handle.write(b"\xff\xff")
    with pytest.raises(BundleError, match="missing or altered"):
        store.load_installed(bundle_id)


def test_prune_keeps_active_and_newest(store: BundleStore, bundles: dict[str, Path], reference_dir: Path,
                                       keys: Keys, tmp_path: Path) -> None:  # fmt: skip
    ids = []
    for version in ("1", "2", "3"):
        path = make_bundle(
            tmp_path / f"{version}.bundle", reference_dir / "digits_cnn_v1.onnx", keys.private, version
        )
        ids.append(file_sha256(path))
        store.install(path, ids[-1])
    store.set_active(ids[0])
    store.part_path("c" * 64).write_bytes(b"partial")
    removed = store.prune()
    assert removed == [ids[1]]  # keep=2: the active one and the newest
    assert store.is_installed(ids[0]) and store.is_installed(ids[2])
    assert not store.part_path("c" * 64).exists()
