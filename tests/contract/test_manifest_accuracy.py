"""AccuracyMetrics grew per-output measures without breaking either side of the contract: manifests of
older converters still read, and an older reader (metric in two values, unknown fields ignored) accepts
the new ones."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

from edgefleet.contract.manifest import AccuracyMetrics


class _OlderAccuracyMetrics(BaseModel):
    """AccuracyMetrics as agents built before per-output measures declare it."""

    model_config = ConfigDict(extra="ignore")

    metric: Literal["top1", "top1_agreement"]
    samples: int
    fp32: float | None
    artifact: float
    drop_points: float


def test_an_older_manifest_still_reads() -> None:
    old = {"metric": "top1", "samples": 360, "fp32": 91.67, "artifact": 91.39, "drop_points": 0.28}
    metrics = AccuracyMetrics.model_validate(old)
    assert metrics.measure is None and metrics.unit == "%" and metrics.within_budget is None


def test_an_older_reader_accepts_a_task_measure_and_an_sqnr_headline() -> None:
    for new in (
        AccuracyMetrics(
            metric="top1_agreement",
            samples=64,
            fp32=None,
            artifact=93.1,
            drop_points=6.9,
            measure="detection_f1",
            output="output0",
            judged_by="detection F1 vs fp32 on 'output0'",
            within_budget=False,
        ),
        AccuracyMetrics(
            metric="top1_agreement",
            samples=64,
            fp32=None,
            artifact=27.4,
            drop_points=0.0,
            measure="sqnr",
            unit="dB",
            sqnr_db=27.4,
        ),
    ):
        older = _OlderAccuracyMetrics.model_validate(new.model_dump(mode="json"))
        assert older.metric == "top1_agreement" and older.artifact == new.artifact
