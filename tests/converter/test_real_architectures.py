"""Architectures people deploy, converted end to end: the repo's MobileNetV3-small (HardSwish, squeeze-excite,
dynamic batch) for every built-in profile within the profile's default budget, on real photo crops."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from edgefleet.contract.profiles import list_profiles
from edgefleet.converter.context import ConversionRequest
from edgefleet.converter.pipeline import ConversionResult, convert
from edgefleet.reference_models import reference_model_dir
from edgefleet.reference_models.corpus_data import corpus_split

# whole conversions or training runs: the full suite runs them, the fast lane (-m "not slow") does not
pytestmark = pytest.mark.slow

MODEL = reference_model_dir() / "corpus" / "mobilenetv3_small.onnx"
# One flipped prediction is worth 100/EVAL_SAMPLES points: 128 keeps it below the 1-point budgets.
CALIB_SAMPLES, EVAL_SAMPLES = 64, 128


def _corpus_sets(folder: Path, model: str, calib_samples: int, eval_samples: int) -> tuple[Path, Path]:
    """Writes the corpus model's calibration and evaluation splits to folder: (calib.npz, eval.npz)."""
    np.savez(folder / "calib.npz", **corpus_split(model, "calib", calib_samples))
    np.savez(folder / "eval.npz", **corpus_split(model, "eval", eval_samples))
    return folder / "calib.npz", folder / "eval.npz"


def _convert_corpus_model(
    make_request: Callable[..., ConversionRequest],
    model: str,
    profile: str,
    folder: Path,
    **overrides: object,
) -> ConversionResult:
    """Converts the corpus model (its file name without .onnx) for profile, with 64 calibration and 64
    evaluation samples written to folder and the bundle written to folder / "out"."""
    calib, evaluation = _corpus_sets(folder, model, 64, 64)
    request = make_request(
        profile,
        model=MODEL.with_name(f"{model}.onnx"),
        calib=calib,
        eval=evaluation,
        out=folder / "out",
        **overrides,
    )
    return convert(request)


@pytest.fixture(scope="module")
def photo_sets(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("mobilenetv3-data")
    return _corpus_sets(folder, "mobilenetv3_small", CALIB_SAMPLES, EVAL_SAMPLES)


@pytest.mark.slow
@pytest.mark.parametrize("profile", [p.name for p in list_profiles()])
def test_mobilenetv3_small_converts_for_every_profile_within_budget(
    profile: str,
    photo_sets: tuple[Path, Path],
    make_request: Callable[..., ConversionRequest],
    tmp_path: Path,
) -> None:
    calib, evaluation = photo_sets
    result = convert(
        make_request(profile, model=MODEL, calib=calib, eval=evaluation, out=tmp_path, name="mbv3")
    )
    assert result.bundle_path.is_file()
    assert result.report is not None and result.report.budget is not None
    assert result.report.budget.checked and result.report.budget.met
    accuracy = result.metrics.accuracy
    assert accuracy is not None and accuracy.metric == "top1"  # labels: which photo a crop comes from
    assert accuracy.fp32 is not None and accuracy.fp32 > 80
    assert result.inputs[0].float_shape[0] is None  # the source's batch axis is dynamic


def test_yolo_head_keeps_its_box_and_score_output_float_on_the_pi(
    make_request: Callable[..., ConversionRequest], tmp_path: Path
) -> None:
    """The YOLOv8-style output joins boxes in pixels with scores in [0, 1]: one int8 scale over both turns
    every score into 0 (measured: F1 0%, no box left). The head stays float by rule, and so does the output
    tensor the last op writes, where the profile runs float ops."""
    result = _convert_corpus_model(
        make_request,
        "yolo_style_det",
        "rpi4",
        tmp_path,
        name="yolo",
        max_drop=10.0,
        output_kinds={"output0": "detection"},
    )
    assert [spec.dtype for spec in result.outputs] == ["float32"]
    accuracy = result.metrics.accuracy
    assert accuracy is not None and accuracy.measure == "detection_f1" and accuracy.artifact > 90
    assert any("in float by rule" in note for note in result.notes)


def test_the_gru_audio_model_converts_for_the_coral_with_every_op_on_the_edge_tpu(
    make_request: Callable[..., ConversionRequest], tmp_path: Path
) -> None:
    """The GRU unrolls into per-step FULLY_CONNECTED and gate ops, and the frame classifier over the
    sequence becomes a 1x1 convolution: nothing the Edge TPU lacks, all within the default budget."""
    result = _convert_corpus_model(make_request, "audio_gru", "coral-usb", tmp_path, name="gru")
    assert result.report is not None and result.report.budget is not None and result.report.budget.met
    checks = result.target_checks
    assert checks is not None and checks.edgetpu is not None
    assert checks.passed and checks.edgetpu.first_cpu_op is None
    assert {"FULLY_CONNECTED", "LOGISTIC", "TANH"} <= {op.op for op in checks.edgetpu.ops}
    accuracy = result.metrics.accuracy
    assert accuracy is not None and accuracy.measure == "sqnr" and accuracy.artifact > 25
