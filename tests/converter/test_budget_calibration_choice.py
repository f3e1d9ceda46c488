"""Over budget with the default calibration and no --calib-method: percentile ranges are scored in full int8
and kept when within budget or closer to it; the artifact is left built with the method kept and that
method is the one in force. The quantizer is a stand-in that records what it was asked to build (an
artifact named after the method); the choice itself is the real code."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from edgefleet.contract.profiles import load_profile
from edgefleet.converter.context import ConversionContext, ConversionRequest
from edgefleet.converter.fidelity.judge import Judgement
from edgefleet.converter.steps.calibration_ranges import calibration_method
from edgefleet.converter.steps.mixed_precision import EnforceBudget, MixedPrecisionAttempt
from edgefleet.converter.steps.quantization import QuantizationChoice, choice_in_force


class _Build:
    name = "build"

    def __init__(self) -> None:
        self.methods: list[str] = []

    def run(self, ctx: ConversionContext) -> None:
        ctx.artifact_path = self.quantize(ctx, choice_in_force(ctx))

    def quantize(self, ctx: ConversionContext, choice: QuantizationChoice) -> Path:
        self.methods.append(choice.calib_method)
        return ctx.work_dir / choice.calib_method


class _Describe:
    name = "describe"

    def run(self, ctx: ConversionContext) -> None:
        pass


def _choose(
    badness: dict[str, float], ctx: ConversionContext
) -> tuple[Judgement, list[MixedPrecisionAttempt], list[str]]:
    build = _Build()
    ctx.artifact_path = ctx.work_dir / calibration_method(ctx)  # the artifact as the pipeline built it

    def score() -> Judgement:
        method = ctx.need(ctx.artifact_path, "the artifact").name  # what the artifact was built with
        return Judgement(
            outputs=[],
            custom=None,
            met=badness[method] <= 0,
            badness=badness[method],
            metric="sqnr",
            worst="y",
            judged_by="SQNR",
            drop_points=None,
            sqnr_db=20.0 - badness[method],
            message=f"{method} result",
        )

    first = score()
    attempts = [MixedPrecisionAttempt.of([], first)]
    chosen = EnforceBudget(build, _Describe())._choose_calibration(ctx, first, score, attempts)
    return chosen, attempts, build.methods


def _context(make_request: Callable[..., ConversionRequest], tmp_path: Path) -> ConversionContext:
    return ConversionContext(request=make_request("rpi4"), profile=load_profile("rpi4"), work_dir=tmp_path)


def test_percentile_is_kept_when_it_is_within_budget(
    make_request: Callable[..., ConversionRequest], tmp_path: Path
) -> None:
    ctx = _context(make_request, tmp_path)
    chosen, attempts, built = _choose({"minmax": 3.0, "percentile": -0.5}, ctx)
    assert chosen.met and chosen.message == "percentile result"
    assert [a.calib_method for a in attempts] == ["minmax", "percentile"]  # entropy only when asked for
    assert built == ["percentile"] and calibration_method(ctx) == "percentile"
    assert any("percentile ranges chosen by measured loss" in note for note in ctx.notes)


def test_the_closer_method_is_kept_when_neither_is_within_budget(
    make_request: Callable[..., ConversionRequest], tmp_path: Path
) -> None:
    ctx = _context(make_request, tmp_path)
    chosen, _, built = _choose({"minmax": 3.0, "percentile": 1.0}, ctx)
    assert not chosen.met and chosen.message == "percentile result"
    assert built == ["percentile"] and calibration_method(ctx) == "percentile"


def test_the_default_is_rebuilt_when_it_was_closer(
    make_request: Callable[..., ConversionRequest], tmp_path: Path
) -> None:
    ctx = _context(make_request, tmp_path)
    chosen, _, built = _choose({"minmax": 1.0, "percentile": 3.0}, ctx)
    assert chosen.message == "minmax result" and built == ["percentile", "minmax"]
    assert calibration_method(ctx) == "minmax" and not ctx.notes
