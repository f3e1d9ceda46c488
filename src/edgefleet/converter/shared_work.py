"""Work that the conversions of one model for several profiles (`convert --profile a,b,c`) do once: the Keras
translation, the TFLite calibration pass, the entropy/percentile activation ranges and the float-by-rule
decisions. Each result is keyed by everything it depends on, so a profile whose model differs (other input
shapes, another source file after compression) computes its own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from edgefleet.converter.context import ConversionContext

T = TypeVar("T")


@dataclass
class SharedWork:
    """A memo shared by the contexts of one `convert` run (its alternatives and, for several profiles, its
    sibling conversions)."""

    results: dict[str, Any] = field(default_factory=dict)
    reused: int = 0  # how many results were taken from an earlier computation (bench/ and tests read it)

    def once(self, key: str, compute: Callable[[], T]) -> T:
        if key in self.results:
            self.reused += 1
        else:
            self.results[key] = compute()
        return self.results[key]


def model_key(ctx: ConversionContext) -> str:
    """What a result computed from the fp32 model and the calibration data depends on: the model file, the
    data file and the model's input shapes (a TFLite profile fixes them, an ONNX one may not)."""
    model = ctx.need(ctx.model, "the source model")
    shapes = [
        (value.name, [dim.dim_value or dim.dim_param for dim in value.type.tensor_type.shape.dim])
        for value in model.graph.input
    ]
    data = ctx.need(ctx.calib, "calibration data").path  # --calib, or --eval where none is needed
    return f"{ctx.request.model}|{data}|{shapes}"
