"""The active model and its atomic replacement: requests hold a reference to the model they started on,
so a swap never interrupts them, and a replaced model is closed when its last request has finished.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from edgefleet.agent.backends import Backend, BackendError, TensorInfo, open_backend
from edgefleet.agent.log import EventLog
from edgefleet.contract.manifest import BundleManifest, TensorSpec
from edgefleet.contract.messages import ActiveModel, BackendInfo
from edgefleet.contract.profiles import DeviceProfile

log = EventLog("model")


def _bind(kind: str, specs: list[TensorSpec], actual: list[TensorInfo]) -> dict[str, str]:
    """Manifest tensor name -> runtime tensor name (by name, else by position), with dtype checks."""
    if len(specs) != len(actual):
        raise BackendError(f"the manifest declares {len(specs)} {kind}s, the model file has {len(actual)}")
    by_name = {t.name: t for t in actual}
    pairs = (
        [(s, by_name[s.name]) for s in specs]
        if all(s.name in by_name for s in specs)
        else list(zip(specs, actual, strict=True))
    )
    for spec, info in pairs:
        if spec.dtype != info.dtype:
            raise BackendError(
                f"{kind} '{spec.name}': the manifest says {spec.dtype}, the model file has {info.dtype}"
            )
    return {spec.name: info.name for spec, info in pairs}


class LoadedModel:
    """A bundle's model loaded in its runtime; `run` is serialized because runtimes are not thread-safe."""

    def __init__(self, bundle_id: str, manifest: BundleManifest, backend: Backend) -> None:
        self.bundle_id = bundle_id
        self.manifest = manifest
        self.backend = backend
        self._run_lock = threading.Lock()
        self._inputs = _bind("input", manifest.inputs, backend.inputs())
        self._outputs = _bind("output", manifest.outputs, backend.outputs())
        self.refs = 0
        self.retired = False
        self.closed = False

    @classmethod
    def load(
        cls, bundle_id: str, manifest: BundleManifest, bundle_dir: Path, profile: DeviceProfile
    ) -> LoadedModel:
        if manifest.format is not profile.artifact.format:
            raise BackendError(
                f"the bundle holds a {manifest.format.value} artifact; profile '{profile.name}' runs "
                f"{profile.artifact.format.value}"
            )
        backend = open_backend(
            manifest.format, bundle_dir / manifest.artifact, profile.runtime, manifest.precision
        )
        try:
            return cls(bundle_id, manifest, backend)
        except BaseException:
            backend.close()
            raise

    @property
    def version(self) -> str:
        return self.manifest.version

    @property
    def info(self) -> BackendInfo:
        return self.backend.info

    def describe(self) -> ActiveModel:
        m = self.manifest
        return ActiveModel(
            name=m.name,
            version=m.version,
            bundle_id=self.bundle_id,
            format=m.format.value,
            precision=m.precision.value,
        )

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Inputs and outputs keyed by manifest names, in the artifact's own form."""
        runtime_feeds = {self._inputs[name]: array for name, array in feeds.items()}
        with self._run_lock:
            results = self.backend.run(runtime_feeds)
        return {name: results[runtime_name] for name, runtime_name in self._outputs.items()}

    def warm_up(self, runs: int = 3) -> float:
        """Run zeros through the model (first runs allocate and plan); returns the last run's ms."""
        feeds = {
            spec.name: np.zeros([1 if d is None else d for d in spec.shape], dtype=np.dtype(spec.dtype))
            for spec in self.manifest.inputs
        }
        elapsed = 0.0
        for _ in range(runs):
            start = time.perf_counter()
            self.run(feeds)
            elapsed = (time.perf_counter() - start) * 1000
        return elapsed

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            with self._run_lock:
                self.backend.close()
            log.info("model_closed", version=self.version, bundle_id=self.bundle_id[:12])


class ModelSlot:
    """Holds the active LoadedModel. `use()` pins the current model for one request; `swap()` replaces it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._current: LoadedModel | None = None
        self.swaps = 0

    @property
    def current(self) -> LoadedModel | None:
        return self._current

    @contextmanager
    def use(self) -> Iterator[LoadedModel | None]:
        with self._lock:
            model = self._current
            if model is not None:
                model.refs += 1
        try:
            yield model
        finally:
            if model is not None:
                with self._lock:
                    model.refs -= 1
                    close_now = model.retired and model.refs == 0
                if close_now:
                    model.close()

    def swap(self, new: LoadedModel) -> LoadedModel | None:
        """Make `new` active; the previous model is closed now if idle, else by its last request."""
        with self._lock:
            old, self._current = self._current, new
            if old is None:
                return None
            self.swaps += 1
            old.retired = True
            close_now = old.refs == 0
        if close_now:
            old.close()
        return old

    def clear(self) -> None:
        """Close the active model at shutdown (after the request workers have stopped)."""
        with self._lock:
            old, self._current = self._current, None
        if old is not None:
            old.close()
