"""Which model file of a bundle the agent runs. The manifest's `artifact` is the profile's preferred one;
its `alternatives` are other files for the same target. In order of preference:

1. an alternative compiled for a delegate the profile asks for (the Edge TPU-compiled TFLite on a Coral:
   the plain TFLite would run on the CPU even with the delegate loaded); it fails to load where the
   delegate does not (no Edge TPU attached), and the next one is tried;
2. the preferred artifact, with the profile's runtime;
3. the alternatives the profile lists (`alternatives: [onnx-int8]` on the Pi), when the preferred one
   cannot load (a missing or broken runtime), each with its own engine on the CPU.

Each candidate is presented as a manifest of its own (artifact, format, precision, tensors), so the rest
of the agent serves it like any bundle.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgefleet.contract.manifest import ArtifactAlternative, BundleManifest
from edgefleet.contract.profiles import ArtifactFormat, DeviceProfile, Engine, RuntimeSpec

# An alternative approximates the same float model as the preferred artifact; against the preferred
# artifact's reference outputs it may sit this much lower than the preferred artifact itself would.
ALTERNATIVE_REFERENCE_SLACK_DB = 6.0


@dataclass(frozen=True)
class Candidate:
    label: str  # for logs and the fallback note
    manifest: BundleManifest  # the bundle as seen by the runtime running this file
    runtime: RuntimeSpec
    reference_slack_db: float  # how far below the reference's min_sqnr_db this file may be


def _cpu_runtime(fmt: ArtifactFormat, profile: DeviceProfile) -> RuntimeSpec:
    if fmt is profile.artifact.format:
        return profile.runtime
    if fmt is ArtifactFormat.ONNX:
        return RuntimeSpec(
            engine=Engine.ONNXRUNTIME, threads=profile.runtime.threads, providers=("CPUExecutionProvider",)
        )
    return RuntimeSpec(engine=Engine.LITERT, threads=profile.runtime.threads, delegates=("xnnpack",))


def _as_manifest(manifest: BundleManifest, alternative: ArtifactAlternative) -> BundleManifest:
    return manifest.model_copy(
        update={
            "artifact": alternative.path,
            "format": alternative.format,
            "precision": alternative.precision,
            "inputs": alternative.inputs,
            "outputs": alternative.outputs,
            "alternatives": [],
        }
    )


def _slack(manifest: BundleManifest, alternative: ArtifactAlternative) -> float:
    same_kind = (alternative.format, alternative.precision) == (manifest.format, manifest.precision)
    return 0.0 if same_kind else ALTERNATIVE_REFERENCE_SLACK_DB


def candidates(manifest: BundleManifest, profile: DeviceProfile) -> list[Candidate]:
    """The bundle's model files this profile may run, most preferred first (empty: none of them)."""
    listed = {alt.path: alt for alt in manifest.alternatives if alt.path in {f.path for f in manifest.files}}
    accelerated = [
        Candidate(
            f"the {alt.kind} alternative",
            _as_manifest(manifest, alt),
            profile.runtime,
            _slack(manifest, alt),
        )
        for alt in listed.values()
        if alt.requires_delegate is not None
        and alt.requires_delegate in profile.runtime.delegates
        and alt.format is profile.artifact.format
    ]
    preferred = (
        [Candidate(f"the preferred {manifest.format.value} artifact", manifest, profile.runtime, 0.0)]
        if manifest.format is profile.artifact.format
        else []
    )
    fallbacks = [
        Candidate(
            f"the {alt.kind} alternative",
            _as_manifest(manifest, alt),
            _cpu_runtime(alt.format, profile),
            _slack(manifest, alt),
        )
        for kind in profile.alternatives
        for alt in listed.values()
        if alt.kind == kind and alt.requires_delegate is None
    ]
    return [*accelerated, *preferred, *fallbacks]
