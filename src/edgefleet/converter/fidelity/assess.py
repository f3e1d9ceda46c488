"""One fidelity assessment: the plan (each output's kind, the budget, the hook) fixed once per conversion,
applied to fp32 and artifact outputs on the evaluation set."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from edgefleet.converter.fidelity.custom import EvalData, MetricHook, run_metric_hook
from edgefleet.converter.fidelity.judge import FidelityBudget, Judgement, default_kind_note, judge
from edgefleet.converter.fidelity.kinds import KindSource, OutputKind, resolve_kinds
from edgefleet.converter.fidelity.outputs import measure_outputs


@dataclass(frozen=True)
class FidelityPlan:
    kinds: dict[str, tuple[OutputKind, KindSource]]  # every output, in the source model's order
    budget: FidelityBudget
    hook: tuple[str, MetricHook] | None = None  # (`package.module:function`, the callable)
    allow_low_accuracy: bool = False  # fp32 at or below chance against the labels: a note, not an error


def plan_fidelity(
    requested: Mapping[str, OutputKind],
    fp32: Mapping[str, np.ndarray],
    budget: FidelityBudget,
    hook: tuple[str, MetricHook] | None = None,
) -> FidelityPlan:
    """Kinds from the request, else from each fp32 output's per-sample shape."""
    shapes = {name: tuple(array.shape[1:]) for name, array in fp32.items()}
    return FidelityPlan(kinds=resolve_kinds(requested, shapes), budget=budget, hook=hook)


def assess(
    plan: FidelityPlan, fp32: dict[str, np.ndarray], artifact: dict[str, np.ndarray], data: EvalData
) -> Judgement:
    outputs = measure_outputs(plan.kinds, fp32, artifact, data.labels, plan.allow_low_accuracy)
    custom = None
    if plan.hook is not None:
        custom = run_metric_hook(plan.hook[0], plan.hook[1], fp32, artifact, data)
    return judge(outputs, plan.budget, custom)


# Measures that count whole samples: one changed prediction moves them by 100/n points.
PER_SAMPLE_MEASURES = ("top1", "top1_agreement", "ctc_string_equality")


def fidelity_notes(
    plan: FidelityPlan, judgement: Judgement, labels: np.ndarray | None, samples: int
) -> list[str]:
    """What the user should know about how fidelity was judged, said plainly."""
    notes = []
    budget = plan.budget.max_drop_points
    step = 100.0 / max(samples, 1)
    coarse = [o for o in judgement.outputs if o.metric in PER_SAMPLE_MEASURES]
    if coarse and step > budget > 0:
        needed = math.floor(100.0 / budget) + 1
        notes.append(
            f"one evaluation sample is worth {step:.2f} points of {coarse[0].metric} on "
            f"'{coarse[0].output}', more than the {budget:g}-point budget: a single changed prediction "
            f"fails it; evaluate on at least {needed} samples"
        )
    guessed = default_kind_note(judgement.outputs, plan.budget)
    if guessed is not None:
        notes.append(guessed)
    if labels is not None and not any(kind == "classification" for kind, _ in plan.kinds.values()):
        notes.append(
            "labels `y` of the evaluation data were not used: no output is a classification output (they "
            "score the first one)"
        )
    if judgement.custom is not None:
        notes.append(
            f"--metric {judgement.custom.function} judged the budget; the per-output measures are for "
            "information"
        )
    return notes
