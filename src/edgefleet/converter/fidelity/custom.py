"""`--metric package.module:function`: the user's own measure of an artifact against fp32 (as Olive's
custom metrics), imported and checked before any long step, its result validated like any boundary.

The function is called as `function(fp32, artifact, data)`:
- fp32, artifact: {output name: array over every evaluation sample}, float32, in the source model's layout;
- data: EvalData (the evaluation inputs by input name, the labels `y` or None, the file they came from);
and returns a CustomMetricResult, or a dict of its fields, or a pair `(score, passed)` / `(score, drop)`:
the score, and either its own verdict (`passed`) or the points lost vs fp32 (`drop`), judged against
`--max-drop`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from edgefleet.contract.errors import first_validation_error
from edgefleet.converter.errors import ConversionError
from edgefleet.converter.user_code import UserCodeError, import_callable, split_spec

MetricHook = Callable[[dict[str, np.ndarray], dict[str, np.ndarray], "EvalData"], Any]


@dataclass(frozen=True)
class EvalData:
    """What the hook gets besides the outputs: the evaluation inputs and labels."""

    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None
    path: Path | None


class CustomMetricResult(BaseModel):
    """What a metric hook returns: a finite score and either `passed` or `drop` (points lost vs fp32)."""

    model_config = ConfigDict(extra="forbid")

    score: float
    passed: bool | None = None
    drop: float | None = Field(default=None, description="points lost vs fp32, judged against --max-drop")
    fp32: float | None = Field(default=None, description="the fp32 model's own score, when it has one")
    name: str | None = Field(default=None, max_length=80, description="what the score measures")

    @field_validator("score", "drop", "fp32")
    @classmethod
    def _finite(cls, value: float | None) -> float | None:
        if value is not None and not math.isfinite(value):
            raise ValueError("must be a finite number")
        return value

    @model_validator(mode="after")
    def _one_verdict(self) -> CustomMetricResult:
        if (self.passed is None) == (self.drop is None):
            raise ValueError("give exactly one of `passed` (your verdict) or `drop` (points lost vs fp32)")
        return self


class CustomMetricOutcome(BaseModel):
    """The hook's result as the report keeps it."""

    model_config = ConfigDict(extra="forbid")

    function: str  # the `package.module:function` given
    name: str
    score: float
    fp32: float | None
    drop_points: float | None
    passed: bool | None  # the hook's own verdict (null when it gave a drop)


def check_hook_spec(spec: str) -> None:
    if split_spec(spec) is None:
        raise ConversionError(
            f"--metric {spec!r}: expected package.module:function (e.g. mymetrics.ocr:cer_drop)"
        )


def load_metric_hook(spec: str) -> MetricHook:
    """The callable `spec` names (see user_code); ConversionError says what to fix."""
    check_hook_spec(spec)
    try:
        return import_callable(spec)
    except UserCodeError as exc:
        raise ConversionError(
            f"--metric {spec}: {exc}; name a function taking (fp32_outputs, artifact_outputs, eval_data)"
        ) from exc


def _as_result(spec: str, returned: object) -> CustomMetricResult:
    fields: object = returned
    if isinstance(returned, CustomMetricResult):
        return returned
    if isinstance(returned, tuple) and len(returned) == 2:
        score, verdict = returned
        fields = {"score": score, "passed" if isinstance(verdict, (bool, np.bool_)) else "drop": verdict}
    if not isinstance(fields, Mapping):
        raise ConversionError(
            f"--metric {spec} returned {type(returned).__name__} {returned!r:.80}; return a dict "
            "{'score': float, 'passed': bool} or {'score': float, 'drop': points}, or a pair (score, passed)"
        )
    try:
        return CustomMetricResult.model_validate(dict(fields))
    except ValidationError as exc:
        raise ConversionError(
            f"--metric {spec} returned {returned!r:.120}: {first_validation_error(exc, 'result')}; return a "
            "finite `score` and exactly one of `passed` (bool) or `drop` (points lost vs fp32)"
        ) from exc


def run_metric_hook(
    spec: str,
    hook: MetricHook,
    fp32: dict[str, np.ndarray],
    artifact: dict[str, np.ndarray],
    data: EvalData,
) -> CustomMetricOutcome:
    """Call the hook on copies (it cannot spoil the arrays the built-in measures use) and validate it."""
    try:
        returned = hook(
            {k: v.copy() for k, v in fp32.items()}, {k: v.copy() for k, v in artifact.items()}, data
        )
    except Exception as exc:
        raise ConversionError(f"--metric {spec} raised {type(exc).__name__}: {exc}") from exc
    result = _as_result(spec, returned)
    return CustomMetricOutcome(
        function=spec,
        name=result.name or spec.rpartition(":")[2],
        score=round(result.score, 4),
        fp32=result.fp32,
        drop_points=None if result.drop is None else round(result.drop, 4),
        passed=result.passed,
    )
