"""Build the extra artifacts a profile asks for (`alternatives: [onnx-int8]`), each described and measured
like the preferred one, for the bundle to carry next to it; `manifest.artifact` stays the preferred one.
"""

from __future__ import annotations

import dataclasses

from edgefleet.contract.errors import EdgefleetError
from edgefleet.contract.manifest import ArtifactAlternative
from edgefleet.contract.profiles import AlternativeKind, ArtifactFormat, DeviceProfile, Precision
from edgefleet.converter.context import ConversionContext, Step
from edgefleet.converter.errors import first_line

KIND_SPECS: dict[str, tuple[Precision, str]] = {
    "onnx-int8": (Precision.INT8, "float32"),
    "onnx-fp16": (Precision.FP16, "float32"),
}


def alternative_profile(profile: DeviceProfile, kind: AlternativeKind) -> DeviceProfile:
    """The profile as if it wanted `kind`: an ONNX artifact for onnxruntime's CPU provider (asymmetric
    uint8 activations for INT8, the fastest form on CPUs), with the profile's batch."""
    precision, io_dtype = KIND_SPECS[kind]
    fields = profile.model_dump()
    fields["artifact"] = {
        "format": ArtifactFormat.ONNX,
        "precision": precision,
        "io_dtype": io_dtype,
        "quant_flavor": "ort",
        "allow_float_fallback": True,  # onnxruntime runs the layers mixed precision leaves in float
        "batch": profile.artifact.batch,
    }
    fields["runtime"] = {"engine": "onnxruntime", "threads": profile.runtime.threads}
    fields["alternatives"] = ()
    return DeviceProfile.model_validate(fields)


def member_name(kind: str) -> str:
    return f"model-{kind}.onnx"


class BuildAlternatives:
    """For each kind: the artifact steps, DescribeArtifact and Evaluate on a copy of the context; a kind
    that cannot be built is reported and skipped (the preferred artifact is what the target needs)."""

    name = "build alternative artifacts"

    def __init__(self, kinds: tuple[AlternativeKind, ...]) -> None:
        self.kinds = kinds

    def run(self, ctx: ConversionContext) -> None:
        from edgefleet.converter.pipeline import artifact_steps
        from edgefleet.converter.steps.describe import DescribeArtifact
        from edgefleet.converter.steps.evaluate import Evaluate
        from edgefleet.converter.steps.mixed_precision import EnforceBudget

        for kind in self.kinds:
            profile = alternative_profile(ctx.profile, kind)
            work_dir = ctx.work_dir / kind
            work_dir.mkdir()
            sub = dataclasses.replace(
                ctx,
                profile=profile,
                work_dir=work_dir,
                keras_model=None,
                artifact_path=None,
                inputs=[],
                outputs=[],
                metrics=None,
                notes=[],
                target_checks=None,
                alternatives=[],
                bundle_files={},
            )
            artifact = artifact_steps(profile)
            # The accuracy budget binds alternatives too, judged without a mixed-precision search: an
            # optional artifact is not worth doubling a long conversion for; one that misses is left out.
            budget = EnforceBudget(quantizer=artifact[-1], describe=DescribeArtifact(), search=False)
            steps: list[Step] = [*artifact, DescribeArtifact(), budget, Evaluate()]
            try:
                for step in steps:
                    step.run(sub)
            except Exception as exc:  # any failure: the preferred artifact is still good
                first = first_line(exc, "")
                what = first if isinstance(exc, EdgefleetError) else f"{type(exc).__name__}: {first}"
                ctx.notes.append(
                    f"WARNING: {kind} alternative not built ({what[:300]}); the bundle carries the preferred "
                    "artifact only"
                )
                continue
            if sub.budget is not None and not sub.budget.met:
                ctx.notes.append(
                    f"{kind} alternative left out: {sub.budget.message}; the bundle carries the preferred "
                    "artifact only"
                )
                continue
            member = member_name(kind)
            ctx.bundle_files[member] = sub.need(sub.artifact_path, "the alternative artifact")
            ctx.alternatives.append(
                ArtifactAlternative(
                    kind=kind,
                    path=member,
                    format=profile.artifact.format,
                    precision=profile.artifact.precision,
                    inputs=sub.inputs,
                    outputs=sub.outputs,
                    metrics=sub.need(sub.metrics, "the alternative's metrics"),
                )
            )
            ctx.notes.extend(f"{kind} alternative: {note}" for note in sub.notes)
