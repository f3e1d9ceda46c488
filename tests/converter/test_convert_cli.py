"""`edgefleet convert` end to end through the real command-line entry point."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from edgefleet.cli import main


def test_convert_prints_a_summary_and_writes_the_bundle(
    reference_dir: Path,
    key_pair: tuple[Path, Path],
    convert_cli: Callable[..., int],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = convert_cli(reference_dir / "digits_cnn_v2.onnx", "jetson-nano", tmp_path, "--version", "2")
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


def test_convert_several_profiles_makes_one_bundle_each_and_one_table_within_80_columns(
    reference_dir: Path, key_pair: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--profile rpi4,rpi5,jetson-nano`: one bundle per profile, one summary table; rpi4 and rpi5 build
    the same Keras translation and calibrate it once, so the second takes both from the first."""
    from edgefleet.converter.pipeline import ConversionResult, convert_many
    from edgefleet.converter.shared_work import SharedWork

    args = ["convert", str(reference_dir / "digits_cnn_v1.onnx"), "--profile", "rpi4,rpi5,jetson-nano",
            "--calib", str(reference_dir / "calib.npz"), "--eval", str(reference_dir / "eval.npz"),
            "--out", str(tmp_path), "--key", str(key_pair[0])]  # fmt: skip
    assert main(args) == 0
    out = capsys.readouterr().out
    for profile in ("rpi4", "rpi5", "jetson-nano"):
        assert (tmp_path / f"digits_cnn_v1-1-{profile}.efb").is_file()
    table = out.split("\n\n")[0].splitlines()
    assert table[0].split() == ["profile", "artifact", "accuracy", "size", "host", "ms"]
    assert [row.split()[0] for row in table[1:]] == ["rpi4", "rpi5", "jetson-nano"]
    assert all(re.search(r"top-1 \d+\.\d%, drop [+-]\d\.\d\d \(\d+/360\)", row) for row in table[1:])
    assert max(len(line) for line in out.splitlines() if str(tmp_path) not in line) <= 80  # paths: as long
    assert "done      3 of 3 profiles" in out

    shared: list[SharedWork] = []
    original_init = SharedWork.__init__

    def keep(self: SharedWork, *a: object, **k: object) -> None:
        original_init(self, *a, **k)  # type: ignore[arg-type]
        shared.append(self)

    request_args = {"model": reference_dir / "digits_cnn_v1.onnx", "calib": reference_dir / "calib.npz",
                    "out": tmp_path / "again", "name": "digits", "key": key_pair[0]}  # fmt: skip
    from edgefleet.converter.context import ConversionRequest

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(SharedWork, "__init__", keep)
        outcomes = convert_many(ConversionRequest(profile="rpi4", **request_args), ["rpi4", "rpi5"])
    assert all(isinstance(outcome, ConversionResult) for outcome in outcomes)
    (work,) = shared
    assert work.reused >= 2 and {key.split(":")[0] for key in work.results} >= {"keras", "tflite-calibrated"}


def test_convert_several_profiles_without_calib_converts_fp16_and_names_what_int8_needs(
    reference_dir: Path, key_pair: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["convert", str(reference_dir / "digits_cnn_v1.onnx"), "--profile", "rpi4,jetson-nano",
            "--eval", str(reference_dir / "eval.npz"), "--out", str(tmp_path),
            "--key", str(key_pair[0])]  # fmt: skip
    assert main(args) == 1  # one profile failed
    out = capsys.readouterr().out
    assert (tmp_path / "digits_cnn_v1-1-jetson-nano.efb").is_file()
    assert not (tmp_path / "digits_cnn_v1-1-rpi4.efb").exists()
    assert "failed    rpi4: profile 'rpi4' makes an int8 artifact" in out and "pass --calib" in out
    assert "no --calib: an fp16 artifact needs no calibration" in out
    assert "done      1 of 2 profiles" in out

    # neither --calib nor --eval: nothing to check the fp16 artifact against
    args = ["convert", str(reference_dir / "digits_cnn_v1.onnx"), "--profile", "jetson-nano",
            "--out", str(tmp_path / "none"), "--key", str(key_pair[0])]  # fmt: skip
    assert main(args) == 2
    assert "pass --eval EVAL.npz (or --calib)" in capsys.readouterr().err


def test_convert_profile_list_checks_every_name_first(
    reference_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["convert", str(reference_dir / "digits_cnn_v1.onnx"), "--profile", "jetson-nano,rpi-4",
            "--calib", str(reference_dir / "calib.npz"), "--out", str(tmp_path)]  # fmt: skip
    assert main(args) == 2
    assert "unknown profile 'rpi-4' (did you mean 'rpi4'?" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
