"""`edgefleet convert` with --output-kind, --min-sqnr and --metric on the reference digits CNN: the summary,
report and manifest name the measure that judged the budget, a broken artifact fails on SQNR, and bad
fidelity options fail before any long step."""

from __future__ import annotations

import json
import textwrap
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgefleet.contract.bundle import verify_bundle
from edgefleet.contract.signing import load_public_key

V1 = "digits_cnn_v1.onnx"


def test_output_kind_tensor_is_judged_by_sqnr_in_summary_report_and_manifest(
    reference_dir: Path,
    key_pair: tuple[Path, Path],
    convert_cli: Callable[..., int],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = convert_cli(reference_dir / V1, "jetson-orin-nano", tmp_path, "--output-kind=logits=tensor")
    out = capsys.readouterr().out
    assert code == 0
    assert "accuracy  SQNR vs fp32 on 360 samples: " in out and " dB, output 'logits'" in out
    assert "output    'logits' (tensor, named): SQNR " in out and "within SQNR >= 20.0 dB" in out
    assert "budget    met, judged by SQNR/cosine vs fp32 on 'logits' [SQNR >= 20.0 dB (default)]" in out
    assert "labels `y` of the evaluation data were not used" in out  # said plainly
    stem = "digits_cnn_v1-1-jetson-orin-nano"
    report = json.loads((tmp_path / f"{stem}.report.json").read_text())
    (output,) = report["outputs"]
    assert (output["kind"], output["kind_source"], output["metric"], output["unit"]) == (
        "tensor",
        "request",
        "sqnr",
        "dB",
    )
    assert 25 < output["sqnr_db"] < 60 and output["cosine"] > 0.99 and output["within_budget"]
    assert report["budget"]["judged_by"] == "SQNR/cosine vs fp32 on 'logits'"
    assert report["budget"]["min_sqnr_db"] == 20.0 and report["budget"]["metric"] == "sqnr"
    html = (tmp_path / f"{stem}.report.html").read_text()
    assert "Judged by SQNR/cosine vs fp32 on &#x27;logits&#x27;." in html and "tensor (named)" in html
    accuracy = verify_bundle(tmp_path / f"{stem}.efb", load_public_key(key_pair[1])).metrics.accuracy
    assert accuracy is not None and (accuracy.metric, accuracy.measure, accuracy.unit) == (
        "top1_agreement",
        "sqnr",
        "dB",
    )


def test_a_broken_artifact_fails_on_its_sqnr_floor(
    reference_dir: Path, convert_cli: Callable[..., int], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # FP16 keeps ~70 dB on this model; a 90 dB floor makes it the "broken" artifact (no search for fp16).
    code = convert_cli(
        reference_dir / V1,
        "jetson-orin-nano",
        tmp_path,
        "--precision",
        "fp16",
        "--output-kind",
        "tensor",
        "--min-sqnr",
        "90",
    )
    err = capsys.readouterr().err
    assert code != 0 and not list(tmp_path.glob("*.efb"))
    assert "over budget: 'logits' SQNR/cosine vs fp32:" in err and "< 90.0 dB" in err
    assert "--min-sqnr" in err
    report = json.loads((tmp_path / "digits_cnn_v1-1-jetson-orin-nano.report.json").read_text())
    assert not report["budget"]["met"] and report["budget"]["sqnr_source"] == "request"


def _feature_map_model(path: Path) -> Path:
    """image [N, 1, 8, 8] -> Conv 3x3 + Relu -> features [N, 4, 8, 8]: an output that is no classification."""
    weight = np.random.default_rng(0).normal(0, 0.5, (4, 1, 3, 3)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["image", "w"], ["conv"], pads=[1, 1, 1, 1], name="conv"),
            helper.make_node("Relu", ["conv"], ["features"], name="relu"),
        ],
        "features",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, 8, 8])],
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", 4, 8, 8])],
        [numpy_helper.from_array(weight, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.save(model, str(path))
    return path


def test_an_unnamed_non_classification_output_is_judged_by_sqnr_and_the_summary_says_so(
    convert_cli: Callable[..., int], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = _feature_map_model(tmp_path / "features.onnx")
    code = convert_cli(model, "jetson-nano", tmp_path / "out")
    captured = capsys.readouterr()
    out = captured.out
    assert code == 0, captured.err
    plainly = (
        "'features': not a classification output and no --output-kind given, so SQNR/cosine against fp32"
    )
    assert plainly in out and "judged by SQNR/cosine vs fp32 on 'features' [SQNR >= 25.0 dB (default)]" in out
    report = json.loads((tmp_path / "out" / "features-1-jetson-nano.report.json").read_text())
    assert report["outputs"][0]["kind_source"] == "shape" and report["outputs"][0]["metric"] == "sqnr"
    assert any(note.startswith(plainly) for note in report["budget"]["fidelity_notes"])
    assert (
        "not a classification output" in (tmp_path / "out" / "features-1-jetson-nano.report.html").read_text()
    )


HOOK = """
import numpy as np

def top1_drop(fp32, artifact, data):
    same = (fp32["logits"].argmax(1) == artifact["logits"].argmax(1)).mean() * 100
    return {"score": same, "drop": 100 - same, "name": "my agreement"}
"""


def test_a_metric_hook_judges_the_budget(
    reference_dir: Path,
    convert_cli: Callable[..., int],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    (tmp_path / "digits_hook_metrics.py").write_text(textwrap.dedent(HOOK))
    monkeypatch.chdir(tmp_path)  # the working directory is importable, as for PyTorch factories
    hook = "digits_hook_metrics:top1_drop"
    code = convert_cli(reference_dir / V1, "jetson-nano", tmp_path / "out", "--metric", hook)
    out = capsys.readouterr().out
    assert code == 0
    assert "judged by custom metric my agreement (digits_hook_metrics:top1_drop)" in out
    report = json.loads((tmp_path / "out" / "digits_cnn_v1-1-jetson-nano.report.json").read_text())
    custom = report["budget"]["custom_metric"]
    assert custom["name"] == "my agreement" and custom["score"] > 99
    assert report["budget"]["metric"] == "custom"


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--output-kind", "boxes=detection"], "boxes=detection: the model has no output 'boxes'"),
        (["--output-kind", "boxes"], "unknown kind 'boxes'"),
        (["--metric", "no_such_metrics_module:score"], "cannot import module 'no_such_metrics_module'"),
        (["--metric", "not a hook"], "--metric 'not a hook'"),
    ],
)
def test_bad_fidelity_options_fail_before_any_long_step(
    reference_dir: Path,
    convert_cli: Callable[..., int],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    flags: list[str],
    message: str,
) -> None:
    code = convert_cli(reference_dir / V1, "rpi4", tmp_path, *flags)
    err = capsys.readouterr().err
    assert code == 2 and message in err
    assert "onnx to keras" not in err and "quantize" not in err  # refused before the artifact is built
