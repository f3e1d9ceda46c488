"""Write the one signed bundle file: the artifact plus its manifest, signed with the fleet key."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from edgefleet import __version__
from edgefleet.contract.bundle import write_bundle
from edgefleet.contract.manifest import AccuracyMetrics, BundleManifest, HealthReference
from edgefleet.contract.tensors import to_artifact
from edgefleet.converter.context import ConversionContext
from edgefleet.converter.steps.evaluate import accuracy_scorer

HEALTH_SAMPLES = "health_samples.npz"
HEALTH_REFERENCE = "health_reference.npz"
# A device's outputs on the health samples must be about as close to the host's as the artifact is to fp32
# (the headline output's measured SQNR, less a margin), never required closer than 30 dB (int8 kernels
# differ by a rounding step between CPUs) nor allowed further than 10 dB (wrong numbers, not rounding).
REFERENCE_MARGIN_DB, REFERENCE_FLOOR_DB, REFERENCE_CEILING_DB, REFERENCE_DEFAULT_DB = 3.0, 10.0, 30.0, 20.0
TOP1_MARGIN, TOP1_FLOOR = 0.15, 0.5
HEALTH_SAMPLES_COUNT = 8
HEALTH_SAMPLES_MAX_BYTES = 1024**2  # big inputs (e.g. 224x224 images) ship fewer samples, at least one


def bundle_file_name(name: str, version: str, profile: str) -> str:
    return f"{name}-{version}-{profile}.efb"


def write_health_samples(ctx: ConversionContext) -> Path | None:
    """The first calibration samples in the float form, for the agent's health check before a swap."""
    if ctx.calib is None:
        return None
    inputs = ctx.calib.inputs
    per_sample = sum(array[:1].nbytes for array in inputs.values())
    count = max(1, min(HEALTH_SAMPLES_COUNT, HEALTH_SAMPLES_MAX_BYTES // max(per_sample, 1)))
    path = ctx.work_dir / HEALTH_SAMPLES
    np.savez(path, **{name: np.ascontiguousarray(array[:count]) for name, array in inputs.items()})  # type: ignore[arg-type]
    return path


def write_health_reference(ctx: ConversionContext, samples_path: Path) -> HealthReference:
    """The artifact's outputs on the health samples, computed by the runtime that scored it on the host."""
    artifact = ctx.need(ctx.artifact_path, "the artifact")
    runner = accuracy_scorer(ctx, artifact)
    with np.load(samples_path, allow_pickle=False) as archive:
        samples = {name: archive[name] for name in archive.files}
    count = len(samples[ctx.inputs[0].name])
    outputs: dict[str, list[np.ndarray]] = {spec.name: [] for spec in ctx.outputs}
    for index in range(count):  # one at a time: as the agent's health check runs them
        feeds = [to_artifact(spec, samples[spec.name][index : index + 1])[0] for spec in ctx.inputs]
        for spec, result in zip(ctx.outputs, runner.run(feeds), strict=True):
            outputs[spec.name].append(result)
    path = ctx.work_dir / HEALTH_REFERENCE
    np.savez(path, **{name: np.concatenate(parts) for name, parts in outputs.items()})  # type: ignore[arg-type]
    accuracy = ctx.metrics.accuracy if ctx.metrics is not None else None
    measured = accuracy.sqnr_db if accuracy is not None else None
    wanted = REFERENCE_DEFAULT_DB if measured is None else measured - REFERENCE_MARGIN_DB
    min_sqnr = min(REFERENCE_CEILING_DB, max(REFERENCE_FLOOR_DB, wanted))
    return HealthReference(
        outputs=HEALTH_REFERENCE,
        min_sqnr_db=round(min_sqnr, 1),
        host_runtime=runner.label,
        min_top1_agreement=_min_top1_agreement(accuracy),
    )


def _min_top1_agreement(accuracy: AccuracyMetrics | None) -> float | None:
    """From the measured top-1 agreement of the artifact with fp32: a device running the same artifact
    must agree with the host's outputs at least about as well (less a margin: the health samples are few)."""
    if (
        accuracy is None
        or accuracy.metric != "top1_agreement"
        or accuracy.measure not in (None, "top1_agreement")
    ):
        return None
    return round(min(1.0, max(TOP1_FLOOR, accuracy.artifact / 100 - TOP1_MARGIN)), 3)


class Package:
    name = "package signed bundle"

    def run(self, ctx: ConversionContext) -> None:
        request, profile = ctx.request, ctx.profile
        artifact = ctx.need(ctx.artifact_path, "the artifact")
        member = f"model{artifact.suffix}"
        files = {member: artifact, **ctx.bundle_files}  # + alternatives, the Edge TPU-compiled model
        health_samples = write_health_samples(ctx)
        reference = None
        if health_samples is not None:
            files[HEALTH_SAMPLES] = health_samples
            reference = write_health_reference(ctx, health_samples)
            files[HEALTH_REFERENCE] = ctx.work_dir / HEALTH_REFERENCE
        manifest = BundleManifest(
            name=request.name,
            version=request.version,
            profile=profile.name,
            format=profile.artifact.format,
            precision=profile.artifact.precision,
            artifact=member,
            inputs=ctx.inputs,
            outputs=ctx.outputs,
            files=[],
            metrics=ctx.need(ctx.metrics, "the metrics"),
            converter_version=__version__,
            created_at=datetime.now(timezone.utc),
            health_samples=HEALTH_SAMPLES if health_samples is not None else None,
            health_reference=reference,
            alternatives=ctx.alternatives,
            target_checks=ctx.target_checks,
            weight_sparsity="2:4" if ctx.weight_sparsity == "2:4" else None,
            report=ctx.report.model_dump(mode="json") if ctx.report is not None else None,
        )
        out = request.out / bundle_file_name(request.name, request.version, profile.name)
        write_bundle(out, manifest, files, ctx.need(ctx.private_key, "the signing key"))
        ctx.bundle_path = out
