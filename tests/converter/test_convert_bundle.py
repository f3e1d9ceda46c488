"""The bundle each conversion writes: signed, verifiable, and with a manifest that lets a client send the
float32 NCHW tensor to any artifact."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from edgefleet import __version__
from edgefleet.contract.bundle import verify_bundle
from edgefleet.contract.profiles import load_profile
from edgefleet.contract.signing import load_public_key
from edgefleet.contract.tensors import from_artifact, to_artifact
from edgefleet.converter.pipeline import ConversionResult

# whole conversions or training runs: the full suite runs them, the fast lane (-m "not slow") does not
pytestmark = pytest.mark.slow

PROFILES = ["rpi4", "coral-usb", "jetson-nano", "jetson-orin-nano"]


@pytest.mark.parametrize("profile", PROFILES)
def test_bundle_verifies_and_describes_the_artifact(
    profile: str, converted: Callable[[str], ConversionResult], key_pair: tuple[Path, Path]
) -> None:
    result = converted(profile)
    assert result.bundle_path.name == f"digits_cnn_v1-1-{profile}.efb"
    manifest = verify_bundle(result.bundle_path, load_public_key(key_pair[1]))
    expected = load_profile(profile).artifact
    assert (manifest.profile, manifest.format, manifest.precision) == (
        profile,
        expected.format,
        expected.precision,
    )
    assert manifest.artifact == f"model.{expected.format.value}"
    alternatives = [alternative.path for alternative in manifest.alternatives]  # rpi4: + the INT8 ONNX
    assert [f.path for f in manifest.files] == [
        manifest.artifact,
        *alternatives,
        "health_samples.npz",
        "health_reference.npz",
    ]
    assert manifest.health_samples == "health_samples.npz"  # the agent's pre-swap health check runs them
    # ... and compares their outputs with what the host runtime that scored the artifact computed
    reference = manifest.health_reference
    assert reference is not None and reference.outputs == "health_reference.npz"
    assert 10.0 <= reference.min_sqnr_db <= 30.0 and reference.host_runtime
    assert manifest.converter_version == __version__
    assert manifest.inputs == result.inputs and manifest.outputs == result.outputs
    assert [spec.dtype for spec in manifest.inputs] == [expected.io_dtype]
    assert [s.name for s in manifest.inputs] == ["image"] and [s.name for s in manifest.outputs] == ["logits"]
    metrics = manifest.metrics
    assert (
        metrics.accuracy is not None and metrics.accuracy.metric == "top1" and metrics.accuracy.samples == 360
    )
    assert metrics.size_bytes_artifact == manifest.file(manifest.artifact).size
    assert metrics.size_bytes_artifact < metrics.size_bytes_fp32
    assert metrics.host_latency_ms_fp32 > 0 and metrics.host_latency_ms_artifact > 0
    assert ("litert" if expected.format.value == "tflite" else "onnxruntime") in metrics.host_runtime


@pytest.mark.parametrize("profile", PROFILES)
def test_float_input_round_trips_through_the_tensor_specs(
    profile: str, converted: Callable[[str], ConversionResult], eval_set: tuple[np.ndarray, np.ndarray]
) -> None:
    (spec,) = converted(profile).inputs
    image = eval_set[0][:1]
    artifact_form, came_as_float = to_artifact(spec, image)
    assert came_as_float
    assert artifact_form.dtype == np.dtype(spec.dtype)
    assert all(d is None or d == s for d, s in zip(spec.shape, artifact_form.shape, strict=True))
    back = from_artifact(spec, artifact_form, as_float=True)
    assert back.shape == image.shape and back.dtype == np.float32
    step = spec.quantization.scale if spec.quantization is not None else 0.0
    tolerance = step / 2 + 1e-6 if spec.dtype != "float32" else 0.0
    assert np.abs(back - image).max() <= tolerance
