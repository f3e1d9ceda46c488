"""Every built-in profile's artifact, converted on the host, gives on the agent's serving path (bundle
store -> backend chosen by the profile -> request decoding/conversion) the accuracy the converter measured."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgefleet.agent.health import check_health
from edgefleet.agent.inference import InferenceService
from edgefleet.agent.model_slot import LoadedModel
from edgefleet.agent.store import BundleStore
from edgefleet.contract.bundle import sha256_file
from edgefleet.contract.messages import CONTENT_NPY
from edgefleet.contract.profiles import list_profiles, load_profile
from edgefleet.contract.signing import create_key_pair, load_public_key
from edgefleet.contract.tensors import encode_npy
from edgefleet.converter.context import ConversionRequest
from edgefleet.converter.pipeline import convert

PROFILES = [p.name for p in list_profiles() if not p.name.startswith("test")]


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return create_key_pair(tmp_path_factory.mktemp("keys"))


@pytest.mark.slow
@pytest.mark.parametrize("profile_name", PROFILES)
def test_agent_serves_the_accuracy_the_converter_measured(
    profile_name: str, keys: tuple[Path, Path], tmp_path: Path, reference_dir: Path
) -> None:
    result = convert(
        ConversionRequest(
            model=reference_dir / "digits_cnn_v1.onnx",
            profile=profile_name,
            calib=reference_dir / "calib.npz",
            eval=reference_dir / "eval.npz",
            out=tmp_path / "out",
            name="digits",
            version="1",
            key=keys[0],
        )
    )
    profile = load_profile(profile_name)
    store = BundleStore(tmp_path / "state", load_public_key(keys[1]), profile_name)
    bundle_id = sha256_file(result.bundle_path)
    installed = store.install(result.bundle_path, bundle_id)
    model = LoadedModel.load(bundle_id, installed.manifest, installed.path, profile)
    try:
        # the agent's runtime (its threads and delegates) gives the converter's reference numbers
        health = check_health(model, installed.path, profile.latency_budget_ms)
        reference = installed.manifest.health_reference
        assert reference is not None and health.reference_sqnr_db is not None
        assert health.reference_sqnr_db >= reference.min_sqnr_db
        evaluation = np.load(reference_dir / "eval.npz")
        predictions = [
            int(np.argmax(InferenceService.compute(model, encode_npy(x[None]), CONTENT_NPY)["logits"]))
            for x in evaluation["image"]
        ]
    finally:
        model.close()
    served = 100.0 * float(np.mean(np.array(predictions) == evaluation["y"]))
    assert result.metrics.accuracy is not None
    assert served == pytest.approx(result.metrics.accuracy.artifact, abs=0.3)
    assert result.metrics.accuracy.drop_points <= 1.0
