"""ModelSlot: a swap never interrupts a request in flight; the old model closes after its last request."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from agent_helpers import TEST_PROFILE, Keys, file_sha256

from edgefleet.agent.model_slot import LoadedModel, ModelSlot
from edgefleet.agent.store import BundleStore
from edgefleet.contract.profiles import load_profile
from edgefleet.contract.signing import load_public_key


@pytest.fixture
def models(tmp_path: Path, keys: Keys, bundles: dict[str, Path]) -> tuple[LoadedModel, LoadedModel]:
    store = BundleStore(tmp_path / "state", load_public_key(keys.public), TEST_PROFILE)
    profile = load_profile(TEST_PROFILE)
    loaded = []
    for name in ("v1", "v2"):
        installed = store.install(bundles[name], file_sha256(bundles[name]))
        loaded.append(LoadedModel.load(installed.bundle_id, installed.manifest, installed.path, profile))
    return loaded[0], loaded[1]


def test_swap_waits_for_requests_in_flight(models: tuple[LoadedModel, LoadedModel]) -> None:
    v1, v2 = models
    slot = ModelSlot()
    assert slot.swap(v1) is None and slot.swaps == 0
    feeds = {"image": np.zeros((1, 1, 8, 8), np.float32)}
    with slot.use() as pinned:
        assert pinned is v1
        assert slot.swap(v2) is v1 and slot.swaps == 1
        assert slot.current is v2 and not v1.closed  # still serving the request that pinned it
        assert pinned.run(feeds)["logits"].shape == (1, 10)
        with slot.use() as fresh:
            assert fresh is v2
    assert v1.closed and not v2.closed
    slot.clear()
    assert v2.closed and slot.current is None


def test_runs_are_serialized_across_threads(models: tuple[LoadedModel, LoadedModel]) -> None:
    v1, _ = models
    images = np.random.default_rng(0).normal(size=(8, 1, 8, 8)).astype(np.float32)
    expected = v1.run({"image": images})["logits"]
    errors: list[BaseException] = []

    def hammer() -> None:
        try:
            for _ in range(50):
                np.testing.assert_allclose(v1.run({"image": images})["logits"], expected, rtol=1e-6)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
