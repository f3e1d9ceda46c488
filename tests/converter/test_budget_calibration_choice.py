"""Over budget with the default calibration and no --calib-method: the other methods are scored in full int8
and the first within budget (else the one closest to it) is kept; the artifact is left built with it. The
steps are stand-ins that record what they were asked to build; the choice itself is the real code."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from edgefleet.contract.profiles import load_profile
from edgefleet.converter.context import ConversionContext, ConversionRequest
from edgefleet.converter.fidelity.judge import Judgement
from edgefleet.converter.steps.calibration_ranges import calibration_method
from edgefleet.converter.steps.mixed_precision import EnforceBudget, MixedPrecisionAttempt


class _Build:
    name = "build"

    def __init__(self) -> None:
        self.methods: list[str] = []

    def run(self, ctx: ConversionContext) -> None:
        self.methods.append(calibration_method(ctx))


def _choose(
    badness: dict[str, float], ctx: ConversionContext
) -> tuple[Judgement, list[MixedPrecisionAttempt], list[str]]:
    build = _Build()

    def score() -> Judgement:
        method = calibration_method(ctx)
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
    chosen = EnforceBudget(build, _Build())._choose_calibration(ctx, first, score, attempts)
    return chosen, attempts, build.methods


def _context(make_request: Callable[..., ConversionRequest], tmp_path: Path) -> ConversionContext:
    return ConversionContext(request=make_request("rpi4"), profile=load_profile("rpi4"), work_dir=tmp_path)


def test_the_first_method_within_budget_is_kept(
    make_request: Callable[..., ConversionRequest], tmp_path: Path
) -> None:
    ctx = _context(make_request, tmp_path)
    chosen, attempts, built = _choose({"minmax": 3.0, "entropy": -0.5, "percentile": -2.0}, ctx)
    assert chosen.met and chosen.message == "entropy result"
    assert [a.calib_method for a in attempts] == ["minmax", "entropy"]  # percentile never needed
    assert built == ["entropy"] and calibration_method(ctx) == "entropy"
    assert any("entropy ranges chosen by measured loss" in note for note in ctx.notes)


def test_none_within_budget_leaves_the_closest_built(
    make_request: Callable[..., ConversionRequest], tmp_path: Path
) -> None:
    ctx = _context(make_request, tmp_path)
    chosen, attempts, built = _choose({"minmax": 3.0, "entropy": 1.0, "percentile": 2.0}, ctx)
    assert not chosen.met and chosen.message == "entropy result"
    assert [a.calib_method for a in attempts] == ["minmax", "entropy", "percentile"]
    assert built == ["entropy", "percentile", "entropy"]  # rebuilt with the closest after trying all
    assert calibration_method(ctx) == "entropy"


def test_the_default_stays_when_nothing_does_better(
    make_request: Callable[..., ConversionRequest], tmp_path: Path
) -> None:
    ctx = _context(make_request, tmp_path)
    chosen, _, built = _choose({"minmax": 1.0, "entropy": 2.0, "percentile": 3.0}, ctx)
    assert chosen.message == "minmax result" and built[-1] == "minmax"
    assert calibration_method(ctx) == "minmax" and not ctx.notes
