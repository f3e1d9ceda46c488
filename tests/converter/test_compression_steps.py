"""How compression steps report into a conversion: the budget warning and refused option combinations."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from edgefleet.contract.profiles import load_profile
from edgefleet.converter.compression.stats import CompressionReport, ModelStats
from edgefleet.converter.compression.steps import _record
from edgefleet.converter.context import ConversionContext, ConversionRequest
from edgefleet.converter.errors import ConversionError
from edgefleet.converter.pipeline import convert


def _stats(accuracy: float) -> ModelStats:
    return ModelStats(
        params=100,
        nonzero_params=100,
        macs=1000,
        size_bytes=400,
        zipped_size_bytes=380,
        host_latency_ms=0.1,
        accuracy=accuracy,
    )


@pytest.mark.parametrize(
    ("drop", "max_drop", "warned"), [(1.8, 1.0, True), (0.3, 1.0, False), (1.8, 2.0, False)]
)
def test_compression_that_costs_more_than_the_budget_is_flagged(
    make_request: Callable[..., ConversionRequest], tmp_path: Path, drop: float, max_drop: float, warned: bool
) -> None:
    ctx = ConversionContext(
        request=make_request("jetson-nano", max_drop=max_drop),
        profile=load_profile("jetson-nano"),
        work_dir=tmp_path,
    )
    report = _report(98.8, 98.8 - drop)
    _record(ctx, report)
    assert ctx.compression == [report]
    assert any(f"low rank (energy 0.5) alone loses {drop:.2f} points" in note for note in ctx.notes) == warned


def test_without_max_drop_the_profile_budget_applies(
    make_request: Callable[..., ConversionRequest], tmp_path: Path
) -> None:
    profile = load_profile("jetson-nano")
    ctx = ConversionContext(request=make_request("jetson-nano"), profile=profile, work_dir=tmp_path)
    _record(ctx, _report(98.8, 98.8 - profile.max_accuracy_drop_points - 0.5))
    _record(ctx, _report(98.8, 98.8 - profile.max_accuracy_drop_points + 0.1))
    assert [f"{profile.max_accuracy_drop_points:.2f}-point budget" in note for note in ctx.notes] == [True]


def _report(before: float, after: float) -> CompressionReport:
    return CompressionReport(
        method="low_rank",
        setting="energy 0.5",
        accuracy_metric="top1",
        eval_samples=360,
        before=_stats(before),
        after=_stats(round(after, 2)),
    )


def test_train_without_a_fine_tuning_step_is_refused(
    make_request: Callable[..., ConversionRequest], reference_dir: Path
) -> None:
    with pytest.raises(ConversionError, match=r"--train .* fine-tuning data of --prune, --sparsity-2-4"):
        convert(make_request("jetson-nano", train=reference_dir / "calib.npz"))
