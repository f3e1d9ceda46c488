"""`edgefleet convert` end to end through the real command-line entry point."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from edgefleet.cli import main


def test_convert_prints_a_summary_and_writes_the_bundle(
    reference_dir: Path, key_pair: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [
            "convert",
            str(reference_dir / "digits_cnn_v2.onnx"),
            "--profile",
            "jetson-nano",
            "--calib",
            str(reference_dir / "calib.npz"),
            "--eval",
            str(reference_dir / "eval.npz"),
            "--out",
            str(tmp_path),
            "--version",
            "2",
            "--key",
            str(key_pair[0]),
        ]
    )
    out = capsys.readouterr().out
    bundle = tmp_path / "digits_cnn_v2-2-jetson-nano.efb"
    assert code == 0 and bundle.is_file()
    assert "accuracy  top-1 on 360 samples: fp32 " in out
    assert re.search(r"\(drop [+-]\d+\.\d\d points, \d+ of 360 samples\)", out)  # points as whole samples
    assert "size      fp32 " in out and "latency   host, 1 thread" in out
    assert str(bundle) in out

    # --json prints report.json instead of the summary (jetson-nano's fp16 conversion takes a second)
    assert main(["convert", str(reference_dir / "digits_cnn_v2.onnx"), "--profile", "jetson-nano",
                 "--calib", str(reference_dir / "calib.npz"), "--out", str(tmp_path / "json"),
                 "--key", str(key_pair[0]), "--json"]) == 0  # fmt: skip
    report = json.loads(capsys.readouterr().out)
    assert report["profile"] == "jetson-nano" and report["bundle"].endswith(".efb")


def test_convert_errors_exit_2_with_one_line(
    reference_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [
            "convert",
            str(reference_dir / "digits_cnn_v1.onnx"),
            "--profile",
            "rpi4",
            "--calib",
            str(reference_dir / "calib.npz"),
            "--out",
            str(tmp_path),
            "--name",
            "bad name!",
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1].startswith("edgefleet: error: --name 'bad name!': String should match pattern")
