"""The fidelity budget and its verdict: percentage measures against the points budget (`--max-drop`),
SQNR against a floor in dB (`--min-sqnr`), or the user's hook; which measure decided, said in words."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from edgefleet.contract.profiles import Precision
from edgefleet.converter.fidelity.custom import CustomMetricOutcome
from edgefleet.converter.fidelity.outputs import MEASURE_LABELS, OutputMetrics

# Floor for outputs judged by SQNR, per artifact precision, from measured outputs (2026-12-03). Good int8
# artifacts: 27.5-40 dB (digits CNN v1/v2, MobileNetV2 digits; rpi4 TFLite, Orin QDQ). Broken int8 artifacts
# of real models: 4.3 dB (PaddleOCR recogniser, 6% strings equal), 8.9 dB (text detector, mask IoU 75%), ORT
# quantize_static on the same 5.3 and 6.1 dB; 1-12 dB in the real-model findings. 20 dB sits mid-gap (in dB)
# with >= 7.5 dB either side. Good fp16: 35 dB (recogniser, 97% strings equal), 44.5 (text detector), 50-59
# (PicoDet heads), 56-75 (reference models), 68 (YOLOv8n); an overflowing one -0.4 dB: 25 dB keeps 10 dB of
# margin below the worst good one. SQNR cannot see a YOLOv8 head whose class scores collapse (int8: 25 dB,
# box F1 58%): such outputs need --output-kind detection.
DEFAULT_MIN_SQNR_DB: dict[Precision, float] = {
    Precision.INT8: 20.0,
    Precision.FP16: 25.0,
    Precision.FP32: 60.0,  # a float copy: anything below means the artifact computes something else
}


class FidelityBudget(BaseModel):
    """What an artifact may lose: points for percentage measures, a dB floor for SQNR."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_drop_points: float = Field(ge=0)
    drop_source: Literal["request", "profile"]
    min_sqnr_db: float
    sqnr_source: Literal["request", "default"]


def fidelity_budget(
    max_drop: float | None, profile_drop: float, min_sqnr: float | None, precision: Precision
) -> FidelityBudget:
    """The request's bounds where given, else the profile's points budget and the precision's dB floor."""
    return FidelityBudget(
        max_drop_points=profile_drop if max_drop is None else max_drop,
        drop_source="profile" if max_drop is None else "request",
        min_sqnr_db=DEFAULT_MIN_SQNR_DB[precision] if min_sqnr is None else min_sqnr,
        sqnr_source="default" if min_sqnr is None else "request",
    )


@dataclass(frozen=True)
class Judgement:
    """Every output measured and held to its budget (or the hook's verdict). `badness` is how far the worst
    judged output is over its bound, in its own unit (points over, dB short); <= 0 within budget."""

    outputs: list[OutputMetrics]
    custom: CustomMetricOutcome | None
    met: bool
    badness: float
    metric: str  # the measure that decided: the worst output's, or "custom"
    worst: str | None  # the output furthest from (or most over) its bound
    judged_by: str  # which measure(s) judged, in words
    drop_points: float | None  # the largest drop among percentage-judged outputs
    sqnr_db: float | None  # the lowest SQNR among SQNR-judged outputs
    message: str  # the verdict in one sentence


def _bound(output: OutputMetrics, budget: FidelityBudget) -> tuple[float, str]:
    """(excess over the bound, the bound in words)."""
    if output.metric == "sqnr":
        return round(budget.min_sqnr_db - output.sqnr_db, 4), f"SQNR >= {budget.min_sqnr_db:.1f} dB"
    drop = output.drop_points if output.drop_points is not None else 0.0
    return round(drop - budget.max_drop_points, 4), f"drop <= {budget.max_drop_points:.2f} points"


def _phrase(output: OutputMetrics, budget: FidelityBudget) -> str:
    label = MEASURE_LABELS[output.metric]
    if output.metric == "sqnr":
        side = ">=" if output.within_budget else "<"
        return (
            f"'{output.output}' {label}: {output.sqnr_db:.1f} dB {side} {budget.min_sqnr_db:.1f} dB "
            f"(cosine {output.cosine if output.cosine is not None else float('nan'):.4f})"
        )
    side = "<=" if output.within_budget else ">"
    return (
        f"'{output.output}' {label}: {output.artifact:.2f}%, drop {output.drop_points:.2f} {side} "
        f"{budget.max_drop_points:.2f} points"
    )


def judged_by_text(outputs: list[OutputMetrics], custom: CustomMetricOutcome | None) -> str:
    if custom is not None:
        return f"custom metric {custom.name} ({custom.function})"
    groups: dict[str, list[str]] = {}
    for output in outputs:
        groups.setdefault(output.metric, []).append(f"'{output.output}'")
    return "; ".join(f"{MEASURE_LABELS[metric]} on {', '.join(names)}" for metric, names in groups.items())


def judge(
    outputs: list[OutputMetrics], budget: FidelityBudget, custom: CustomMetricOutcome | None = None
) -> Judgement:
    """Hold each output to its bound; with a hook, the hook's verdict decides (outputs stay informative)."""
    judged = []
    for output in outputs:
        excess, bound = _bound(output, budget)
        judged.append(output.model_copy(update={"budget": bound, "within_budget": excess <= 0}))
    excesses = [_bound(o, budget)[0] for o in judged]
    worst = max(range(len(judged)), key=lambda i: excesses[i]) if judged else None
    drops = [o.drop_points for o in judged if o.metric != "sqnr" and o.drop_points is not None]
    sqnrs = [o.sqnr_db for o in judged if o.metric == "sqnr"]
    if custom is not None:
        if custom.passed is not None:
            badness = -1.0 if custom.passed else 1.0
            verdict = "passes" if custom.passed else "fails"
            message = f"custom metric {custom.name} = {custom.score:g}: the hook says it {verdict}"
        else:
            drop = custom.drop_points or 0.0
            badness = round(drop - budget.max_drop_points, 4)
            side = "<=" if badness <= 0 else ">"
            message = (
                f"custom metric {custom.name} = {custom.score:g}, drop {drop:.2f} {side} "
                f"{budget.max_drop_points:.2f} points"
            )
        metric = "custom"
    else:
        badness = excesses[worst] if worst is not None else 0.0
        metric = judged[worst].metric if worst is not None else "none"
        shown = [o for o in judged if not o.within_budget] or judged
        message = "; ".join(_phrase(o, budget) for o in shown) or "no outputs to compare"
    return Judgement(
        outputs=judged,
        custom=custom,
        met=badness <= 0,
        badness=badness,
        metric=metric,
        worst=judged[worst].output if worst is not None else None,
        judged_by=judged_by_text(judged, custom),
        drop_points=max(drops) if drops else None,
        sqnr_db=min(sqnrs) if sqnrs else None,
        message=message,
    )


def default_kind_note(outputs: list[OutputMetrics], budget: FidelityBudget) -> str | None:
    """Said plainly when outputs were judged by SQNR/cosine only because nobody named their kind."""
    guessed = [f"'{o.output}'" for o in outputs if o.metric == "sqnr" and o.kind_source == "shape"]
    if not guessed:
        return None
    first = guessed[0].strip("'")
    return (
        f"{', '.join(guessed)}: not a classification output and no --output-kind given, so SQNR/cosine "
        f"against fp32 judged it (SQNR >= {budget.min_sqnr_db:.1f} dB, {budget.sqnr_source}); for a task "
        f"measure name its kind, e.g. --output-kind {first}=detection (or segmentation, ctc), or pass "
        "--metric"
    )
