"""LiteRT (TFLite) backend: `ai_edge_litert`, or `tflite_runtime` where LiteRT is not installed.

XNNPACK is LiteRT's built-in CPU delegate (applied by the default op resolver); the Edge TPU delegate is
loaded from libedgetpu.so.1 and, when that library is missing, the model runs on the CPU instead.
"""

from __future__ import annotations

import ctypes
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from edgefleet.agent.backends.base import BackendError, TensorInfo
from edgefleet.contract.messages import BackendInfo
from edgefleet.contract.profiles import RuntimeSpec

EDGETPU_LIBRARY = "libedgetpu.so.1"


def _import_runtime() -> tuple[Any, Any, str, str]:
    try:
        from ai_edge_litert.interpreter import Interpreter, load_delegate

        return Interpreter, load_delegate, "litert", metadata.version("ai-edge-litert")
    except ImportError:
        pass
    try:
        from tflite_runtime.interpreter import Interpreter, load_delegate  # type: ignore[import-not-found]

        return Interpreter, load_delegate, "tflite_runtime", metadata.version("tflite-runtime")
    except ImportError as exc:
        raise BackendError(
            "no TFLite runtime is installed; install it with `pip install ai-edge-litert`"
        ) from exc


def _info(detail: dict[str, Any]) -> TensorInfo:
    signature = detail.get("shape_signature")
    dims = signature if signature is not None and len(signature) else detail["shape"]
    return TensorInfo(
        name=str(detail["name"]),
        dtype=np.dtype(detail["dtype"]).name,
        shape=tuple(int(d) if d >= 0 else None for d in dims),
    )


class LiteRtBackend:
    def __init__(self, model_path: Path, runtime: RuntimeSpec) -> None:
        interpreter_cls, load_delegate, engine, version = _import_runtime()
        delegates: list[Any] = []
        applied: str | None = None
        fallbacks: list[str] = []
        for name in runtime.delegates:
            if name == "xnnpack":
                applied = applied or "xnnpack"  # built into the default resolver
                continue
            try:
                # probe first: a failed load_delegate leaves a Delegate whose __del__ prints a traceback
                ctypes.CDLL(EDGETPU_LIBRARY)
                delegates.append(load_delegate(EDGETPU_LIBRARY))
                applied = "edgetpu"
            except (ValueError, OSError, RuntimeError) as exc:
                fallbacks.append(
                    f"edgetpu delegate requested but {EDGETPU_LIBRARY} could not be loaded ({exc}); "
                    "running on CPU"
                )
        try:
            self._interpreter = interpreter_cls(
                model_path=str(model_path),
                num_threads=runtime.threads,
                experimental_delegates=delegates or None,
            )
            self._interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise BackendError(f"{engine} cannot load {model_path.name}: {exc}") from exc
        self._input_details = self._interpreter.get_input_details()
        self._output_details = self._interpreter.get_output_details()
        self._shapes = {d["index"]: tuple(int(x) for x in d["shape"]) for d in self._input_details}
        self._info = BackendInfo(
            engine=engine,
            engine_version=version,
            delegate=applied,
            threads=runtime.threads,
            fallbacks=fallbacks,
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
        resized = False
        for detail in self._input_details:
            shape = tuple(feeds[detail["name"]].shape)
            if shape != self._shapes[detail["index"]]:
                interp.resize_tensor_input(detail["index"], list(shape))
                self._shapes[detail["index"]] = shape
                resized = True
        if resized:
            interp.allocate_tensors()
        for detail in self._input_details:
            interp.set_tensor(detail["index"], np.ascontiguousarray(feeds[detail["name"]]))
        interp.invoke()
        # copies: the interpreter reuses its output buffers on the next invoke
        return {d["name"]: np.array(interp.get_tensor(d["index"])) for d in self._output_details}

    def close(self) -> None:
        self._interpreter = None
