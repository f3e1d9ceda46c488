from __future__ import annotations

from pathlib import Path

import pytest

from edgefleet.contract.errors import ProfileError
from edgefleet.contract.profiles import (
    PROFILES_PATH_ENV,
    ArtifactFormat,
    Engine,
    Precision,
    list_profiles,
    load_profile,
)

BUILTIN = {"rpi4", "rpi5", "jetson-nano", "jetson-orin-nano", "coral-usb", "coral-devboard"}


def test_builtin_profiles_all_validate() -> None:
    assert {p.name for p in list_profiles()} >= BUILTIN


def test_targets_get_the_artifact_they_can_run() -> None:
    nano = load_profile("jetson-nano")
    assert (nano.artifact.format, nano.artifact.precision) == (ArtifactFormat.ONNX, Precision.FP16)
    orin = load_profile("jetson-orin-nano")
    assert (orin.artifact.precision, orin.artifact.quant_flavor) == (Precision.INT8, "tensorrt")
    assert orin.runtime.providers[0] == "TensorrtExecutionProvider"
    coral = load_profile("coral-usb")
    assert coral.artifact.io_dtype == "uint8" and coral.runtime.delegates == ("edgetpu",)
    assert load_profile("rpi4").runtime.engine is Engine.LITERT


def test_unknown_profile_names_the_known_ones_and_where_to_add() -> None:
    with pytest.raises(ProfileError, match=r"unknown profile 'toaster'.*rpi4.*add a file toaster.yaml"):
        load_profile("toaster")


def test_user_adds_a_target_by_adding_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "my-board.yaml").write_text(
        "name: my-board\ndescription: test board\n"
        "artifact: {format: onnx, precision: int8, io_dtype: float32}\n"
        "runtime: {engine: onnxruntime, threads: 2, providers: [CPUExecutionProvider]}\n"
        "memory_budget_mb: 128\nlatency_budget_ms: 5\n"
    )
    monkeypatch.setenv(PROFILES_PATH_ENV, str(tmp_path))
    assert load_profile("my-board").runtime.threads == 2
    assert "my-board" in {p.name for p in list_profiles()}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            "artifact: {format: tflite, precision: fp16, io_dtype: float32}\nruntime: {engine: litert}\n",
            "full-INT8 only",
        ),
        (
            "artifact: {format: onnx, precision: int8, io_dtype: float32}\nruntime: {engine: litert}\n",
            "run on engine 'onnxruntime'",
        ),
        (
            "artifact: {format: onnx, precision: int8, io_dtype: float32, colour: red}\n"
            "runtime: {engine: onnxruntime}\n",
            "colour",
        ),
    ],
)
def test_invalid_profile_file_says_what_and_where(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, body: str, message: str
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(f"name: bad\ndescription: x\nmemory_budget_mb: 1\nlatency_budget_ms: 1\n{body}")
    monkeypatch.setenv(PROFILES_PATH_ENV, str(tmp_path))
    with pytest.raises(ProfileError, match=message) as info:
        load_profile("bad")
    assert str(path) in str(info.value)


def test_profile_name_must_match_file_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "a.yaml").write_text(
        "name: b\ndescription: x\nmemory_budget_mb: 1\nlatency_budget_ms: 1\n"
        "artifact: {format: tflite, precision: int8, io_dtype: int8}\nruntime: {engine: litert}\n"
    )
    monkeypatch.setenv(PROFILES_PATH_ENV, str(tmp_path))
    with pytest.raises(ProfileError, match="must match the file name"):
        load_profile("a")


def test_a_mistyped_profile_name_gets_a_suggestion() -> None:
    with pytest.raises(ProfileError, match=r"unknown profile 'rpi9' \(did you mean 'rpi5'\? known: coral"):
        load_profile("rpi9")
