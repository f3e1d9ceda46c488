"""Converter test fixtures: a throwaway signing key and each reference conversion, done once per session."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from edgefleet.cli import main
from edgefleet.contract.bundle import extract_bundle
from edgefleet.contract.signing import create_key_pair, load_public_key
from edgefleet.converter.context import ConversionRequest
from edgefleet.converter.pipeline import ConversionResult, convert

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="session")
def key_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return create_key_pair(tmp_path_factory.mktemp("keys"))


@pytest.fixture(scope="session")
def eval_set(reference_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    with np.load(reference_dir / "eval.npz") as data:
        return data["image"], data["y"]


@pytest.fixture(scope="session")
def make_request(
    reference_dir: Path, key_pair: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> Callable[..., ConversionRequest]:
    out = tmp_path_factory.mktemp("bundles")

    def build(profile: str, model_name: str = "digits_cnn_v1", **overrides: object) -> ConversionRequest:
        fields: dict[str, object] = {
            "model": reference_dir / f"{model_name}.onnx",
            "profile": profile,
            "calib": reference_dir / "calib.npz",
            "eval": reference_dir / "eval.npz",
            "out": out,
            "name": model_name,
            "version": "1",
            "key": key_pair[0],
        }
        fields.update(overrides)
        return ConversionRequest.model_validate(fields)

    return build


@pytest.fixture(scope="session")
def torch_request(make_request: Callable[..., ConversionRequest]) -> Callable[..., ConversionRequest]:
    """torch_request(profile, name, **overrides): a request for the tiny digits CNN given as a torch module
    (pass torch_module=tiny_torch_models.digits_cnn() to convert), batch fixed to 1."""

    def build(profile: str, name: str, **overrides: object) -> ConversionRequest:
        fields: dict[str, object] = {
            "model": Path("digits_cnn"),
            "name": name,
            "input_shapes": {"image": (1, 1, 8, 8)},
        }
        return make_request(profile, **{**fields, **overrides})

    return build


@pytest.fixture(scope="session")
def converted(make_request: Callable[..., ConversionRequest]) -> Callable[[str], ConversionResult]:
    """converted(profile) -> the result of converting digits_cnn_v1 for it, computed once per session."""
    cache: dict[str, ConversionResult] = {}

    def get(profile: str) -> ConversionResult:
        if profile not in cache:
            cache[profile] = convert(make_request(profile))
        return cache[profile]

    return get


@pytest.fixture
def unpack_artifact(key_pair: tuple[Path, Path], tmp_path: Path) -> Callable[[ConversionResult], Path]:
    """unpack_artifact(result) -> the path of the result's artifact, its bundle verified with the session's
    public key and unpacked to tmp_path / "unpacked"."""

    def unpack(result: ConversionResult) -> Path:
        dest = tmp_path / "unpacked"
        manifest = extract_bundle(result.bundle_path, dest, load_public_key(key_pair[1]))
        return dest / manifest.artifact

    return unpack


@pytest.fixture(scope="session")
def convert_cli(reference_dir: Path, key_pair: tuple[Path, Path]) -> Callable[..., int]:
    """convert_cli(model, profile, out, *extra) -> the exit code of `edgefleet convert` run through the
    real entry point, with the reference calibration and evaluation sets (or calib=/eval_data= folders),
    the session's signing key and the extra flags last."""

    def run(
        model: Path | str,
        profile: str,
        out: Path,
        *extra: str,
        calib: Path | None = None,
        eval_data: Path | None = None,
    ) -> int:
        return main(
            [
                "convert",
                str(model),
                "--profile",
                profile,
                "--calib",
                str(calib or reference_dir / "calib.npz"),
                "--eval",
                str(eval_data or reference_dir / "eval.npz"),
                "--out",
                str(out),
                "--key",
                str(key_pair[0]),
                *extra,
            ]
        )

    return run


@pytest.fixture
def torch_test_setup(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """`tiny_torch_models:...` resolves to tests/converter/tiny_torch_models.py; torch runs on one thread:
    on two busy cores its spin-waiting OpenMP threads made these tiny trainings up to 20x slower."""
    import torch

    monkeypatch.syspath_prepend(str(HERE))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
