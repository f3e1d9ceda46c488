"""Run an artifact (or the source model) on the host, in the artifact's own tensor form, with one thread."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np

from edgefleet.contract.manifest import TensorSpec


class HostRunner(Protocol):
    @property
    def label(self) -> str: ...

    @property
    def max_batch(self) -> int | None: ...  # None: any batch size in one call

    def run(self, inputs: list[np.ndarray]) -> list[np.ndarray]: ...


class OnnxRunner:
    def __init__(self, model: Path | bytes, exact_qdq: bool = False) -> None:
        """exact_qdq: run QDQ models as written (DequantizeLinear -> float op -> QuantizeLinear) instead of
        fusing them into onnxruntime's int8 kernels. On x86 CPUs without VNNI those kernels multiply
        u8 x s8 pairs with a saturating 16-bit add (VPMADDUBSW) and lose accuracy that TensorRT and ARM
        CPUs do not lose (measured: digits v1, tensorrt flavour, 91.4% exact vs 81.4% fused on AVX2).
        """
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        if exact_qdq:
            options.add_session_config_entry("session.disable_quant_qdq", "1")
        source = str(model) if isinstance(model, Path) else model
        self._session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
        self._names = [i.name for i in self._session.get_inputs()]
        first = self._session.get_inputs()[0].shape
        self.max_batch = first[0] if first and isinstance(first[0], int) and first[0] > 0 else None
        self.label = f"onnxruntime {ort.__version__} CPUExecutionProvider, 1 thread"
        if exact_qdq:
            self.label += ", QDQ fusion off"

    def run(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        return [np.asarray(o) for o in self._session.run(None, dict(zip(self._names, inputs, strict=True)))]


class TfliteRunner:
    """ai-edge-litert, default CPU kernels (XNNPACK), batch fixed by the model."""

    def __init__(self, path: Path, inputs: list[TensorSpec]) -> None:
        from importlib.metadata import version

        from ai_edge_litert.interpreter import Interpreter

        self._interpreter = Interpreter(model_path=str(path), num_threads=1)
        self._interpreter.allocate_tensors()
        self._inputs = [d["index"] for d in self._interpreter.get_input_details()]
        self._outputs = [d["index"] for d in self._interpreter.get_output_details()]
        first = inputs[0].shape[0] if inputs and inputs[0].shape else None
        self.max_batch = first if isinstance(first, int) else 1
        self.label = f"ai-edge-litert {version('ai-edge-litert')} CPU, 1 thread"

    def run(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        for index, array in zip(self._inputs, inputs, strict=True):
            self._interpreter.set_tensor(index, array)
        self._interpreter.invoke()
        return [self._interpreter.get_tensor(index).copy() for index in self._outputs]


def runner_for(path: Path, inputs: list[TensorSpec]) -> HostRunner:
    return TfliteRunner(path, inputs) if path.suffix == ".tflite" else OnnxRunner(path)
