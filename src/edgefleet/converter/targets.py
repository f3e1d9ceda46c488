"""Per-target choices the pipeline asks about: the precision a request may override (and the reason a target
refuses one), the checks a target's runtime needs, and the alternative artifacts its profile asks for.
"""

from __future__ import annotations

from edgefleet.contract.profiles import ArtifactFormat, DeviceProfile, Precision
from edgefleet.converter.context import ConversionRequest, Step
from edgefleet.converter.errors import UnsupportedTargetError

TENSORRT_PROVIDER = "TensorrtExecutionProvider"


def allowed_precisions(profile: DeviceProfile) -> list[Precision]:
    """What `--precision` may choose: TFLite artifacts are full-INT8 only; ONNX artifacts are INT8 QDQ, FP16
    or FP32, minus what the target refuses (its profile says why)."""
    if profile.artifact.format is ArtifactFormat.TFLITE:
        return [Precision.INT8]
    return [p for p in Precision if p not in profile.refused_precisions]


def with_precision(profile: DeviceProfile, request: ConversionRequest) -> DeviceProfile:
    """`profile` with the request's precision override applied; UnsupportedTargetError says why not."""
    wanted = request.precision
    if wanted is None or wanted is profile.artifact.precision:
        return profile
    allowed = ", ".join(p.value for p in allowed_precisions(profile))
    if wanted in profile.refused_precisions:
        raise UnsupportedTargetError(
            f"--precision {wanted.value}: profile '{profile.name}' refuses it: "
            f"{profile.refused_precisions[wanted]} (allowed: {allowed})"
        )
    if wanted not in allowed_precisions(profile):
        raise UnsupportedTargetError(
            f"--precision {wanted.value}: profile '{profile.name}' builds {profile.artifact.format.value} "
            f"artifacts, which are {allowed} only; choose another profile for {wanted.value}"
        )
    fields = profile.model_dump()
    fields["artifact"]["precision"] = wanted
    # INT8 for a TensorRT target takes TensorRT's Q/DQ form; other precisions have no flavour.
    trt = TENSORRT_PROVIDER in profile.runtime.providers
    fields["artifact"]["quant_flavor"] = "tensorrt" if wanted is Precision.INT8 and trt else "ort"
    return DeviceProfile.model_validate(fields)


def target_check_steps(profile: DeviceProfile) -> list[Step]:
    """The checks of what the target's runtime can run: Edge TPU (static check + compiler), XNNPACK
    coverage, TensorRT readiness."""
    from edgefleet.converter.steps.edgetpu_check import EdgeTpuCheck
    from edgefleet.converter.steps.edgetpu_compile import EdgeTpuCompile
    from edgefleet.converter.steps.tensorrt_check import TensorRtCheck
    from edgefleet.converter.steps.xnnpack_check import XnnpackCheck

    steps: list[Step] = []
    if profile.artifact.format is ArtifactFormat.TFLITE:
        if "edgetpu" in profile.runtime.delegates:
            steps += [EdgeTpuCheck(), EdgeTpuCompile()]
        elif "xnnpack" in profile.runtime.delegates:
            steps.append(XnnpackCheck())
    elif TENSORRT_PROVIDER in profile.runtime.providers:
        steps.append(TensorRtCheck())
    return steps


def alternative_steps(profile: DeviceProfile) -> list[Step]:
    from edgefleet.converter.steps.alternatives import BuildAlternatives

    return [BuildAlternatives(profile.alternatives)] if profile.alternatives else []
