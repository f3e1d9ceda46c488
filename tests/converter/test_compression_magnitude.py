"""Unstructured magnitude pruning is offered with an honest, measured report: zeros in dense tensors buy
no fewer MACs, no speed-up and no smaller file; only the deflated size shrinks."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from edgefleet.cli import main
from edgefleet.converter.compression.magnitude import magnitude_prune

# whole conversions or training runs: the full suite runs them, the fast lane (-m "not slow") does not
pytestmark = pytest.mark.slow


def test_magnitude_prune_zeroes_the_smallest_weights(reference_dir: Path) -> None:
    model = onnx.load(str(reference_dir / "digits_cnn_v1.onnx"))
    pruned, lines = magnitude_prune(model, 0.5)
    before = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    after = {i.name: numpy_helper.to_array(i) for i in pruned.graph.initializer}
    layer_weights = [name for name, w in before.items() if w.ndim >= 2]
    assert len(lines) == len(layer_weights) > 0
    for name in layer_weights:
        w, p = before[name], after[name]
        assert np.count_nonzero(p) == w.size - round(w.size * 0.5)
        kept = np.abs(w[p != 0])
        assert kept.min() >= np.abs(w[p == 0]).max()  # the zeroed ones were the smallest
        np.testing.assert_array_equal(p[p != 0], w[p != 0])
    for name, w in before.items():
        if w.ndim < 2:
            np.testing.assert_array_equal(after[name], w)  # biases untouched


def test_cli_reports_what_magnitude_pruning_does_not_buy(
    reference_dir: Path,
    convert_cli: Callable[..., int],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = convert_cli(
        reference_dir / "digits_cnn_v2.onnx", "jetson-nano", tmp_path, "--magnitude-prune", "0.5"
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "compress  magnitude pruning (sparsity 0.5 per weight tensor)" in out
    assert "there is no speed-up" in out and "no size change" in out


def test_magnitude_report_numbers(reference_dir: Path, make_request) -> None:  # type: ignore[no-untyped-def]
    from edgefleet.converter.pipeline import convert

    (report,) = convert(
        make_request("jetson-nano", model_name="digits_cnn_v2", magnitude_prune=0.5)
    ).compression
    before, after = report.before, report.after
    assert after.params == before.params and after.macs == before.macs
    assert after.nonzero_params < 0.55 * before.nonzero_params
    assert abs(after.size_bytes - before.size_bytes) <= 0.01 * before.size_bytes
    assert after.zipped_size_bytes < 0.8 * before.zipped_size_bytes
    notes = " ".join(report.notes)
    assert f"MACs stay {before.macs} -> {after.macs}" in notes
    assert f"{before.size_bytes} -> {after.size_bytes} bytes" in notes


def test_bad_sparsity_is_refused_by_the_cli(
    reference_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "convert",
                str(reference_dir / "digits_cnn_v1.onnx"),
                "--profile",
                "jetson-nano",
                "--calib",
                str(reference_dir / "calib.npz"),
                "--out",
                str(tmp_path),
                "--magnitude-prune",
                "1.5",
            ]
        )
    assert exit_info.value.code == 2
    assert "--magnitude-prune: 1.5 must be between 0 and 1" in capsys.readouterr().err
