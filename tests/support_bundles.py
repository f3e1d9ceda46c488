"""Signed test bundles made straight from the fp32 reference model (no converter involved), and bundle bytes
cut into delivery chunks, shared by the contract, protocol, agent and fleet tests."""

from __future__ import annotations

import hashlib
from datetime import datetime, timezone
from pathlib import Path

from edgefleet.contract.bundle import write_bundle
from edgefleet.contract.manifest import BundleManifest, ConversionMetrics, TensorSpec
from edgefleet.contract.messages import BundleMeta
from edgefleet.contract.profiles import ArtifactFormat, Precision
from edgefleet.contract.signing import load_private_key


def fp32_manifest(profile: str, version: str, name: str = "digits", size: int = 1) -> BundleManifest:
    """The manifest of the digits CNN shipped as fp32 ONNX: float I/O, no quantization, no permutation."""
    return BundleManifest(
        name=name,
        version=version,
        profile=profile,
        format=ArtifactFormat.ONNX,
        precision=Precision.FP32,
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
            host_runtime="not measured (test bundle)",
        ),
        converter_version="test",
        created_at=datetime.now(timezone.utc),
    )


def make_fp32_bundle(
    out: Path,
    model: Path,
    private_key: Path,
    *,
    version: str,
    profile: str,
    name: str = "digits",
    extra_files: dict[str, Path] | None = None,
) -> Path:
    """Pack `model` (an fp32 ONNX file) and any extra files into a signed bundle at `out`."""
    manifest = fp32_manifest(profile, version, name, model.stat().st_size)
    write_bundle(out, manifest, {"model.onnx": model, **(extra_files or {})}, load_private_key(private_key))
    return out


def chunked_bundle(
    data: bytes, chunk_size: int, *, version: str, profile: str, name: str = "digits"
) -> tuple[list[bytes], BundleMeta]:
    """`data` cut into `chunk_size` pieces and the BundleMeta a deployer publishes for them
    (docs/protocol.md: the bundle id and each chunk's hash are SHA-256 of the bytes)."""
    chunks = [data[i : i + chunk_size] for i in range(0, len(data), chunk_size)]
    meta = BundleMeta(
        bundle_id=hashlib.sha256(data).hexdigest(),
        size=len(data),
        chunk_size=chunk_size,
        chunk_sha256=[hashlib.sha256(c).hexdigest() for c in chunks],
        name=name,
        version=version,
        profile=profile,
    )
    return chunks, meta
