"""Fixtures for the fleet tests: signed bundles made from the reference model and simulated devices."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fleet_helpers import SimulatedDevice
from support_bundles import make_fp32_bundle

from edgefleet.contract.signing import create_key_pair
from edgefleet.fleet.broker import MosquittoProcess

BundleFactory = Callable[..., Path]


@pytest.fixture
def make_bundle(tmp_path: Path, reference_dir: Path) -> BundleFactory:
    """make_bundle(profile="rpi4", version="1", extra_bytes=0) -> path of a signed bundle file."""
    private_path, _ = create_key_pair(tmp_path / "keys")
    model = reference_dir / "digits_cnn_v1.onnx"

    def make(profile: str = "rpi4", version: str = "1", extra_bytes: int = 0) -> Path:
        extra = {}
        if extra_bytes:
            # Random (incompressible) padding gives multi-chunk bundles of a chosen size.
            padding = tmp_path / f"extra-{version}-{extra_bytes}.bin"
            padding.write_bytes(os.urandom(extra_bytes))
            extra["extra.bin"] = padding
        out = tmp_path / "bundles" / f"digits-{profile}-{version}-{extra_bytes}.efb"
        return make_fp32_bundle(out, model, private_path, version=version, profile=profile, extra_files=extra)

    return make


@pytest.fixture
def simulated_device(broker: MosquittoProcess) -> Iterator[Callable[..., SimulatedDevice]]:
    made: list[SimulatedDevice] = []

    def make(device_id: str, profile: str = "rpi4", reject: str | None = None) -> SimulatedDevice:
        device = SimulatedDevice(broker, device_id, profile, reject)
        made.append(device)
        return device

    yield make
    for device in made:
        device.close()
