"""Calibration methods: the histogram methods clip rare outliers that minmax keeps, and each method reaches
both quantizers (the TFLite calibrated ranges and onnxruntime's TensorQuantOverrides)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from ai_edge_litert.interpreter import Interpreter
from onnx import numpy_helper

from edgefleet.contract.bundle import extract_bundle
from edgefleet.contract.signing import load_public_key
from edgefleet.converter.context import ConversionRequest
from edgefleet.converter.pipeline import ConversionResult, convert
from edgefleet.converter.steps.calibration_ranges import DEFAULT_CALIBRATION_METHOD, method_ranges
from edgefleet.converter.steps.onnx_to_keras import layer_names_in

# whole conversions or training runs: the full suite runs them, the fast lane (-m "not slow") does not
pytestmark = pytest.mark.slow

RNG = np.random.default_rng(0)
BATCH, BATCHES = 100_000, 4  # 400k one-value samples: the 99.999th percentile cuts 2 values at each end


def _batches_with_one_outlier() -> list[dict[str, np.ndarray]]:
    relu_like = [np.maximum(RNG.normal(0.5, 0.3, (BATCH, 1)), 0).astype(np.float32) for _ in range(BATCHES)]
    relu_like[2][123] = 50.0  # one value far outside the distribution
    return [{"t": values} for values in relu_like]


@pytest.mark.parametrize("method", ["entropy", "percentile"])
def test_histogram_methods_clip_a_rare_outlier_and_stay_inside_the_observed_range(method: str) -> None:
    batches = _batches_with_one_outlier()
    low, high = method_ranges(method, batches, BATCH * BATCHES)["t"]  # type: ignore[arg-type]
    assert low == 0.0  # ReLU output: the minimum stays at 0 (not a symmetric -threshold)
    assert 1.0 < high < 10.0  # minmax would take 50.0 and leave ~5 int8 steps for the real values
    assert all(float(b["t"].max()) >= high for b in batches[2:3])


def test_the_default_method_is_one_of_the_three() -> None:
    assert DEFAULT_CALIBRATION_METHOD in ("minmax", "entropy", "percentile")


@pytest.fixture(scope="module")
def by_method(
    make_request: Callable[..., ConversionRequest], converted: Callable[[str], ConversionResult]
) -> Callable[[str, str], ConversionResult]:
    """by_method(profile, method): digits v1 converted with that calibration method (the session's default
    conversion when it is the default method)."""
    cache: dict[tuple[str, str], ConversionResult] = {}

    def get(profile: str, method: str) -> ConversionResult:
        if method == DEFAULT_CALIBRATION_METHOD:
            return converted(profile)
        if (profile, method) not in cache:
            name = f"digits-{method}-{profile}"
            cache[profile, method] = convert(make_request(profile, name=name, calib_method=method))
        return cache[profile, method]

    return get


def _unpack(result: ConversionResult, key_pair: tuple[Path, Path], dest: Path) -> Path:
    manifest = extract_bundle(result.bundle_path, dest, load_public_key(key_pair[1]))
    return dest / manifest.artifact


def _activation_scales_tflite(path: Path) -> dict[tuple[str, ...], float]:
    """Scale of every int8 ReLU feature map, keyed by the ONNX layers it computes (TF's name prefix
    'functional_<n>' differs from one conversion to the next)."""
    interpreter = Interpreter(model_path=str(path))
    return {
        tuple(layer_names_in(t["name"])): float(t["quantization"][0])
        for t in interpreter.get_tensor_details()
        if t["dtype"] == np.int8 and t["quantization"][0] > 0 and "Relu" in t["name"]
    }


@pytest.mark.slow
def test_percentile_narrows_the_tflite_activation_ranges(
    by_method: Callable[[str, str], ConversionResult], key_pair: tuple[Path, Path], tmp_path: Path
) -> None:
    clipped, observed = by_method("rpi4", "percentile"), by_method("rpi4", "minmax")
    assert clipped.report is not None and clipped.report.calibration.method == "percentile"
    assert observed.report is not None and observed.report.calibration.method == "minmax"
    scales = _activation_scales_tflite(_unpack(clipped, key_pair, tmp_path / "p"))
    reference = _activation_scales_tflite(_unpack(observed, key_pair, tmp_path / "m"))
    shared = sorted(set(scales) & set(reference))
    assert len(shared) >= 4
    assert any(scales[n] < reference[n] * 0.999 for n in shared)  # a clipped range: a finer step
    assert all(scales[n] <= reference[n] * 1.001 for n in shared)  # never wider than the observed range


def _qdq_scales(path: Path) -> dict[str, float]:
    model = onnx.load(str(path))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    return {
        node.input[0]: float(inits[node.input[1]])
        for node in model.graph.node
        if node.op_type == "QuantizeLinear" and inits[node.input[1]].size == 1
    }


@pytest.mark.slow
def test_percentile_reaches_onnxruntime_as_range_overrides(
    by_method: Callable[[str, str], ConversionResult], key_pair: tuple[Path, Path], tmp_path: Path
) -> None:
    clipped = _qdq_scales(_unpack(by_method("jetson-orin-nano", "percentile"), key_pair, tmp_path / "p"))
    reference = _qdq_scales(_unpack(by_method("jetson-orin-nano", "minmax"), key_pair, tmp_path / "m"))
    assert set(clipped) == set(reference)
    assert any(clipped[n] < reference[n] * 0.999 for n in clipped)
    # Never wider than the observed range; a Relu's input shares its output's range, as quantize_static does.
    assert all(clipped[n] <= reference[n] * 1.001 for n in clipped)
