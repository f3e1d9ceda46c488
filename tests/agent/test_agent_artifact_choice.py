"""Issue 10: the agent uses a bundle's alternatives. On a Coral, the Edge TPU-compiled model is preferred
and the plain TFLite runs where the Edge TPU does not load; on a Pi, the INT8 ONNX runs when the TFLite
cannot load. The Edge TPU itself is not here: its compiled model is a TFLite with the Edge TPU custom op,
which fails to load without the delegate, exactly as on a device without the accelerator."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from support_bundles import fp32_manifest
from tiny_tflite import TinyInt8Model, build_tiny_int8_model

from edgefleet.agent.artifact_choice import ALTERNATIVE_REFERENCE_SLACK_DB, candidates
from edgefleet.agent.backends import BackendError
from edgefleet.agent.inference import InferenceService
from edgefleet.agent.model_slot import LoadedModel
from edgefleet.contract.manifest import (
    ArtifactAlternative,
    BundleManifest,
    FileEntry,
    QuantParams,
    TensorSpec,
)
from edgefleet.contract.profiles import ArtifactFormat, Precision, load_profile


def _files(*paths: str) -> list[FileEntry]:
    return [FileEntry(path=path, sha256="0" * 64, size=1) for path in paths]


def _tiny_specs(tiny: TinyInt8Model) -> tuple[list[TensorSpec], list[TensorSpec]]:
    inputs = [
        TensorSpec(
            name="x", dtype="int8", shape=[1, 64], float_shape=[None, 64],
            quantization=QuantParams(scale=tiny.in_scale, zero_point=tiny.in_zero_point),
        )
    ]  # fmt: skip
    outputs = [
        TensorSpec(
            name="y", dtype="int8", shape=[1, 10], float_shape=[None, 10],
            quantization=QuantParams(scale=tiny.out_scale, zero_point=tiny.out_zero_point),
        )
    ]  # fmt: skip
    return inputs, outputs


def _coral_bundle(tmp_path: Path) -> tuple[BundleManifest, Path, TinyInt8Model]:
    tiny = build_tiny_int8_model(tmp_path / "model.tflite")
    build_tiny_int8_model(tmp_path / "model_edgetpu.tflite", custom_op="edgetpu-custom-op")
    inputs, outputs = _tiny_specs(tiny)
    compiled = ArtifactAlternative(
        kind="tflite-int8-edgetpu", path="model_edgetpu.tflite", format=ArtifactFormat.TFLITE,
        precision=Precision.INT8, inputs=inputs, outputs=outputs, requires_delegate="edgetpu",
    )  # fmt: skip
    manifest = fp32_manifest("coral-usb", "1").model_copy(
        update={
            "format": ArtifactFormat.TFLITE, "precision": Precision.INT8, "artifact": "model.tflite",
            "inputs": inputs, "outputs": outputs, "alternatives": [compiled],
            "files": _files("model.tflite", "model_edgetpu.tflite"),
        }
    )  # fmt: skip
    return manifest, tmp_path, tiny


def test_a_coral_prefers_the_edge_tpu_model_and_runs_the_plain_tflite_without_the_accelerator(
    tmp_path: Path,
) -> None:
    manifest, bundle_dir, tiny = _coral_bundle(tmp_path)
    coral = load_profile("coral-usb")
    assert [c.manifest.artifact for c in candidates(manifest, coral)] == [
        "model_edgetpu.tflite",
        "model.tflite",
    ]
    # a Pi has no Edge TPU delegate in its profile: the compiled model is never tried there
    assert [c.manifest.artifact for c in candidates(manifest, load_profile("rpi4"))] == ["model.tflite"]

    model = LoadedModel.load("0" * 64, manifest, bundle_dir, coral)  # libedgetpu is not installed here
    assert model.manifest.artifact == "model.tflite"
    notes = model.info.fallbacks
    assert (
        "the tflite-int8-edgetpu alternative could not load" in notes[0] and "edgetpu-custom-op" in notes[0]
    )
    assert "running the preferred tflite artifact (model.tflite) instead" in notes[1]
    q_in = np.zeros((1, 64), np.int8)
    assert np.array_equal(model.run({"x": q_in})["y"], tiny.reference(q_in))
    model.close()


def test_a_pi_runs_the_onnx_alternative_when_its_tflite_cannot_load(
    tmp_path: Path, reference_dir: Path
) -> None:
    (tmp_path / "model.tflite").write_bytes(b"not a flatbuffer")  # a damaged or unsupported TFLite
    (tmp_path / "model.onnx").write_bytes((reference_dir / "digits_cnn_v1.onnx").read_bytes())
    float_io = fp32_manifest("rpi4", "1")
    onnx_int8 = ArtifactAlternative(
        kind="onnx-int8", path="model.onnx", format=ArtifactFormat.ONNX, precision=Precision.INT8,
        inputs=float_io.inputs, outputs=float_io.outputs,
    )  # fmt: skip
    manifest = float_io.model_copy(
        update={
            "format": ArtifactFormat.TFLITE, "precision": Precision.INT8, "artifact": "model.tflite",
            "alternatives": [onnx_int8], "files": _files("model.tflite", "model.onnx"),
        }
    )  # fmt: skip
    rpi4 = load_profile("rpi4")
    (preferred, alternative) = candidates(manifest, rpi4)
    assert (
        alternative.runtime.engine.value == "onnxruntime"
        and alternative.runtime.threads == rpi4.runtime.threads
    )
    assert (
        alternative.reference_slack_db == ALTERNATIVE_REFERENCE_SLACK_DB and preferred.reference_slack_db == 0
    )
    model = LoadedModel.load("0" * 64, manifest, tmp_path, rpi4)
    assert model.manifest.artifact == "model.onnx" and model.info.engine == "onnxruntime"
    assert "running the onnx-int8 alternative (model.onnx) instead" in model.info.fallbacks[1]
    images = np.load(reference_dir / "eval.npz")["image"][:4]
    logits = InferenceService.compute_tensors(model, {"image": images})["logits"]
    assert logits.shape == (4, 10) and np.isfinite(logits).all()
    model.close()

    # without the alternative the bundle cannot run here, and the reason says why
    with pytest.raises(BackendError, match="the preferred tflite artifact could not load"):
        LoadedModel.load("0" * 64, manifest.model_copy(update={"alternatives": []}), tmp_path, rpi4)
