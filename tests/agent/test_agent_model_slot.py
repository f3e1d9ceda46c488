"""ModelSlot: a swap never interrupts a request in flight; the old model closes after its last request."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

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


class _Probe:
    """Wraps a backend: the first run holds the runtime until a second run enters it or `hold_s` passes,
    and the most runs ever inside the runtime at once is recorded."""

    def __init__(self, backend: Any, hold_s: float = 0.5) -> None:
        self.backend = backend
        self.hold_s = hold_s
        self.inside = 0
        self.most_inside = 0
        self.first_entered = threading.Event()
        self.second_entered = threading.Event()
        self._count = threading.Lock()

    def run(self, feeds: Any) -> Any:
        with self._count:
            self.inside += 1
            self.most_inside = max(self.most_inside, self.inside)
            first = not self.first_entered.is_set()
            (self.first_entered if first else self.second_entered).set()
        try:
            if first:  # without the model's lock the second run gets in here; with it, it waits
                self.second_entered.wait(self.hold_s)
            return self.backend.run(feeds)
        finally:
            with self._count:
                self.inside -= 1

    def __getattr__(self, name: str) -> Any:
        return getattr(self.backend, name)


def test_runs_are_serialized_across_threads(models: tuple[LoadedModel, LoadedModel]) -> None:
    v1, _ = models
    probe = _Probe(v1.backend)
    v1.backend = probe
    images = np.random.default_rng(0).normal(size=(8, 1, 8, 8)).astype(np.float32)
    results: list[np.ndarray] = []
    first = threading.Thread(target=lambda: results.append(v1.run({"image": images})["logits"]))
    first.start()
    assert probe.first_entered.wait(30)
    second = threading.Thread(target=lambda: results.append(v1.run({"image": images})["logits"]))
    second.start()
    first.join()
    second.join()
    assert probe.most_inside == 1  # the second run waited for the first to leave the runtime
    assert len(results) == 2
    np.testing.assert_allclose(results[0], results[1], rtol=1e-6)
