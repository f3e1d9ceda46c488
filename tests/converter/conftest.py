"""Converter test fixtures: a throwaway signing key and each reference conversion, done once per session."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from edgefleet.contract.signing import create_key_pair
from edgefleet.converter.context import ConversionRequest
from edgefleet.converter.pipeline import ConversionResult, convert


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
def converted(make_request: Callable[..., ConversionRequest]) -> Callable[[str], ConversionResult]:
    """converted(profile) -> the result of converting digits_cnn_v1 for it, computed once per session."""
    cache: dict[str, ConversionResult] = {}

    def get(profile: str) -> ConversionResult:
        if profile not in cache:
            cache[profile] = convert(make_request(profile))
        return cache[profile]

    return get
