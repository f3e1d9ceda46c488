"""Bad input is refused with a clear EdgefleetError before any heavy step runs."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from edgefleet.contract.errors import EdgefleetError, ProfileError
from edgefleet.contract.profiles import PROFILES_PATH_ENV
from edgefleet.converter.context import ConversionRequest
from edgefleet.converter.errors import InputDataError, ModelError, UnsupportedTargetError
from edgefleet.converter.pipeline import convert

CHEAP_STEPS = {
    "load model",
    "load calibration data",
    "load evaluation data",
    "check fidelity options",
    "load signing key",
}


def _convert_expecting(error: type[EdgefleetError], request: ConversionRequest, match: str) -> None:
    ran: list[str] = []
    with pytest.raises(error, match=match) as info:
        convert(request, progress=lambda i, n, name, s: ran.append(name))
    assert set(ran) <= CHEAP_STEPS, f"heavy steps ran before the error: {ran}"
    assert "\n" not in str(info.value)
    assert not list(request.out.glob("*.efb"))


@pytest.fixture
def req(make_request: Callable[..., ConversionRequest], tmp_path: Path) -> Callable[..., ConversionRequest]:
    def build(**overrides: object) -> ConversionRequest:
        overrides.setdefault("profile", "rpi4")  # a TensorFlow profile: errors must come before the import
        return make_request(out=tmp_path / "out", **overrides)

    return build


def _npz(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)  # type: ignore[arg-type]
    return path


def _images(n: int) -> np.ndarray:
    return np.random.default_rng(0).random((n, 1, 8, 8), dtype=np.float32)


def test_unknown_profile(req: Callable[..., ConversionRequest]) -> None:
    _convert_expecting(
        ProfileError, req(profile="toaster"), r"unknown profile 'toaster' \(known: coral-devboard"
    )


def test_missing_model(req: Callable[..., ConversionRequest], tmp_path: Path) -> None:
    _convert_expecting(ModelError, req(model=tmp_path / "nope.onnx"), "nope.onnx: no such file")


def test_unreadable_model(req: Callable[..., ConversionRequest], tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"this is not a protobuf")
    _convert_expecting(ModelError, req(model=bad), "not a valid ONNX model")


def test_calibration_array_names(req: Callable[..., ConversionRequest], tmp_path: Path) -> None:
    calib = _npz(tmp_path / "c.npz", x=_images(20))
    _convert_expecting(InputDataError, req(calib=calib), r"missing \['image'\], unexpected \['x'\]")


def test_calibration_shape(req: Callable[..., ConversionRequest], tmp_path: Path) -> None:
    calib = _npz(tmp_path / "c.npz", image=np.zeros((20, 8, 8, 1), np.float32))
    _convert_expecting(
        InputDataError, req(calib=calib), r"shape \(20,8,8,1\) but the model input is \(\?,1,8,8\)"
    )


def test_calibration_any_batch_is_accepted(
    make_request: Callable[..., ConversionRequest], tmp_path: Path
) -> None:
    calib = _npz(tmp_path / "c.npz", image=_images(13))
    result = convert(make_request("jetson-nano", calib=calib, eval=None, out=tmp_path / "out"))
    assert result.bundle_path.is_file() and result.metrics.accuracy is None


def test_calibration_nan(req: Callable[..., ConversionRequest], tmp_path: Path) -> None:
    images = _images(20)
    images[3, 0, 2, 2] = np.nan
    images[4, 0, 1, 1] = np.inf
    _convert_expecting(InputDataError, req(calib=_npz(tmp_path / "c.npz", image=images)), "2 NaN/inf values")


def test_too_few_calibration_samples(req: Callable[..., ConversionRequest], tmp_path: Path) -> None:
    calib = _npz(tmp_path / "c.npz", image=_images(9))
    _convert_expecting(InputDataError, req(calib=calib), "9 samples, at least 10 are needed")


def test_evaluation_labels(req: Callable[..., ConversionRequest], tmp_path: Path) -> None:
    data = _npz(tmp_path / "e.npz", image=_images(12), y=np.zeros(11, np.int64))
    _convert_expecting(InputDataError, req(eval=data), "labels 'y' must be 12 integers")


def test_missing_key(req: Callable[..., ConversionRequest], tmp_path: Path) -> None:
    _convert_expecting(EdgefleetError, req(key=tmp_path / "none.key"), "edgefleet keys init")


PROFILE = """\
name: {name}
description: test profile
artifact: {{format: {format}, precision: int8, io_dtype: {io}}}
runtime: {{engine: {engine}}}
memory_budget_mb: 64
latency_budget_ms: 10
"""


@pytest.mark.parametrize(
    ("fmt", "io", "engine", "reason"),
    [
        ("tflite", "float32", "litert", "TFLite artifacts are full-INT8 only"),
        ("onnx", "int8", "onnxruntime", "INT8 ONNX artifacts are QDQ models that keep float32 I/O"),
    ],
)
def test_profile_asks_for_what_the_converter_refuses(
    fmt: str,
    io: str,
    engine: str,
    reason: str,
    req: Callable[..., ConversionRequest],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    (tmp_path / "odd.yaml").write_text(PROFILE.format(name="odd", format=fmt, io=io, engine=engine))
    monkeypatch.setenv(PROFILES_PATH_ENV, str(tmp_path))
    _convert_expecting(UnsupportedTargetError, req(profile="odd"), f"profile 'odd' asks for .*: {reason}")
