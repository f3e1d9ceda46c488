"""The health check a new model must pass before it is swapped in: run the sample inputs the bundle
carries (its manifest's `health_samples`, or zero inputs of the declared shape when it has none) on the
loaded, warmed-up model, off the request path, and require outputs of the declared dtype and shape, all
finite, with a median run time within the profile's latency budget; and, when the bundle carries the
converter's reference outputs (`health_reference`), outputs that close to them: a device whose kernels
compute wrong numbers must not serve them.
"""

from __future__ import annotations

import math
import statistics
import time
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgefleet.agent.model_slot import LoadedModel
from edgefleet.contract.errors import EdgefleetError, TensorError
from edgefleet.contract.manifest import BundleManifest, TensorSpec
from edgefleet.contract.tensors import from_artifact, read_npz, shape_matches, to_artifact

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
    reference_sqnr_db: float | None = None  # the worst output against the converter's reference, if any
    top1_agreed: tuple[int, int] | None = None  # (samples whose top-1 class was the reference's, samples)


def _fmt(shape: tuple[int, ...] | list[int | None]) -> str:
    return "(" + ",".join("?" if d is None else str(d) for d in shape) + ")"


def _zero_feeds(specs: list[TensorSpec]) -> Feeds:
    return {
        spec.name: np.zeros([1 if d is None else d for d in spec.shape], dtype=np.dtype(spec.dtype))
        for spec in specs
    }


def _read_npz_file(path: Path, where: str) -> dict[str, np.ndarray]:
    """An .npz of the bundle, read like a request's (header checks, one header parse at a time)."""
    try:
        return read_npz(path.read_bytes())
    except (OSError, ValueError, zipfile.BadZipFile, zlib.error) as exc:
        raise HealthCheckFailed(f"{where}: not a readable .npz file ({exc})") from exc


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
    arrays = _read_npz_file(bundle_dir / name, where)
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


def _load_reference(
    manifest: BundleManifest, specs: list[TensorSpec], bundle_dir: Path, samples: int
) -> dict[str, np.ndarray] | None:
    """The reference outputs, in the form of `specs` (the preferred artifact's outputs)."""
    reference = manifest.health_reference
    if reference is None or manifest.health_samples is None:
        return None
    where = f"health reference {reference.outputs}"
    if reference.outputs not in {entry.path for entry in manifest.files}:
        raise HealthCheckFailed(f"the manifest names {where}, but the bundle does not list it")
    arrays = _read_npz_file(bundle_dir / reference.outputs, where)
    for spec in specs:
        array = arrays.get(spec.name)
        if (
            array is None
            or array.ndim == 0
            or len(array) < samples
            or array.dtype != np.dtype(spec.dtype)
            or not shape_matches((1, *array.shape[1:]), spec.shape)
        ):
            wanted = f"{spec.dtype} {_fmt(spec.shape)} reference for {samples} samples of '{spec.name}'"
            raise HealthCheckFailed(f"{where}: no {wanted}")
    return arrays


def sqnr_db(reference: np.ndarray, actual: np.ndarray) -> float:
    signal = float(np.sum(np.square(reference, dtype=np.float64)))
    noise = float(np.sum(np.square(actual.astype(np.float64) - reference, dtype=np.float64)))
    if noise == 0.0:
        return math.inf
    return 10 * math.log10(signal / noise) if signal > 0 else -math.inf


def _is_classification(spec: TensorSpec) -> bool:
    """A float form [N, C] with C >= 2: logits or probabilities, whose top-1 class can be compared."""
    shape = spec.float_shape
    return len(shape) == 2 and shape[1] is not None and shape[1] >= 2


def _top1(spec: TensorSpec, array: np.ndarray) -> int:
    return int(np.argmax(from_artifact(spec, array, as_float=True).reshape(-1)))


def _compare(
    spec: TensorSpec,
    reference_spec: TensorSpec,
    output: np.ndarray,
    reference: np.ndarray,
    index: int,
    min_db: float,
) -> float:
    """The output against the reference, both brought to the float form (each with its own spec: an
    alternative model file may quantize differently from the preferred artifact the reference is from)."""
    got = from_artifact(spec, output, as_float=True)
    want = from_artifact(reference_spec, reference, as_float=True)
    value = sqnr_db(want, got)
    if value < min_db:
        raise HealthCheckFailed(
            f"sample {index}: output '{spec.name}' is not what the converter computed for this bundle: SQNR "
            f"{value:.1f} dB against its reference, at least {min_db:g} dB wanted (the runtime or its "
            "kernels on this device compute different numbers)"
        )
    return value


def check_health(model: LoadedModel, bundle_dir: Path, latency_budget_ms: float) -> HealthReport:
    """Raise HealthCheckFailed (with the reason) unless the model passes; the runs are not recorded in the
    model's request statistics."""
    manifest = model.manifest
    feeds = load_samples(manifest, bundle_dir)
    reference = _load_reference(manifest, model.reference_outputs, bundle_dir, len(feeds))
    times: list[float] = []
    worst = math.inf
    classified = [
        (spec, ref)
        for spec, ref in zip(manifest.outputs, model.reference_outputs, strict=True)
        if _is_classification(spec)
    ]
    agreed = 0
    for index, sample in enumerate(feeds):
        started = time.perf_counter()
        try:
            outputs = model.run(sample, record=False)
        except Exception as exc:  # runtimes raise their own types
            raise HealthCheckFailed(f"sample {index}: the model failed to run ({exc})") from exc
        times.append((time.perf_counter() - started) * 1000)
        _check_outputs(manifest.outputs, outputs, index)
        if reference is not None and manifest.health_reference is not None:
            min_db = manifest.health_reference.min_sqnr_db - model.reference_slack_db
            for spec, reference_spec in zip(manifest.outputs, model.reference_outputs, strict=True):
                want = reference[reference_spec.name][index : index + 1]
                try:
                    value = _compare(spec, reference_spec, outputs[spec.name], want, index, min_db)
                except HealthCheckFailed:
                    raise
                except (ValueError, OverflowError, TypeError) as exc:  # specs that do not fit the arrays
                    raise HealthCheckFailed(
                        f"sample {index}: output '{spec.name}' cannot be compared with the reference: the "
                        f"manifest's tensor description does not fit the model's output ({exc})"
                    ) from exc
                worst = min(worst, value)
            want_top1 = [_top1(ref, reference[ref.name][index : index + 1]) for _, ref in classified]
            agreed += [_top1(spec, outputs[spec.name]) for spec, _ in classified] == want_top1
    median = statistics.median(times)
    # The median, not the maximum: one scheduling hiccup on a busy device must not reject a good model;
    # the probation then watches the p95 under real traffic.
    if median > latency_budget_ms:
        raise HealthCheckFailed(
            f"median run time {median:.2f} ms over {len(times)} samples exceeds the profile's latency budget "
            f"of {latency_budget_ms:g} ms"
        )
    top1 = (agreed, len(feeds)) if reference is not None and classified else None
    wanted = manifest.health_reference.min_top1_agreement if manifest.health_reference is not None else None
    if top1 is not None and wanted is not None and agreed < wanted * len(feeds):
        raise HealthCheckFailed(
            f"the top-1 class was the converter's on {agreed} of {len(feeds)} health samples, at least "
            f"{wanted:.0%} wanted (the runtime or its kernels on this device compute different numbers)"
        )
    source = manifest.health_samples or "zero inputs"
    compared = None if reference is None else worst  # inf: bit-identical to the reference
    return HealthReport(
        source=source,
        samples=len(times),
        median_ms=median,
        max_ms=max(times),
        reference_sqnr_db=compared,
        top1_agreed=top1,
    )


def describe_reference(report: HealthReport) -> str:
    """For the `activated` event: how the outputs compared with the converter's reference."""
    if report.reference_sqnr_db is None:
        return ""
    top1 = (
        f", top-1 the same on {report.top1_agreed[0]} of {report.top1_agreed[1]}"
        if report.top1_agreed
        else ""
    )
    if math.isinf(report.reference_sqnr_db):
        return f"; outputs on {report.samples} health samples identical to the converter's{top1}"
    worst = f"{report.reference_sqnr_db:.1f} dB SQNR or better"
    return f"; outputs on {report.samples} health samples at {worst} vs the converter's{top1}"
