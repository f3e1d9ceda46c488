"""Backends on real runtimes: onnxruntime with the reference model, LiteRT with a hand-built int8 model."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from tiny_tflite import TinyInt8Model, build_tiny_int8_model

from edgefleet.agent.backends import BackendError, open_backend
from edgefleet.agent.backends.litert import LiteRtBackend
from edgefleet.agent.backends.ort import OnnxRuntimeBackend
from edgefleet.agent.inference import InferenceService
from edgefleet.agent.model_slot import LoadedModel
from edgefleet.contract.errors import TensorError
from edgefleet.contract.manifest import BundleManifest, ConversionMetrics, QuantParams, TensorSpec
from edgefleet.contract.profiles import ArtifactFormat, Engine, RuntimeSpec
from edgefleet.contract.tensors import dequantize, encode_npy, quantize


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> TinyInt8Model:
    return build_tiny_int8_model(tmp_path_factory.mktemp("tflite") / "tiny.tflite")


def test_onnxruntime_backend_runs_the_reference_model(reference_dir: Path) -> None:
    backend = OnnxRuntimeBackend(
        reference_dir / "digits_cnn_v1.onnx", RuntimeSpec(engine=Engine.ONNXRUNTIME, threads=2)
    )
    assert [(t.name, t.dtype, t.shape) for t in backend.inputs()] == [("image", "float32", (None, 1, 8, 8))]
    assert backend.info.providers == ["CPUExecutionProvider"] and backend.info.fallbacks == []
    assert backend.info.threads == 2
    images = np.load(reference_dir / "eval.npz")["image"][:5]
    logits = backend.run({"image": images})["logits"]
    assert logits.shape == (5, 10)
    backend.close()


def test_onnxruntime_missing_providers_are_fallbacks(reference_dir: Path) -> None:
    runtime = RuntimeSpec(
        engine=Engine.ONNXRUNTIME,
        providers=("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"),
    )
    backend = OnnxRuntimeBackend(reference_dir / "digits_cnn_v1.onnx", runtime)
    expected_missing = [p for p in runtime.providers if p not in ort.get_available_providers()]
    assert backend.info.providers == ["CPUExecutionProvider"]
    assert len(backend.info.fallbacks) == len(expected_missing) == 2
    assert all("not available" in f for f in backend.info.fallbacks)


def test_open_backend_refuses_a_format_engine_mismatch(reference_dir: Path) -> None:
    with pytest.raises(BackendError, match="cannot run on engine 'litert'"):
        open_backend(
            ArtifactFormat.ONNX, reference_dir / "digits_cnn_v1.onnx", RuntimeSpec(engine=Engine.LITERT)
        )


def test_onnxruntime_bad_model_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(BackendError, match=r"onnxruntime cannot load bad\.onnx"):
        OnnxRuntimeBackend(bad, RuntimeSpec(engine=Engine.ONNXRUNTIME))


def test_litert_backend_runs_int8_and_resizes_batch(tiny: TinyInt8Model) -> None:
    backend = LiteRtBackend(tiny.path, RuntimeSpec(engine=Engine.LITERT, threads=2, delegates=("xnnpack",)))
    assert (
        backend.info.engine == "litert"
        and backend.info.delegate == "xnnpack"
        and backend.info.fallbacks == []
    )
    assert [(t.name, t.dtype, t.shape) for t in backend.inputs()] == [("x", "int8", (None, 64))]
    rng = np.random.default_rng(3)
    for batch in (1, 4, 1):
        q_in = rng.integers(-128, 128, size=(batch, 64), dtype=np.int8)
        out = backend.run({"x": q_in})["y"]
        assert out.dtype == np.int8 and out.shape == (batch, 10)
        assert np.abs(out.astype(int) - tiny.reference(q_in).astype(int)).max() <= 1
    backend.close()


def test_litert_edgetpu_missing_falls_back_to_cpu(tiny: TinyInt8Model) -> None:
    backend = LiteRtBackend(tiny.path, RuntimeSpec(engine=Engine.LITERT, delegates=("edgetpu",)))
    assert backend.info.delegate == "xnnpack"  # what runs instead: LiteRT's CPU path
    assert len(backend.info.fallbacks) == 1 and "libedgetpu.so.1" in backend.info.fallbacks[0]
    assert "running on CPU" in backend.info.fallbacks[0]
    assert backend.run({"x": np.zeros((1, 64), np.int8)})["y"].shape == (1, 10)


def _tiny_manifest(tiny: TinyInt8Model) -> BundleManifest:
    return BundleManifest(
        name="tiny", version="7", profile="rpi4", format="tflite", precision="int8", artifact="model.tflite",
        inputs=[TensorSpec(name="x", dtype="int8", shape=[None, 64], float_shape=[None, 64],
                           quantization=QuantParams(scale=tiny.in_scale, zero_point=tiny.in_zero_point))],
        outputs=[TensorSpec(name="y", dtype="int8", shape=[None, 10], float_shape=[None, 10],
                            quantization=QuantParams(scale=tiny.out_scale, zero_point=tiny.out_zero_point))],
        files=[],
        metrics=ConversionMetrics(size_bytes_fp32=1, size_bytes_artifact=1, host_latency_ms_fp32=1,
                                  host_latency_ms_artifact=1, host_runtime="test"),
        converter_version="test", created_at=datetime.now(timezone.utc),
    )  # fmt: skip


def test_quantized_requests_in_float_and_int8_form(tiny: TinyInt8Model) -> None:
    """The float form is quantized on the way in and dequantized on the way out; int8 passes through."""
    manifest = _tiny_manifest(tiny)
    model = LoadedModel("0" * 64, manifest, LiteRtBackend(tiny.path, RuntimeSpec(engine=Engine.LITERT)))
    assert model.warm_up() >= 0
    x = np.random.default_rng(5).normal(0, 2, size=(2, 64)).astype(np.float32)
    out = InferenceService.compute(model, encode_npy(x), "application/x-npy")["y"]
    q_ref = tiny.reference(quantize(x, manifest.inputs[0]))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, dequantize(q_ref, manifest.outputs[0]), atol=tiny.out_scale + 1e-6)

    q_in = quantize(x, manifest.inputs[0])
    out_q = InferenceService.compute(model, encode_npy(q_in), "application/x-npy")["y"]
    assert out_q.dtype == np.int8 and np.abs(out_q.astype(int) - q_ref.astype(int)).max() <= 1

    with pytest.raises(
        TensorError, match=r"expected int8 \(\?,64\) or float32 \(\?,64\), got float64 \(2,64\)"
    ):
        InferenceService.compute(model, encode_npy(x.astype(np.float64)), "application/x-npy")
    model.close()
