"""Write the one signed bundle file: the artifact plus its manifest, signed with the fleet key."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from edgefleet import __version__
from edgefleet.contract.bundle import write_bundle
from edgefleet.contract.manifest import BundleManifest
from edgefleet.converter.context import ConversionContext

HEALTH_SAMPLES = "health_samples.npz"
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


class Package:
    name = "package signed bundle"

    def run(self, ctx: ConversionContext) -> None:
        request, profile = ctx.request, ctx.profile
        artifact = ctx.need(ctx.artifact_path, "the artifact")
        member = f"model{artifact.suffix}"
        files = {member: artifact, **ctx.bundle_files}  # + alternatives, the Edge TPU-compiled model
        health_samples = write_health_samples(ctx)
        if health_samples is not None:
            files[HEALTH_SAMPLES] = health_samples
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
            alternatives=ctx.alternatives,
            target_checks=ctx.target_checks,
            report=ctx.report.model_dump(mode="json") if ctx.report is not None else None,
        )
        out = request.out / bundle_file_name(request.name, request.version, profile.name)
        write_bundle(out, manifest, files, ctx.need(ctx.private_key, "the signing key"))
        ctx.bundle_path = out
