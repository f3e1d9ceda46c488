"""PyTorch models as conversion input: an nn.Module (Python API) or `package.module:factory` (command line),
exported to fp32 ONNX with the TorchScript exporter at an explicit opset.

The exporter is `torch.onnx.export(..., dynamo=False)`: the dynamo exporter (torch 2.13's default) ignores
the requested opset. The batch axis is exported dynamic, like the reference models.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import io
import warnings
from pathlib import Path
from typing import Any

from edgefleet.converter.errors import ModelError
from edgefleet.converter.user_code import UserCodeError, import_callable, split_spec

DEFAULT_OPSET = 17
OUTPUT_NAME = "output"


def require_compress_extra(modules: tuple[str, ...], what: str) -> None:
    """ModelError naming the extra to install when torch (or torch-pruning) is missing."""
    missing = [name for name in modules if importlib.util.find_spec(name) is None]
    if missing:
        raise ModelError(
            f"{what} needs {', '.join(missing)}, which is not installed; install the `compress` extra: "
            "pip install 'edgefleet[converter,compress]'"
        )


def is_factory_spec(model: Path | str) -> bool:
    """`package.module:factory` (and not an existing file that happens to look like one)."""
    text = str(model)
    return split_spec(text) is not None and not Path(text).exists()


def factory_name(spec: str) -> str:
    """A bundle name for a factory spec: the factory's name."""
    parts = split_spec(spec)
    return parts[1] if parts else spec


def load_factory(spec: str) -> Any:
    """Import `package.module` and call `factory()`; the result must be a torch.nn.Module.

    The working directory is importable (as with `python -m`), so a model file next to the user's data
    works without installing it."""
    from torch import nn

    parts = split_spec(spec)
    if parts is None:
        raise ModelError(f"model '{spec}': not a 'package.module:factory' reference")
    attr = parts[1]
    try:
        factory = import_callable(spec)
    except UserCodeError as exc:
        raise ModelError(
            f"model '{spec}': {exc}; name a function (or class) that takes no arguments and returns the "
            "trained torch.nn.Module"
        ) from exc
    try:
        built = factory()
    except Exception as exc:
        raise ModelError(f"model '{spec}': calling {attr}() failed ({type(exc).__name__}: {exc})") from exc
    if not isinstance(built, nn.Module):
        raise ModelError(f"model '{spec}': {attr}() returned {type(built).__name__}, not a torch.nn.Module")
    return built


def example_inputs(input_shapes: dict[str, list[int]]) -> tuple[Any, ...]:
    """One zero tensor per forward() argument, in the order the shapes were given."""
    import torch

    return tuple(torch.zeros(*shape) for shape in input_shapes.values())


def check_input_shapes(where: str, input_shapes: dict[str, list[int]] | None) -> dict[str, list[int]]:
    if not input_shapes:
        raise ModelError(
            f"{where}: a PyTorch model needs its input shapes; pass --input-shape NAME=1,3,224,224 once per "
            "forward() argument, in order (NAME becomes the ONNX input name)"
        )
    for name, shape in input_shapes.items():
        if not shape or any(int(d) <= 0 for d in shape):
            raise ModelError(f"{where}: input '{name}' shape {list(shape)} must be positive integers")
    return {name: [int(d) for d in shape] for name, shape in input_shapes.items()}


def export_module(
    module: Any, input_shapes: dict[str, list[int]], path: Path, opset: int = DEFAULT_OPSET
) -> list[str]:
    """Export `module` (in eval mode) to fp32 ONNX at `path`; return the output names.

    Inputs are named after `input_shapes`' keys, outputs 'output' (or 'output_0', 'output_1', ...);
    axis 0 of every input and output is the dynamic 'batch' axis."""
    import torch

    module.eval()
    inputs = example_inputs(input_shapes)
    try:
        with torch.no_grad():
            outputs = module(*inputs)
    except Exception as exc:
        shapes = ", ".join(f"{n}={list(s)}" for n, s in input_shapes.items())
        raise ModelError(
            f"the PyTorch model does not run on inputs {shapes} ({type(exc).__name__}: {exc}); check "
            "--input-shape (one per forward() argument, batch first)"
        ) from exc
    count = 1 if isinstance(outputs, torch.Tensor) else len(outputs)
    output_names = [OUTPUT_NAME] if count == 1 else [f"{OUTPUT_NAME}_{i}" for i in range(count)]
    names = list(input_shapes)
    dynamic = {name: {0: "batch"} for name in [*names, *output_names]}
    # The TorchScript exporter warns about its own deprecation and prints tracer notes; keep the CLI clean.
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            inputs,
            str(path),
            input_names=names,
            output_names=output_names,
            dynamic_axes=dynamic,
            opset_version=opset,
            dynamo=False,
        )
    return output_names
