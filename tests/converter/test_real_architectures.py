"""Architectures people deploy, converted end to end: the repo's MobileNetV3-small (HardSwish, squeeze-excite,
dynamic batch) for every built-in profile within the profile's default budget, on real photo crops."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from edgefleet.contract.profiles import list_profiles
from edgefleet.converter.context import ConversionRequest
from edgefleet.converter.pipeline import convert
from edgefleet.reference_models import reference_model_dir
from edgefleet.reference_models.corpus_data import corpus_split

# whole conversions or training runs: the full suite runs them, the fast lane (-m "not slow") does not
pytestmark = pytest.mark.slow

MODEL = reference_model_dir() / "corpus" / "mobilenetv3_small.onnx"
# One flipped prediction is worth 100/EVAL_SAMPLES points: 128 keeps it below the 1-point budgets.
CALIB_SAMPLES, EVAL_SAMPLES = 64, 128


@pytest.fixture(scope="module")
def photo_sets(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("mobilenetv3-data")
    np.savez(folder / "calib.npz", **corpus_split("mobilenetv3_small", "calib", CALIB_SAMPLES))
    np.savez(folder / "eval.npz", **corpus_split("mobilenetv3_small", "eval", EVAL_SAMPLES))
    return folder / "calib.npz", folder / "eval.npz"


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
    np.savez(tmp_path / "calib.npz", **corpus_split("yolo_style_det", "calib", 64))
    np.savez(tmp_path / "eval.npz", **corpus_split("yolo_style_det", "eval", 64))
    result = convert(
        make_request(
            "rpi4",
            model=MODEL.with_name("yolo_style_det.onnx"),
            calib=tmp_path / "calib.npz",
            eval=tmp_path / "eval.npz",
            out=tmp_path / "out",
            name="yolo",
            max_drop=10.0,
            output_kinds={"output0": "detection"},
        )
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
    np.savez(tmp_path / "calib.npz", **corpus_split("audio_gru", "calib", 64))
    np.savez(tmp_path / "eval.npz", **corpus_split("audio_gru", "eval", 64))
    result = convert(
        make_request(
            "coral-usb",
            model=MODEL.with_name("audio_gru.onnx"),
            calib=tmp_path / "calib.npz",
            eval=tmp_path / "eval.npz",
            out=tmp_path / "out",
            name="gru",
        )
    )
    assert result.report is not None and result.report.budget is not None and result.report.budget.met
    checks = result.target_checks
    assert checks is not None and checks.edgetpu is not None
    assert checks.passed and checks.edgetpu.first_cpu_op is None
    assert {"FULLY_CONNECTED", "LOGISTIC", "TANH"} <= {op.op for op in checks.edgetpu.ops}
    accuracy = result.metrics.accuracy
    assert accuracy is not None and accuracy.measure == "sqnr" and accuracy.artifact > 25
