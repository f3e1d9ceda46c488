"""onnxruntime backend: providers are the profile's wish list intersected with what this build offers."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from edgefleet.agent.backends.base import BackendError, TensorInfo
from edgefleet.contract.messages import BackendInfo
from edgefleet.contract.profiles import Precision, RuntimeSpec

_ORT_DTYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
    "tensor(int32)": "int32",
    "tensor(int64)": "int64",
}
CPU = "CPUExecutionProvider"


def _info(arg: object) -> TensorInfo:
    name = str(getattr(arg, "name", ""))
    ort_type = str(getattr(arg, "type", ""))
    shape = tuple(d if isinstance(d, int) and d >= 0 else None for d in getattr(arg, "shape", []) or [])
    return TensorInfo(name=name, dtype=_ORT_DTYPES.get(ort_type, ort_type), shape=shape)


class OnnxRuntimeBackend:
    def __init__(self, model_path: Path, runtime: RuntimeSpec, precision: Precision = Precision.FP32) -> None:
        import onnxruntime as ort

        available = ort.get_available_providers()
        wanted = list(runtime.providers) or [CPU]
        providers = [p for p in wanted if p in available]
        fallbacks = [
            f"execution provider {p} requested but not available in this onnxruntime "
            f"{ort.__version__} build (available: {', '.join(available)})"
            for p in wanted
            if p not in available
        ]
        if not providers:
            providers = [CPU]
            fallbacks.append(f"none of the requested providers is available; running on {CPU}")
        options = ort.SessionOptions()
        options.intra_op_num_threads = runtime.threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        if precision is Precision.INT8 and providers == [CPU] and wanted != [CPU]:
            # A QDQ model made for TensorRT, falling back to the CPU: onnxruntime's fused int8 CPU kernels
            # saturate on x86 CPUs without VNNI and lose accuracy TensorRT would not; unfused Q/DQ gives
            # exact int8 results at some speed cost, which is the right trade for a fallback path.
            options.add_session_config_entry("session.disable_quant_qdq", "1")
            fallbacks.append("int8 QDQ model run on the CPU with QDQ fusion off (exact int8 results, slower)")
        try:
            self._session = ort.InferenceSession(str(model_path), sess_options=options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own exception types for bad models
            raise BackendError(f"onnxruntime cannot load {model_path.name}: {exc}") from exc
        self._inputs = [_info(a) for a in self._session.get_inputs()]
        self._outputs = [_info(a) for a in self._session.get_outputs()]
        self._output_names = [o.name for o in self._outputs]
        self._info = BackendInfo(
            engine="onnxruntime",
            engine_version=ort.__version__,
            providers=list(self._session.get_providers()),
            threads=runtime.threads,
            fallbacks=fallbacks,
        )

    @property
    def info(self) -> BackendInfo:
        return self._info

    def inputs(self) -> list[TensorInfo]:
        return list(self._inputs)

    def outputs(self) -> list[TensorInfo]:
        return list(self._outputs)

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        results = self._session.run(self._output_names, dict(feeds))
        return {name: np.asarray(value) for name, value in zip(self._output_names, results, strict=True)}

    def close(self) -> None:
        # onnxruntime frees the session when the last reference goes
        self._session = None  # type: ignore[assignment]
