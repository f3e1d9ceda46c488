"""Runtime backends behind one protocol (`Backend`); `open_backend` picks one by artifact format."""

from __future__ import annotations

from pathlib import Path

from edgefleet.agent.backends.base import Backend, BackendError, TensorInfo
from edgefleet.contract.profiles import ArtifactFormat, Engine, Precision, RuntimeSpec

__all__ = ["Backend", "BackendError", "TensorInfo", "open_backend"]


def open_backend(
    artifact_format: ArtifactFormat,
    model_path: Path,
    runtime: RuntimeSpec,
    precision: Precision = Precision.FP32,
    sparse_2_4: bool = False,
) -> Backend:
    """Load `model_path` with the runtime the artifact format and the profile's engine call for
    (`sparse_2_4`: the weights follow 2:4, for TensorRT)."""
    if artifact_format is ArtifactFormat.ONNX and runtime.engine is Engine.ONNXRUNTIME:
        from edgefleet.agent.backends.ort import OnnxRuntimeBackend

        return OnnxRuntimeBackend(model_path, runtime, precision, sparse_2_4=sparse_2_4)
    if artifact_format is ArtifactFormat.TFLITE and runtime.engine is Engine.LITERT:
        from edgefleet.agent.backends.litert import LiteRtBackend

        return LiteRtBackend(model_path, runtime)
    raise BackendError(
        f"a {artifact_format.value} artifact cannot run on engine '{runtime.engine.value}'; "
        "the bundle was made for another kind of device"
    )
