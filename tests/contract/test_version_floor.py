"""Signed version floors (anti-rollback): bound to a device, signed by the fleet key, ordered naturally."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgefleet.contract.signing import create_key_pair, load_private_key, load_public_key
from edgefleet.contract.version_floor import FloorError, VersionFloor, below, sign_floor, verify_floor


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return create_key_pair(tmp_path_factory.mktemp("keys"))


def test_a_signed_floor_verifies_for_its_device_only(keys: tuple[Path, Path]) -> None:
    private, public = load_private_key(keys[0]), load_public_key(keys[1])
    floor = VersionFloor(device_id="pi-1", model="digits", min_version="3")
    payload = sign_floor(private, floor)
    assert verify_floor(public, payload, "pi-1") == floor
    with pytest.raises(FloorError, match="for device 'pi-1', not 'pi-2'"):
        verify_floor(public, payload, "pi-2")


def test_altered_unsigned_or_foreign_floors_are_refused(keys: tuple[Path, Path], tmp_path: Path) -> None:
    private, public = load_private_key(keys[0]), load_public_key(keys[1])
    payload = json.loads(sign_floor(private, VersionFloor(device_id="pi-1", model="digits", min_version="3")))
    lowered = {**payload, "floor": payload["floor"].replace('"3"', '"1"')}
    with pytest.raises(FloorError, match="signature does not verify: the version floor was altered"):
        verify_floor(public, json.dumps(lowered).encode(), "pi-1")
    with pytest.raises(FloorError, match="not a signed version floor"):
        verify_floor(public, b'{"device_id": "pi-1", "model": "digits", "min_version": null}', "pi-1")
    other, _ = create_key_pair(tmp_path / "other")
    foreign = sign_floor(load_private_key(other), VersionFloor(device_id="pi-1", model="d", min_version=None))
    with pytest.raises(FloorError, match="signed by key"):
        verify_floor(public, foreign, "pi-1")


@pytest.mark.parametrize(
    ("version", "floor", "is_below"),
    [
        ("1", "2", True),
        ("2", "10", True),
        ("10", "2", False),
        ("1.2", "1.10", True),
        ("1.0", "1.0.1", True),
        ("1.0rc1", "1.0.1", True),
        ("2", "2", False),
        ("v3", "v2", False),
    ],
)
def test_versions_compare_naturally(version: str, floor: str, is_below: bool) -> None:
    assert below(version, floor) is is_below
