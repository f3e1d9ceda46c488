"""Errors the converter raises; each message says what was wrong, where, and what to do."""

from __future__ import annotations

from edgefleet.contract.errors import EdgefleetError


class ConversionError(EdgefleetError):
    """A conversion could not be done (base class of the converter's errors)."""


class ModelError(ConversionError):
    """The source model is missing, unreadable or not a float32 ONNX model."""


class InputDataError(ConversionError):
    """Calibration or evaluation data does not fit the model."""


class MissingCalibrationError(ConversionError):
    """The int8 artifact or the compression asked for needs calibration inputs, and none were given."""


class UnsupportedModelError(ConversionError):
    """The model uses something the chosen converter cannot translate (an op, attribute or layout)."""


class UnsupportedTargetError(ConversionError):
    """The profile asks for an artifact this converter does not produce."""


class TargetRefusedError(ConversionError):
    """The target cannot run the artifact (e.g. ops the Edge TPU cannot map); the check report is written
    to `report_path` before this is raised."""

    def __init__(self, message: str, report_path: object = None) -> None:
        super().__init__(message)
        self.report_path = report_path


def first_line(exc: BaseException, fallback: str | None = None) -> str:
    """The first line of a toolchain's error message (they run to pages), else `fallback` (default: the
    exception's type name)."""
    text = str(exc).strip()
    if text:
        return text.splitlines()[0]
    return type(exc).__name__ if fallback is None else fallback
