"""The active model and its atomic replacement: requests hold a reference to the model they started on,
so a swap never interrupts them, and a replaced model is closed when its last request has finished.
During a probation the replaced model can stay loaded as the standby, so a rollback is one more swap.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from edgefleet.agent.artifact_choice import candidates
from edgefleet.agent.backends import Backend, BackendError, TensorInfo, open_backend
from edgefleet.agent.log import EventLog
from edgefleet.contract.manifest import BundleManifest, TensorSpec
from edgefleet.contract.messages import ActiveModel, BackendInfo
from edgefleet.contract.profiles import DeviceProfile
from edgefleet.protocol.probation import RunStats

log = EventLog("model")
LATENCY_WINDOW = 1000  # run times kept per model for the probation's p95
_FLOAT_DTYPES = frozenset(("float16", "float32", "float64"))


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

    def __init__(
        self,
        bundle_id: str,
        manifest: BundleManifest,
        backend: Backend,
        reference_outputs: list[TensorSpec] | None = None,
    ) -> None:
        self.bundle_id = bundle_id
        self.manifest = manifest  # of the model file running (an alternative's, when one runs)
        self.backend = backend
        # the outputs the bundle's health reference is in the form of: the preferred artifact's
        self.reference_outputs = reference_outputs if reference_outputs is not None else manifest.outputs
        self.reference_slack_db = 0.0
        self.notes: list[str] = []  # how this file came to run instead of a more preferred one
        self._run_lock = threading.Lock()
        self._inputs = _bind("input", manifest.inputs, backend.inputs())
        self._outputs = _bind("output", manifest.outputs, backend.outputs())
        # Per-run work is kept to what is needed (it is on every request's path): no renaming when the
        # manifest and the runtime use the same tensor names, no NaN/inf scan of integer outputs.
        self._same_names = all(k == v for k, v in (*self._inputs.items(), *self._outputs.items()))
        self._float_outputs = tuple(s.name for s in manifest.outputs if s.dtype in _FLOAT_DTYPES)
        self.input_names = [spec.name for spec in manifest.inputs]
        self.refs = 0
        self.retired = False
        self.closed = False
        # counted under _run_lock, which every run holds anyway
        self._runs = 0
        self._failures = 0
        self._bad_outputs = 0
        self._latencies: deque[float] = deque(maxlen=LATENCY_WINDOW)
        # True when the runtime takes one sample at a time while the clients' form allows any batch: larger
        # batches are then run sample by sample instead of failing in the runtime (and counting against the
        # model). Known up front when the artifact is fixed to batch 1 under a float form with a free batch
        # (what the converters make for LiteRT); found by warm_up's probe when the manifest declares a
        # dynamic batch the runtime cannot take (XNNPACK on some CPUs).
        self.one_at_a_time = all(
            len(spec.shape) > 0
            and spec.shape[0] == 1
            and len(spec.float_shape) > 0
            and spec.float_shape[0] is None
            for spec in manifest.inputs
        )
        self._batched = all(len(spec.shape) > 0 and spec.shape[0] is None for spec in manifest.inputs)
        self._probed = False

    @classmethod
    def load(
        cls, bundle_id: str, manifest: BundleManifest, bundle_dir: Path, profile: DeviceProfile
    ) -> LoadedModel:
        """The bundle's most preferred model file that loads here (artifact_choice.py): an alternative
        compiled for the profile's delegate, the preferred artifact, then the alternatives the profile
        lists. Falling back is reported in `info.fallbacks`; none loading is a BackendError."""
        choices = candidates(manifest, profile)
        if not choices:
            raise BackendError(
                f"the bundle holds a {manifest.format.value} artifact; profile '{profile.name}' runs "
                f"{profile.artifact.format.value}"
            )
        failed: list[str] = []
        for choice in choices:
            chosen = choice.manifest
            try:
                backend = open_backend(
                    chosen.format,
                    bundle_dir / chosen.artifact,
                    choice.runtime,
                    chosen.precision,
                    sparse_2_4=chosen.weight_sparsity == "2:4",
                )
                try:
                    model = cls(bundle_id, chosen, backend, reference_outputs=manifest.outputs)
                except BaseException:
                    backend.close()
                    raise
            except BackendError as exc:
                failed.append(f"{choice.label} could not load ({exc})")
                continue
            model.reference_slack_db = choice.reference_slack_db
            if failed:
                model.notes = [*failed, f"running {choice.label} ({chosen.artifact}) instead"]
            return model
        raise BackendError("; ".join(failed))

    @property
    def version(self) -> str:
        return self.manifest.version

    @property
    def info(self) -> BackendInfo:
        info = self.backend.info
        if not self.notes:
            return info
        return info.model_copy(update={"fallbacks": [*self.notes, *info.fallbacks]})

    def describe(self) -> ActiveModel:
        m = self.manifest
        return ActiveModel(
            name=m.name,
            version=m.version,
            bundle_id=self.bundle_id,
            format=m.format.value,
            precision=m.precision.value,
            input_shapes={spec.name: list(spec.float_shape) for spec in m.inputs},
        )

    def run(self, feeds: Mapping[str, np.ndarray], record: bool = True) -> dict[str, np.ndarray]:
        """Inputs and outputs keyed by manifest names, in the artifact's own form.

        `record=False` (warm-up, health check) keeps the run out of the statistics the probation judges.
        """
        if self.one_at_a_time:
            batch = len(next(iter(feeds.values())))
            if batch > 1 and all(len(array) == batch for array in feeds.values()):
                return self._run_one_by_one(feeds, batch, record)
        same_names = self._same_names
        runtime_feeds = feeds if same_names else {self._inputs[name]: array for name, array in feeds.items()}
        with self._run_lock:
            started = time.perf_counter()
            try:
                results = self.backend.run(runtime_feeds)
            except BaseException:
                if record:
                    self._runs += 1
                    self._failures += 1
                raise
            elapsed_ms = (time.perf_counter() - started) * 1000
            outputs = (
                results
                if same_names
                else {name: results[runtime_name] for name, runtime_name in self._outputs.items()}
            )
            if record:
                self._runs += 1
                self._latencies.append(elapsed_ms)
                if self._float_outputs and not all_finite({n: outputs[n] for n in self._float_outputs}):
                    self._bad_outputs += 1
        return outputs

    def _run_one_by_one(
        self, feeds: Mapping[str, np.ndarray], batch: int, record: bool
    ) -> dict[str, np.ndarray]:
        parts = [self.run({k: v[i : i + 1] for k, v in feeds.items()}, record) for i in range(batch)]
        return {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}

    def _probe_batch(self) -> None:
        """A manifest may declare a dynamic batch that the runtime cannot take (XNNPACK fails to reshape on
        some CPUs; a model file may be fixed to batch 1). Try batch 2 once, off the books: if it fails,
        batches are run one sample at a time, so a client's batch never counts as a model failure."""
        if not self._batched or self._probed:
            return
        self._probed = True
        try:
            self.run(self._zeros(2), record=False)
        except Exception as exc:
            self.one_at_a_time = True
            reason = " ".join(str(exc).split())[:200] or type(exc).__name__
            log.info("batch_one_at_a_time", version=self.version, reason=reason)
            self.run(self._zeros(1), record=False)  # back to the shapes that work

    def _zeros(self, batch: int) -> dict[str, np.ndarray]:
        feeds = {}
        for spec in self.manifest.inputs:
            shape = [1 if d is None else d for d in spec.shape]
            if self._batched:
                shape[0] = batch
            feeds[spec.name] = np.zeros(shape, dtype=np.dtype(spec.dtype))
        return feeds

    def stats(self) -> RunStats:
        with self._run_lock:
            runs, failures, bad = self._runs, self._failures, self._bad_outputs
            samples = np.fromiter(self._latencies, dtype=np.float64)
        p95 = round(float(np.percentile(samples, 95)), 3) if samples.size else None
        return RunStats(runs=runs, failures=failures, bad_outputs=bad, p95_ms=p95)

    def warm_up(self, runs: int = 3) -> float:
        """Run zeros through the model (first runs allocate and plan) and find out whether the runtime
        takes a batch; returns the last batch-1 run's ms."""
        try:
            feeds = self._zeros(1)
        except (ValueError, MemoryError) as exc:  # numpy: shapes the manifest declares cannot be made
            raise BackendError(f"the manifest's input shapes cannot be allocated ({exc})") from exc
        try:
            self._probe_batch()
            elapsed = 0.0
            for _ in range(runs):
                start = time.perf_counter()
                self.run(feeds, record=False)
                elapsed = (time.perf_counter() - start) * 1000
        except Exception as exc:  # the runtime's own types, for shapes its model does not take
            shapes = ", ".join(
                f"{s.name} {[1 if d is None else d for d in s.shape]}" for s in self.manifest.inputs
            )
            raise BackendError(
                f"the warm-up run on zero inputs of the declared shapes ({shapes}) failed: {exc}"
            ) from exc
        return elapsed

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            with self._run_lock:
                self.backend.close()
            log.info("model_closed", version=self.version, bundle_id=self.bundle_id[:12])


class ModelSlot:
    """Holds the active LoadedModel. `use()` pins the current model for one request; `swap()` replaces it.

    `swap(new, keep_previous=True)` keeps the replaced model loaded as the standby (not serving) until
    `release_standby()` or `swap_back()`; only one standby exists at a time.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._current: LoadedModel | None = None
        self._standby: LoadedModel | None = None
        self.swaps = 0
        self.rollbacks = 0

    @property
    def current(self) -> LoadedModel | None:
        return self._current

    @property
    def standby(self) -> LoadedModel | None:
        return self._standby

    def pin(self) -> LoadedModel | None:
        """The active model, held for one request until `unpin(model)`: a swap cannot close it before."""
        with self._lock:
            model = self._current
            if model is not None:
                model.refs += 1
        return model

    def unpin(self, model: LoadedModel | None) -> None:
        """Release a model `pin` returned; a retired model is closed by its last request."""
        if model is None:
            return
        with self._lock:
            model.refs -= 1
            close_now = model.retired and model.refs == 0
        if close_now:
            model.close()

    @contextmanager
    def use(self) -> Iterator[LoadedModel | None]:
        """`pin` and `unpin` around a block."""
        model = self.pin()
        try:
            yield model
        finally:
            self.unpin(model)

    def _retire_locked(self, model: LoadedModel) -> bool:
        """Mark `model` retired; True when the caller must close it now (no request holds it)."""
        model.retired = True
        return model.refs == 0

    def swap(
        self, new: LoadedModel, *, keep_previous: bool = False, rollback: bool = False
    ) -> LoadedModel | None:
        """Make `new` active; the previous model becomes the standby (`keep_previous`) or is closed now if
        idle, else by its last request. `rollback` counts the swap as a rollback too."""
        to_close: list[LoadedModel] = []
        with self._lock:
            old, self._current = self._current, new
            standby = self._standby
            if standby is not None and standby is not new and self._retire_locked(standby):
                to_close.append(standby)
            self._standby = None
            if rollback:  # also at start, when the rollback target is the first model loaded
                self.rollbacks += 1
            if old is not None:
                self.swaps += 1
                if keep_previous:
                    self._standby = old
                elif self._retire_locked(old):
                    to_close.append(old)
        for model in to_close:
            model.close()
        return old

    def swap_back(self) -> LoadedModel | None:
        """Roll back to the standby (counted as a rollback); returns it, or None when there is none."""
        standby = self._standby
        if standby is None:
            return None
        self.swap(standby, rollback=True)
        return standby

    def release_standby(self) -> None:
        """Retire the standby: closed now if idle, else after its last request."""
        with self._lock:
            standby, self._standby = self._standby, None
            close_now = standby is not None and self._retire_locked(standby)
        if close_now and standby is not None:
            standby.close()

    def clear(self) -> None:
        """Close the active model and the standby at shutdown (after the request workers have stopped)."""
        with self._lock:
            models = [m for m in (self._current, self._standby) if m is not None]
            self._current = self._standby = None
        for model in models:
            model.close()


def all_finite(outputs: Mapping[str, np.ndarray]) -> bool:
    """False when a floating-point output holds NaN or inf (integer outputs are always finite)."""
    return all(
        bool(np.isfinite(array).all()) for array in outputs.values() if array.dtype.name in _FLOAT_DTYPES
    )
