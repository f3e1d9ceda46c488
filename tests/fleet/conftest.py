"""Fixtures for the fleet tests: signed bundles made from the reference model and simulated devices."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path

import pytest
from fleet_helpers import SimulatedDevice

from edgefleet.contract.bundle import write_bundle
from edgefleet.contract.manifest import BundleManifest, ConversionMetrics, TensorSpec
from edgefleet.contract.signing import create_key_pair, load_private_key
from edgefleet.fleet.broker import MosquittoProcess

BundleFactory = Callable[..., Path]


@pytest.fixture
def make_bundle(tmp_path: Path, reference_dir: Path) -> BundleFactory:
    """make_bundle(profile="rpi4", version="1", extra_bytes=0) -> path of a signed bundle file."""
    private_path, _ = create_key_pair(tmp_path / "keys")
    key = load_private_key(private_path)
    model = reference_dir / "digits_cnn_v1.onnx"
    size = model.stat().st_size

    def make(profile: str = "rpi4", version: str = "1", extra_bytes: int = 0) -> Path:
        files = {"model.onnx": model}
        if extra_bytes:
            # Random (incompressible) padding gives multi-chunk bundles of a chosen size.
            extra = tmp_path / f"extra-{version}-{extra_bytes}.bin"
            extra.write_bytes(os.urandom(extra_bytes))
            files["extra.bin"] = extra
        manifest = BundleManifest(
            name="digits",
            version=version,
            profile=profile,
            format="onnx",
            precision="fp32",
            artifact="model.onnx",
            inputs=[
                TensorSpec(name="image", dtype="float32", shape=[None, 1, 8, 8], float_shape=[None, 1, 8, 8])
            ],
            outputs=[TensorSpec(name="logits", dtype="float32", shape=[None, 10], float_shape=[None, 10])],
            files=[],
            metrics=ConversionMetrics(
                size_bytes_fp32=size,
                size_bytes_artifact=size,
                host_latency_ms_fp32=0.05,
                host_latency_ms_artifact=0.05,
                host_runtime="onnxruntime",
            ),
            converter_version="test",
            created_at=datetime.now(timezone.utc),
        )
        out = tmp_path / "bundles" / f"digits-{profile}-{version}-{extra_bytes}.efb"
        write_bundle(out, manifest, files, key)
        return out

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
