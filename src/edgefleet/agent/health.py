"""The health check a new model must pass before it is swapped in: run the sample inputs the bundle
carries (its manifest's `health_samples`, or zero inputs of the declared shape when it has none) on the
loaded, warmed-up model, off the request path, and require outputs of the declared dtype and shape, all
finite, with a median run time within the profile's latency budget.
"""

from __future__ import annotations

import statistics
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgefleet.agent.model_slot import LoadedModel
from edgefleet.contract.errors import EdgefleetError, TensorError
from edgefleet.contract.manifest import BundleManifest, TensorSpec
from edgefleet.contract.tensors import shape_matches, to_artifact

MAX_SAMPLES = 16  # enough to catch a broken model; few enough to keep activation quick
ZERO_INPUT_RUNS = 3
_FLOAT_DTYPES = frozenset(("float16", "float32", "float64"))

Feeds = dict[str, np.ndarray]


class HealthCheckFailed(EdgefleetError):
    """The new model did not pass its health check; the running model keeps serving."""


@dataclass(frozen=True)
class HealthReport:
    source: str  # the samples file inside the bundle, or "zero inputs"
    samples: int
    median_ms: float
    max_ms: float


def _fmt(shape: tuple[int, ...] | list[int | None]) -> str:
    return "(" + ",".join("?" if d is None else str(d) for d in shape) + ")"


def _zero_feeds(specs: list[TensorSpec]) -> Feeds:
    return {
        spec.name: np.zeros([1 if d is None else d for d in spec.shape], dtype=np.dtype(spec.dtype))
        for spec in specs
    }


def load_samples(manifest: BundleManifest, bundle_dir: Path) -> list[Feeds]:
    """The bundle's health samples in the artifact's form, one feed dict per sample (at most MAX_SAMPLES)."""
    name = manifest.health_samples
    if name is None:
        return [_zero_feeds(manifest.inputs)] * ZERO_INPUT_RUNS
    if name not in {entry.path for entry in manifest.files}:
        raise HealthCheckFailed(
            f"the manifest names health samples {name!r}, but the bundle does not list it"
        )
    where = f"health samples {name}"
    try:
        with np.load(bundle_dir / name, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise HealthCheckFailed(f"{where}: not a readable .npz file ({exc})") from exc
    wanted = [spec.name for spec in manifest.inputs]
    if sorted(arrays) != sorted(wanted):
        raise HealthCheckFailed(f"{where}: arrays {sorted(arrays)} do not match the model inputs {wanted}")
    counts = {arrays[n].shape[0] if arrays[n].ndim else 0 for n in wanted}
    if len(counts) != 1 or 0 in counts:
        raise HealthCheckFailed(f"{where}: every input needs the same number (>= 1) of samples on axis 0")
    feeds: list[Feeds] = []
    for index in range(min(counts.pop(), MAX_SAMPLES)):
        sample: Feeds = {}
        for spec in manifest.inputs:
            try:
                sample[spec.name], _ = to_artifact(spec, arrays[spec.name][index : index + 1])
            except TensorError as exc:
                raise HealthCheckFailed(f"{where}: sample {index}: {exc}") from exc
        feeds.append(sample)
    return feeds


def _check_outputs(specs: list[TensorSpec], outputs: dict[str, np.ndarray], index: int) -> None:
    for spec in specs:
        array = outputs[spec.name]
        if array.dtype != np.dtype(spec.dtype):
            raise HealthCheckFailed(
                f"sample {index}: output '{spec.name}' is {array.dtype}, the manifest declares {spec.dtype}"
            )
        if not shape_matches(array.shape, spec.shape):
            raise HealthCheckFailed(
                f"sample {index}: output '{spec.name}' has shape {_fmt(array.shape)}, the manifest declares "
                f"{_fmt(spec.shape)}"
            )
        if spec.dtype in _FLOAT_DTYPES and not np.isfinite(array).all():
            bad = int(array.size - np.count_nonzero(np.isfinite(array)))
            raise HealthCheckFailed(f"sample {index}: output '{spec.name}' has {bad} NaN/inf values")


def check_health(model: LoadedModel, bundle_dir: Path, latency_budget_ms: float) -> HealthReport:
    """Raise HealthCheckFailed (with the reason) unless the model passes; the runs are not recorded in the
    model's request statistics."""
    manifest = model.manifest
    feeds = load_samples(manifest, bundle_dir)
    times: list[float] = []
    for index, sample in enumerate(feeds):
        started = time.perf_counter()
        try:
            outputs = model.run(sample, record=False)
        except Exception as exc:  # runtimes raise their own types
            raise HealthCheckFailed(f"sample {index}: the model failed to run ({exc})") from exc
        times.append((time.perf_counter() - started) * 1000)
        _check_outputs(manifest.outputs, outputs, index)
    median = statistics.median(times)
    # The median, not the maximum: one scheduling hiccup on a busy device must not reject a good model;
    # the probation then watches the p95 under real traffic.
    if median > latency_budget_ms:
        raise HealthCheckFailed(
            f"median run time {median:.2f} ms over {len(times)} samples exceeds the profile's latency budget "
            f"of {latency_budget_ms:g} ms"
        )
    source = manifest.health_samples or "zero inputs"
    return HealthReport(source=source, samples=len(times), median_ms=median, max_ms=max(times))
