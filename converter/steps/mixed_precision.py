"""The accuracy budget: measure the artifact's accuracy drop against fp32 and, when it is over budget, keep
the layers that lose the most in float (where the target can run float ops) until the budget holds.

The search is greedy and adaptive: quantize, compare fp32 and quantized activations layer by layer, keep
the layer with the largest SQNR loss in float, re-quantize, re-measure. A layer already in float that still
loses SQNR is losing it to its quantized inputs, so its feeding layers go next. When the budget holds, each
chosen layer is tried back in int8 (most recent first) so the result keeps as few float layers as it can.
Targets without float fallback (Edge TPU) get the culprit layers named instead.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from pydantic import BaseModel, ConfigDict

from edgefleet.contract.profiles import Precision
from edgefleet.converter.context import ConversionContext, Step
from edgefleet.converter.steps.evaluate import (
    OutputMetrics,
    accuracy_scorer,
    fp32_outputs,
    score_outputs,
)
from edgefleet.converter.steps.layer_error import LayerError, measure_layer_errors

MAX_FLOAT_LAYERS = 10  # beyond this the model needs better calibration data or QAT, not more float layers
MIN_LOSS_DB = 0.5  # a layer losing less SQNR than this is not worth keeping in float
CULPRITS_NAMED = 3


class MixedPrecisionAttempt(BaseModel):
    model_config = ConfigDict(extra="forbid")

    float_layers: list[str]  # layers kept in float in this attempt (empty: all int8)
    drop_points: float
    met: bool


class BudgetOutcome(BaseModel):
    """The accuracy budget, whether the artifact meets it, and what mixed precision did for it."""

    model_config = ConfigDict(extra="forbid")

    max_drop_points: float
    source: Literal["request", "profile"]
    checked: bool  # false without an evaluation set
    met: bool  # true when unchecked (nothing to hold the artifact against)
    drop_points: float | None  # the artifact's first-output drop (top-1 or top-1 agreement), points
    metric: Literal["top1", "top1_agreement"] | None
    float_fallback_allowed: bool
    float_layers: list[str]  # layers the artifact keeps in float
    culprits: list[str]  # the layers losing the most SQNR (named when the budget is not met)
    attempts: list[MixedPrecisionAttempt]
    message: str


def budget_points(ctx: ConversionContext) -> tuple[float, Literal["request", "profile"]]:
    if ctx.request.max_drop is not None:
        return ctx.request.max_drop, "request"
    return ctx.profile.max_accuracy_drop_points, "profile"


def next_float_layers(errors: list[LayerError], chosen: list[str]) -> list[LayerError]:
    """The next layer(s) to keep in float: the biggest SQNR loss among int8 layers; if the biggest loss is
    in a layer already in float, the nearest int8 layers feeding it (the loss comes in with their
    rounding: e.g. one huge channel in a per-tensor scale crushes the others before the float layer)."""
    by_name = {e.layer: e for e in errors}
    for error in sorted(errors, key=lambda e: e.loss_db, reverse=True):
        if error.loss_db < MIN_LOSS_DB:
            return []
        if error.layer not in chosen:
            return [error]
        feeders = _nearest_int8_feeders(error, by_name, set(chosen))
        if feeders:
            return feeders
    return []


def _nearest_int8_feeders(
    error: LayerError, by_name: dict[str, LayerError], chosen: set[str]
) -> list[LayerError]:
    found: dict[str, LayerError] = {}
    pending, seen = list(error.inputs), set()
    while pending:
        name = pending.pop(0)
        if name in seen or name not in by_name:
            continue
        seen.add(name)
        if name in chosen:
            pending += by_name[name].inputs
        else:
            found[name] = by_name[name]
    return list(found.values())


def _culprits(errors: list[LayerError]) -> list[str]:
    ranked = sorted(errors, key=lambda e: e.loss_db, reverse=True)
    return [e.layer for e in ranked[:CULPRITS_NAMED] if e.loss_db >= MIN_LOSS_DB] or [
        e.layer for e in ranked[:1]
    ]


def _describe(errors: list[LayerError], names: list[str]) -> str:
    by_name = {e.layer: e for e in errors}
    parts = []
    for name in names:
        e = by_name.get(name)
        parts.append(f"{name} ({e.op}, loses {e.loss_db:.1f} dB)" if e else name)
    return ", ".join(parts)


class EnforceBudget:
    """Check the accuracy budget; on targets with float fallback, meet it with the fewest float layers.

    `requantize` is the step that made the artifact (it reads ctx.float_layers); `describe` re-reads the
    artifact's I/O after each re-quantization."""

    name = "accuracy budget (mixed precision)"

    def __init__(self, requantize: Step, describe: Step) -> None:
        self.requantize = requantize
        self.describe = describe

    def run(self, ctx: ConversionContext) -> None:
        budget, source = budget_points(ctx)
        allowed = (
            ctx.profile.artifact.allow_float_fallback and ctx.profile.artifact.precision is Precision.INT8
        )

        def outcome(**fields: object) -> BudgetOutcome:
            base: dict[str, object] = {
                "max_drop_points": budget,
                "source": source,
                "float_fallback_allowed": allowed,
                "float_layers": [],
                "culprits": [],
                "attempts": [],
                "metric": None,
                "drop_points": None,
            }
            return BudgetOutcome.model_validate(base | fields)

        if ctx.eval is None:
            ctx.budget = outcome(
                checked=False,
                met=True,
                message="accuracy budget not checked: no evaluation data (pass --eval)",
            )
            ctx.notes.append(ctx.budget.message)
            return
        data = ctx.eval
        reference = fp32_outputs(ctx, data)

        def score() -> OutputMetrics:
            path = ctx.need(ctx.artifact_path, "the artifact")
            return score_outputs(ctx, accuracy_scorer(ctx, path), data, reference)[0]

        first = score()
        attempts = [MixedPrecisionAttempt(float_layers=[], drop_points=first.drop_points, met=False)]
        common = {"checked": True, "metric": first.metric, "attempts": attempts}
        if first.drop_points <= budget:
            attempts[0].met = True
            ctx.budget = outcome(
                **common,
                met=True,
                drop_points=first.drop_points,
                message=f"accuracy drop {first.drop_points:.2f} points is within the budget of {budget:.2f}",
            )
            return
        over = (
            f"accuracy drops {first.drop_points:.2f} points, more than the budget of {budget:.2f} ({source})"
        )
        if ctx.profile.artifact.precision is not Precision.INT8:
            ctx.budget = outcome(**common, met=False, drop_points=first.drop_points, message=over)
            return
        errors = measure_layer_errors(ctx)
        culprits = _culprits(errors)
        if not allowed:
            ctx.budget = outcome(
                **common,
                met=False,
                drop_points=first.drop_points,
                culprits=culprits,
                message=f"{over}; profile '{ctx.profile.name}' cannot run layers in float, and the layers "
                f"losing the most are {_describe(errors, culprits)}",
            )
            return
        chosen, final, met = self._search(ctx, errors, score, attempts, budget)
        drop = attempts[-1].drop_points if met else first.drop_points
        best = min(a.drop_points for a in attempts)
        if met:
            message = (
                f"{over} in full int8; keeping {len(final)} layer(s) in float brings it to {drop:.2f}: "
                f"{_describe(errors, final)}"
            )
            ctx.notes.append(f"mixed precision: {message}")
        else:
            message = (
                f"{over}; keeping up to {len(chosen)} layer(s) in float got it to {best:.2f} at best; the "
                f"layers losing the most are {_describe(errors, culprits)}"
            )
        ctx.budget = outcome(
            **common,
            met=met,
            drop_points=drop,
            float_layers=final,
            culprits=[] if met else culprits,
            message=message,
        )

    def _search(
        self,
        ctx: ConversionContext,
        errors: list[LayerError],
        score: Callable[[], OutputMetrics],
        attempts: list[MixedPrecisionAttempt],
        budget: float,
    ) -> tuple[list[str], list[str], bool]:
        """(every layer tried, the float layers of the result, budget met)."""
        nodes = {e.layer: e.nodes for e in errors}

        def attempt(layers: list[str]) -> bool:
            ctx.float_layers = list(dict.fromkeys(n for layer in layers for n in nodes[layer]))
            if callable(ctx.detail):
                ctx.detail(f"mixed precision: trying {len(layers)} layer(s) in float")
            self.requantize.run(ctx)
            self.describe.run(ctx)
            drop = score().drop_points
            attempts.append(
                MixedPrecisionAttempt(float_layers=list(layers), drop_points=drop, met=drop <= budget)
            )
            return drop <= budget

        chosen: list[str] = []
        met = False
        while len(chosen) < MAX_FLOAT_LAYERS:
            picks = next_float_layers(errors, chosen)
            if not picks:
                break
            chosen += [p.layer for p in picks]
            met = attempt(chosen)
            if met:
                break
            errors = measure_layer_errors(ctx)
            nodes |= {e.layer: e.nodes for e in errors}
        if not met:  # leave the full-int8 artifact, the one the culprits were named for
            ctx.float_layers = []
            self.requantize.run(ctx)
            self.describe.run(ctx)
            return chosen, [], False
        final = list(chosen)
        for layer in reversed(chosen[:-1]):  # the last pick made the difference; try dropping earlier ones
            trial = [name for name in final if name != layer]
            if attempt(trial):
                final = trial
        if not attempts[-1].met or attempts[-1].float_layers != final:
            attempt(final)  # leave the artifact built with the final choice
        return chosen, final, True
