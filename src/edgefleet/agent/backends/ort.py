"""onnxruntime backend: the profile's provider chain (TensorRT with precision flags and an engine cache,
CUDA, CPU) intersected with what this onnxruntime build offers; every provider lost on the way is a fallback.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
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
TENSORRT = "TensorrtExecutionProvider"
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
# Engines are built for one model on one GPU with one TensorRT version, so the cache lives next to the
# model in its bundle folder (inside the agent's state dir): it is reused after a restart or a rollback to
# that bundle and deleted with the bundle when it is pruned.
ENGINE_CACHE_DIR = "tensorrt-cache"

ProviderEntry = tuple[str, dict[str, str]]


def _flag(value: bool) -> str:
    # onnxruntime turns every provider option into a string anyway; being explicit shows what it gets
    return "True" if value else "False"


def tensorrt_options(precision: Precision, cache_dir: Path, sparse_2_4: bool = False) -> dict[str, str]:
    """TensorRT EP options for an artifact of `precision`.

    fp16: FP16 kernels allowed. int8: the artifact is a QDQ model (explicit quantization: the scales are in
    the graph, so no calibration table), INT8 enabled, and FP16 too for the layers outside Q/DQ pairs.
    fp32: neither, TensorRT keeps FP32. `sparse_2_4` (a bundle marked weight_sparsity "2:4"): TensorRT may
    pick sparse tensor-core kernels where they are faster (Ampere and later; not verified on hardware here).
    """
    return {
        "trt_fp16_enable": _flag(precision in (Precision.FP16, Precision.INT8)),
        "trt_int8_enable": _flag(precision is Precision.INT8),
        "trt_sparsity_enable": _flag(sparse_2_4),
        "trt_engine_cache_enable": "True",
        "trt_engine_cache_path": str(cache_dir),
        "trt_timing_cache_enable": "True",
        "trt_timing_cache_path": str(cache_dir),
    }


@dataclass(frozen=True)
class ProviderPlan:
    """The providers handed to onnxruntime (with their options) and what was dropped from the wish list."""

    providers: list[ProviderEntry]
    fallbacks: list[str] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.providers]


def plan_providers(
    runtime: RuntimeSpec,
    precision: Precision,
    available: Sequence[str],
    cache_dir: Path,
    ort_version: str = "",
    sparse_2_4: bool = False,
) -> ProviderPlan:
    """The profile's providers that this build has, in the profile's order, with their options."""
    wanted = list(runtime.providers) or [CPU]
    build = f"onnxruntime {ort_version} build" if ort_version else "onnxruntime build"
    fallbacks = [
        f"execution provider {name} requested but not available in this {build} "
        f"(available: {', '.join(available)})"
        for name in wanted
        if name not in available
    ]
    providers: list[ProviderEntry] = []
    for name in wanted:
        if name not in available:
            continue
        options = tensorrt_options(precision, cache_dir, sparse_2_4) if name == TENSORRT else {}
        providers.append((name, options))
    if not providers:
        providers = [(CPU, {})]
        fallbacks.append(f"none of the requested providers is available; running on {CPU}")
    return ProviderPlan(providers, fallbacks)


def _info(arg: object) -> TensorInfo:
    name = str(getattr(arg, "name", ""))
    ort_type = str(getattr(arg, "type", ""))
    shape = tuple(d if isinstance(d, int) and d >= 0 else None for d in getattr(arg, "shape", []) or [])
    return TensorInfo(name=name, dtype=_ORT_DTYPES.get(ort_type, ort_type), shape=shape)


class OnnxRuntimeBackend:
    def __init__(
        self,
        model_path: Path,
        runtime: RuntimeSpec,
        precision: Precision = Precision.FP32,
        cache_dir: Path | None = None,
        sparse_2_4: bool = False,
    ) -> None:
        import onnxruntime as ort

        cache_dir = cache_dir or model_path.parent / ENGINE_CACHE_DIR
        available = ort.get_available_providers()
        plan = plan_providers(runtime, precision, available, cache_dir, ort.__version__, sparse_2_4)
        fallbacks = list(plan.fallbacks)
        wanted = list(runtime.providers) or [CPU]
        if TENSORRT in plan.names:
            try:
                cache_dir.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise BackendError(f"cannot create the TensorRT engine cache {cache_dir}: {exc}") from exc
        options = ort.SessionOptions()
        options.intra_op_num_threads = runtime.threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        if precision is Precision.INT8 and plan.names == [CPU] and wanted != [CPU]:
            # A QDQ model made for TensorRT, falling back to the CPU: onnxruntime's fused int8 CPU kernels
            # saturate on x86 CPUs without VNNI and lose accuracy TensorRT would not; unfused Q/DQ gives
            # exact int8 results at some speed cost, which is the right trade for a fallback path.
            options.add_session_config_entry("session.disable_quant_qdq", "1")
            fallbacks.append("int8 QDQ model run on the CPU with QDQ fusion off (exact int8 results, slower)")
        try:
            self._session = ort.InferenceSession(
                str(model_path), sess_options=options, providers=plan.providers
            )
        except Exception as exc:  # onnxruntime raises its own exception types for bad models
            raise BackendError(f"onnxruntime cannot load {model_path.name}: {exc}") from exc
        used = list(self._session.get_providers())
        # A provider compiled in can still fail to start (no GPU, missing CUDA/TensorRT libraries):
        # onnxruntime then drops it with a log line only, so report it here.
        fallbacks += [
            f"execution provider {name} is in this build but could not be initialised on this device; "
            f"running on {', '.join(used)}"
            for name in plan.names
            if name not in used
        ]
        self._inputs = [_info(a) for a in self._session.get_inputs()]
        self._outputs = [_info(a) for a in self._session.get_outputs()]
        self._output_names = [o.name for o in self._outputs]
        self.provider_options = dict(plan.providers)
        self._info = BackendInfo(
            engine="onnxruntime",
            engine_version=ort.__version__,
            providers=used,
            threads=runtime.threads,
            fallbacks=fallbacks,
            requested=wanted,
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
        self._session = None
