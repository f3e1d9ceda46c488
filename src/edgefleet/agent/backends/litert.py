"""LiteRT (TFLite) backend: `ai_edge_litert`, or `tflite_runtime` only where LiteRT is not installed.

On the CPU, LiteRT's default op resolver applies XNNPACK with the profile's thread count. The Edge TPU
delegate is loaded from libedgetpu.so.1; when that fails the model runs on the CPU and the reason is a
fallback in BackendInfo (the agent turns every fallback into a `warning` event).
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from edgefleet.agent.backends.base import BackendError, TensorInfo
from edgefleet.contract.messages import BackendInfo
from edgefleet.contract.profiles import RuntimeSpec

EDGETPU_LIBRARY = "libedgetpu.so.1"
EDGETPU_CUSTOM_OP = "edgetpu-custom-op"


@dataclass(frozen=True)
class LiteRtApi:
    """The TFLite runtime found in this environment."""

    interpreter: Any
    load_delegate: Callable[..., Any]
    without_default_delegates: Any  # the op resolver type that skips XNNPACK, None if the runtime lacks it
    engine: str
    version: str
    notes: tuple[str, ...] = ()  # fallbacks already taken by choosing this runtime


def _version(distribution: str, module: Any) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return str(getattr(module, "__version__", "unknown"))


def import_litert() -> LiteRtApi:
    """ai_edge_litert if installed, else tflite_runtime (reported as a fallback), else BackendError."""
    try:
        from ai_edge_litert.interpreter import Interpreter, OpResolverType, load_delegate

        return LiteRtApi(
            Interpreter,
            load_delegate,
            OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
            "litert",
            _version("ai-edge-litert", None),
        )
    except ImportError:
        pass
    try:
        import tflite_runtime  # type: ignore[import-not-found]
        from tflite_runtime.interpreter import Interpreter, load_delegate  # type: ignore[import-not-found]
    except ImportError as exc:
        raise BackendError(
            "no TFLite runtime is installed; install it with `pip install ai-edge-litert`"
        ) from exc
    from tflite_runtime import interpreter as tflite

    resolver = getattr(tflite, "OpResolverType", None)
    version = _version("tflite-runtime", tflite_runtime)
    return LiteRtApi(
        Interpreter,
        load_delegate,
        getattr(resolver, "BUILTIN_WITHOUT_DEFAULT_DELEGATES", None),
        "tflite_runtime",
        version,
        (
            f"ai-edge-litert is not installed; running on the fallback tflite_runtime {version} "
            "(int8 models run much slower; install ai-edge-litert)",
        ),
    )


def load_edgetpu_delegate(
    load_delegate: Callable[..., Any], library: str = EDGETPU_LIBRARY
) -> tuple[Any | None, str | None]:
    """The Edge TPU delegate, or None and why it could not be had."""
    prefix = "edgetpu delegate requested but"
    # Probe with ctypes first: a load_delegate that fails inside Delegate.__init__ leaves an object whose
    # __del__ prints a traceback, and its errors for a missing or foreign library are less clear.
    try:
        handle = ctypes.CDLL(library)
    except OSError as exc:
        return None, f"{prefix} {library} is not installed ({exc}); install libedgetpu1-std"
    if not hasattr(handle, "tflite_plugin_create_delegate"):
        return None, f"{prefix} the {library} found is not a TFLite delegate plugin"
    try:
        return load_delegate(library), None
    except (ValueError, RuntimeError, OSError) as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        return None, f"{prefix} it did not load ({reason}); is the Edge TPU connected?"


def _info(detail: dict[str, Any]) -> TensorInfo:
    signature = detail.get("shape_signature")
    dims = signature if signature is not None and len(signature) else detail["shape"]
    return TensorInfo(
        name=str(detail["name"]),
        dtype=np.dtype(detail["dtype"]).name,
        shape=tuple(int(d) if d >= 0 else None for d in dims),
    )


class LiteRtBackend:
    def __init__(self, model_path: Path, runtime: RuntimeSpec, api: LiteRtApi | None = None) -> None:
        api = api or import_litert()
        fallbacks = list(api.notes)
        delegates: list[Any] = []
        applied: str | None = None
        if "edgetpu" in runtime.delegates:
            delegate, why_not = load_edgetpu_delegate(api.load_delegate)
            if delegate is not None:
                delegates.append(delegate)
                applied = "edgetpu"
            else:
                fallbacks.append(f"{why_not}; running on CPU (XNNPACK)")
        kwargs: dict[str, Any] = {}
        if applied is None:
            if runtime.delegates or api.without_default_delegates is None:
                applied = "xnnpack"  # the default op resolver applies it, with num_threads threads
            else:
                # the profile asked for no delegate at all: plain built-in kernels
                kwargs["experimental_op_resolver_type"] = api.without_default_delegates
        try:
            self._interpreter = api.interpreter(
                model_path=str(model_path),
                num_threads=runtime.threads,
                experimental_delegates=delegates or None,
                **kwargs,
            )
            self._interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            hint = ""
            if EDGETPU_CUSTOM_OP in str(exc):
                hint = " (the model was compiled for the Edge TPU and cannot run without it)"
            raise BackendError(f"{api.engine} cannot load {model_path.name}: {exc}{hint}") from exc
        self._input_details = self._interpreter.get_input_details()
        self._output_details = self._interpreter.get_output_details()
        self._shapes = {d["index"]: tuple(int(x) for x in d["shape"]) for d in self._input_details}
        # (name, tensor index) pairs, looked up once rather than on every run
        self._input_slots = [(str(d["name"]), int(d["index"])) for d in self._input_details]
        self._output_slots = [(str(d["name"]), int(d["index"])) for d in self._output_details]
        self._info = BackendInfo(
            engine=api.engine,
            engine_version=api.version,
            delegate=applied,
            threads=runtime.threads,
            fallbacks=fallbacks,
            requested=list(runtime.delegates),
        )

    @property
    def info(self) -> BackendInfo:
        return self._info

    def inputs(self) -> list[TensorInfo]:
        return [_info(d) for d in self._input_details]

    def outputs(self) -> list[TensorInfo]:
        return [_info(d) for d in self._output_details]

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        interp = self._interpreter
        shapes = self._shapes
        resized = False
        arrays = [(index, feeds[name]) for name, index in self._input_slots]
        for index, array in arrays:
            if array.shape != shapes[index]:
                interp.resize_tensor_input(index, list(array.shape))
                shapes[index] = array.shape
                resized = True
        if resized:
            interp.allocate_tensors()
        for index, array in arrays:
            interp.set_tensor(index, np.ascontiguousarray(array))
        interp.invoke()
        # get_tensor returns a copy (the interpreter reuses its output buffers on the next invoke)
        return {name: interp.get_tensor(index) for name, index in self._output_slots}

    def close(self) -> None:
        self._interpreter = None
