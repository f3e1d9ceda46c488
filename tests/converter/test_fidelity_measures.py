"""Per-output measures on small real arrays: top-1 with labels on the first classification output, CTC
decoded-string equality, mask IoU, SQNR and cosine; and how an output's kind is named or guessed."""

from __future__ import annotations

import numpy as np
import pytest

from edgefleet.converter.errors import ConversionError
from edgefleet.converter.fidelity.ctc import greedy_decode, string_equality
from edgefleet.converter.fidelity.kinds import EVERY_OUTPUT, guess_kind, parse_output_kinds, resolve_kinds
from edgefleet.converter.fidelity.outputs import measure_output, measure_outputs
from edgefleet.converter.fidelity.segmentation import mask_iou, mask_threshold
from edgefleet.converter.fidelity.tensor import cosine_similarity

RNG = np.random.default_rng(7)


def ctc_scores(paths: list[list[int]], classes: int = 5) -> np.ndarray:
    """[N, T, classes] one-hot-ish scores along the given best paths (blank = 0)."""
    scores = RNG.uniform(0, 0.1, (len(paths), len(paths[0]), classes)).astype(np.float32)
    for n, path in enumerate(paths):
        scores[n, np.arange(len(path)), path] = 1.0
    return scores


def test_greedy_ctc_collapses_repeats_and_drops_blanks() -> None:
    assert greedy_decode(ctc_scores([[1, 1, 0, 1, 2, 2, 0, 0]])) == [(1, 1, 2)]


def test_ctc_equality_detects_one_changed_character() -> None:
    fp32 = ctc_scores([[3, 3, 0, 1, 2, 0], [4, 0, 4, 2, 2, 1]])
    artifact = fp32 + RNG.normal(0, 0.01, fp32.shape).astype(np.float32)  # small noise: same strings
    assert string_equality(fp32, artifact) == (100.0, 0)
    artifact[1, 3] = 0.0
    artifact[1, 3, 3] = 1.0  # one character of the second string changes: 2 -> 3
    assert string_equality(fp32, artifact) == (50.0, 1)
    metrics = measure_output("text", "ctc", fp32, artifact)
    assert (metrics.metric, metrics.artifact, metrics.drop_points) == ("ctc_string_equality", 50.0, 50.0)
    assert "1 of 2 decoded strings differ" in (metrics.detail or "")


def test_ctc_needs_a_time_axis() -> None:
    with pytest.raises(ConversionError, match=r"\[samples, time, classes\]"):
        greedy_decode(np.zeros((2, 5), np.float32), "x")


def test_mask_iou_of_probability_maps_and_the_threshold_rule() -> None:
    fp32 = np.zeros((2, 1, 8, 8), np.float32)
    fp32[0, 0, 2:6, 2:6] = 0.9  # a 4x4 object
    artifact = fp32.copy()
    artifact[0, 0, 2:6, 5] = 0.4  # one column of it falls under 0.5: 12 of 16 pixels kept
    assert mask_threshold(fp32) == 0.5
    assert mask_iou(fp32, artifact, 0.5) == pytest.approx((12 / 16 + 1.0) / 2 * 100)  # empty vs empty: 1
    assert mask_threshold(fp32 * 8 - 4) == 0.0  # logits: sigmoid(0) = 0.5
    assert mask_threshold(fp32 * 10) == pytest.approx(4.5)  # a heat map: half its maximum
    metrics = measure_output("mask", "segmentation", fp32, artifact)
    assert metrics.metric == "mask_iou" and metrics.drop_points == pytest.approx(12.5)


def test_sqnr_and_cosine_judge_tensors_and_catch_a_broken_artifact() -> None:
    fp32 = RNG.normal(0, 1, (16, 8, 4, 4)).astype(np.float32)
    good = fp32 + RNG.normal(0, 0.03, fp32.shape).astype(np.float32)  # ~30 dB
    broken = fp32 * 0.2 + RNG.normal(0, 0.5, fp32.shape).astype(np.float32)  # crushed + noise
    ok = measure_output("features", "tensor", fp32, good)
    bad = measure_output("features", "tensor", fp32, broken)
    assert ok.metric == "sqnr" and ok.unit == "dB" and 28 < ok.artifact < 33 and ok.drop_points is None
    assert bad.sqnr_db < 3 and bad.cosine is not None and ok.cosine is not None
    assert bad.cosine < 0.5 < ok.cosine
    assert cosine_similarity(np.zeros((2, 3)), np.zeros((2, 3))) == 1.0


def test_labels_score_the_first_classification_output_only() -> None:
    logits = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]], np.float32)
    flipped = logits.copy()
    flipped[3] = [0.4, 0.6]
    labels = np.array([1, 0, 1, 0])
    kinds = {"boxes": ("tensor", "shape"), "a": ("classification", "shape"), "b": ("classification", "shape")}
    fp32 = {"boxes": logits, "a": logits, "b": logits}
    artifact = {"boxes": flipped, "a": flipped, "b": flipped}
    boxes, a, b = measure_outputs(kinds, fp32, artifact, labels)  # type: ignore[arg-type]
    assert (a.metric, a.fp32, a.artifact, a.drop_points, a.agreement) == ("top1", 100.0, 75.0, 25.0, 75.0)
    assert (b.metric, b.fp32, b.artifact, b.drop_points) == ("top1_agreement", None, 75.0, 25.0)
    assert boxes.metric == "sqnr" and boxes.agreement is None


def test_output_kinds_from_flags_and_from_shapes() -> None:
    assert parse_output_kinds(["detection"]) == {EVERY_OUTPUT: "detection"}
    assert parse_output_kinds(["Identity:0=ctc", "a=b=tensor"]) == {"Identity:0": "ctc", "a=b": "tensor"}
    with pytest.raises(ConversionError, match=r"unknown kind 'boxes'.*classification, detection"):
        parse_output_kinds(["boxes"])
    with pytest.raises(ConversionError, match="already has kind"):
        parse_output_kinds(["x=ctc", "x=tensor"])
    assert [guess_kind(s) for s in [(10,), (10, 1, 1), (1, 10), (1,), (4, 8400), (3, 96, 96)]] == [
        "classification",
        "classification",
        "classification",
        "tensor",
        "tensor",
        "tensor",
    ]
    shapes = {"logits": (10,), "boxes": (84, 8400), "maps": (1, 32, 32)}
    assert resolve_kinds({"maps": "segmentation", EVERY_OUTPUT: "detection"}, shapes) == {
        "logits": ("detection", "request"),
        "boxes": ("detection", "request"),
        "maps": ("segmentation", "request"),
    }
    assert resolve_kinds({}, shapes)["boxes"] == ("tensor", "shape")
    with pytest.raises(ConversionError, match=r"no output 'box'.*logits, boxes, maps"):
        resolve_kinds({"box": "detection"}, shapes)


def test_a_non_finite_artifact_output_has_the_lowest_sqnr_not_the_highest() -> None:
    from edgefleet.converter.steps.layer_error import MAX_SQNR_DB, sqnr_db

    reference = np.ones((4, 8), np.float32)
    for bad in (np.nan, np.inf):
        observed = reference.copy()
        observed[0, 0] = bad  # an fp16 overflow
        assert sqnr_db(reference, observed) == -MAX_SQNR_DB


def test_a_budget_finer_than_one_evaluation_sample_is_said() -> None:
    from edgefleet.converter.fidelity.assess import FidelityPlan, fidelity_notes
    from edgefleet.converter.fidelity.judge import FidelityBudget, Judgement
    from edgefleet.converter.fidelity.outputs import OutputMetrics

    def notes(samples: int, max_drop: float) -> list[str]:
        budget = FidelityBudget(
            max_drop_points=max_drop, drop_source="profile", min_sqnr_db=20.0, sqnr_source="default"
        )
        plan = FidelityPlan(kinds={"text": ("ctc", "request")}, budget=budget)
        output = OutputMetrics(
            output="text",
            kind="ctc",
            metric="ctc_string_equality",
            fp32=None,
            artifact=98.44,
            drop_points=1.56,
            agreement=None,
            sqnr_db=30.0,
        )
        judgement = Judgement(
            outputs=[output], custom=None, met=False, badness=1.06, metric="ctc_string_equality",
            worst="text", judged_by="CTC", drop_points=1.56, sqnr_db=None, message="over",
        )  # fmt: skip
        return fidelity_notes(plan, judgement, None, samples)

    (said,) = notes(64, 0.5)  # jetson-nano's budget: one string of 64 is 1.56 points
    assert "worth 1.56 points" in said and "at least 201 samples" in said
    assert notes(256, 0.5) == []


def test_labels_that_cannot_be_right_stop_the_conversion() -> None:
    """Issue 11: labels off by one gave 'fp32 0.00% -> artifact 0.00%', a green report and exit 0."""
    rng = np.random.default_rng(4)
    scores = rng.normal(size=(40, 10)).astype(np.float32)
    truth = scores.argmax(axis=1)
    assert measure_output("logits", "classification", scores, scores, truth).fp32 == 100.0
    with pytest.raises(ConversionError, match=r"labels `y` run from 1 to 10, but output 'logits' has 10"):
        measure_output("logits", "classification", scores, scores, truth + 1)
    shifted = (truth + 1) % 10  # in range, every one wrong
    with pytest.raises(
        ConversionError, match=r"scores 0.00% top-1 .* \(0 of 40 samples\), no better than chance"
    ):
        measure_output("logits", "classification", scores, scores, shifted)
    allowed = measure_output("logits", "classification", scores, scores, shifted, allow_low_accuracy=True)
    assert allowed.fp32 == 0.0
    with pytest.raises(ConversionError, match="whole class indices"):
        measure_output("logits", "classification", scores, scores, truth + 0.5)
