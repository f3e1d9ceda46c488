"""What one quantization of the model is asked for, and the interface of the steps that make an int8
artifact from it.

The accuracy budget (mixed_precision.EnforceBudget) tries other choices - another calibration method, more
layers kept in float - by calling `quantize(ctx, choice)` on the step that made the artifact; the context
keeps the choice in force (`ctx.calib_method`, `ctx.float_layers`), which only the budget changes, to the
one it keeps.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from edgefleet.converter.context import CalibrationMethod, ConversionContext
from edgefleet.converter.steps.calibration_ranges import calibration_method


@dataclass(frozen=True)
class QuantizationChoice:
    calib_method: CalibrationMethod
    float_layers: tuple[str, ...] = ()  # ONNX node names kept in float (mixed precision)


def choice_in_force(ctx: ConversionContext) -> QuantizationChoice:
    """The user's or the budget's calibration method and float layers, as the artifact was last built."""
    return QuantizationChoice(calibration_method(ctx), tuple(ctx.float_layers))


def keep_choice(ctx: ConversionContext, choice: QuantizationChoice) -> None:
    """Make `choice` the one in force (the artifact was built with it)."""
    ctx.calib_method = choice.calib_method  # a method the user asked for is never changed: it stays first
    ctx.float_layers = list(choice.float_layers)


@runtime_checkable
class Quantizer(Protocol):
    """A step making an int8 artifact: `run` builds it with the choice in force, `quantize` with any."""

    name: str

    def run(self, ctx: ConversionContext) -> None: ...

    def quantize(self, ctx: ConversionContext, choice: QuantizationChoice) -> Path:
        """Build the artifact for `choice` and return its path; the context's choice is not changed."""
        ...
