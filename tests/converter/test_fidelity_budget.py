"""The fidelity budget over every output: points for percentage measures, a dB floor for SQNR, the worst
output decides, and the verdict names the measures that judged it."""

from __future__ import annotations

import numpy as np

from edgefleet.contract.profiles import Precision
from edgefleet.converter.fidelity.judge import DEFAULT_MIN_SQNR_DB, default_kind_note, fidelity_budget, judge
from edgefleet.converter.fidelity.outputs import measure_output

RNG = np.random.default_rng(3)
BUDGET = fidelity_budget(None, 1.0, None, Precision.INT8)


def _outputs(noise: float, flips: int) -> list:  # type: ignore[type-arg]
    logits = RNG.normal(0, 1, (100, 10)).astype(np.float32)
    noisy_logits = logits.copy()
    noisy_logits[:flips] = noisy_logits[:flips, ::-1]  # these samples change their top-1 class
    features = RNG.normal(0, 1, (100, 16)).reshape(100, 4, 4).astype(np.float32)
    noisy = features + RNG.normal(0, noise, features.shape).astype(np.float32)
    return [
        measure_output("logits", "classification", logits, noisy_logits),
        measure_output("features", "tensor", features, noisy),
    ]


def test_defaults_come_from_the_profile_and_the_precision() -> None:
    assert (BUDGET.max_drop_points, BUDGET.drop_source) == (1.0, "profile")
    assert (BUDGET.min_sqnr_db, BUDGET.sqnr_source) == (DEFAULT_MIN_SQNR_DB[Precision.INT8], "default")
    fp16 = fidelity_budget(0.5, 1.0, None, Precision.FP16)
    assert fp16.min_sqnr_db == DEFAULT_MIN_SQNR_DB[Precision.FP16] > BUDGET.min_sqnr_db
    assert fidelity_budget(0.5, 1.0, 42.0, Precision.INT8).sqnr_source == "request"


def test_every_output_is_held_to_its_own_bound() -> None:
    good = judge(_outputs(noise=0.02, flips=0), BUDGET)
    assert good.met and good.badness <= 0 and all(o.within_budget for o in good.outputs)
    assert good.judged_by == "top-1 agreement with fp32 on 'logits'; SQNR/cosine vs fp32 on 'features'"
    assert good.drop_points == 0.0 and good.sqnr_db is not None and good.sqnr_db > 30

    broken_tensor = judge(_outputs(noise=0.5, flips=0), BUDGET)  # ~6 dB: the top-1 output alone would pass
    assert not broken_tensor.met and broken_tensor.metric == "sqnr" and broken_tensor.worst == "features"
    assert [o.within_budget for o in broken_tensor.outputs] == [True, False]
    assert "'features' SQNR/cosine vs fp32" in broken_tensor.message and "< 20.0 dB" in broken_tensor.message

    flipped = judge(_outputs(noise=0.02, flips=5), BUDGET)
    assert not flipped.met and flipped.metric == "top1_agreement" and flipped.badness == 4.0
    assert "drop 5.00 > 1.00 points" in flipped.message


def test_badness_ranks_attempts_in_the_units_of_the_worst_output() -> None:
    worse, better = judge(_outputs(noise=0.5, flips=0), BUDGET), judge(_outputs(noise=0.2, flips=0), BUDGET)
    assert worse.badness > better.badness > 0  # both over: the search keeps the better one


def test_the_note_says_plainly_when_sqnr_judged_an_unnamed_output() -> None:
    outputs = _outputs(noise=0.02, flips=0)
    note = default_kind_note(outputs, BUDGET)
    assert note is not None and note.startswith("'features': not a classification output")
    assert "SQNR/cosine" in note and "--output-kind features=detection" in note
    named = [outputs[0], outputs[1].model_copy(update={"kind_source": "request"})]
    assert default_kind_note(named, BUDGET) is None
