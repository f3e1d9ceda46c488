"""`--metric package.module:function`: a good hook judges the budget; a hook that does not import, is not
callable, raises or returns nonsense gets an error that says what to fix."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest

from edgefleet.contract.profiles import Precision
from edgefleet.converter.errors import ConversionError
from edgefleet.converter.fidelity.assess import assess, plan_fidelity
from edgefleet.converter.fidelity.custom import EvalData, load_metric_hook, run_metric_hook
from edgefleet.converter.fidelity.judge import fidelity_budget

HOOKS = """
import numpy as np

def close(fp32, artifact, data):
    error = float(np.abs(fp32["y"] - artifact["y"]).max())
    return {"score": error, "passed": error < 0.1, "name": "max abs error"}

def drop(fp32, artifact, data):
    return (97.5, 2.5)

def pair(fp32, artifact, data):
    return (0.5, True)

def nan(fp32, artifact, data):
    return {"score": float("nan"), "passed": True}

def both(fp32, artifact, data):
    return {"score": 1.0, "passed": True, "drop": 0.0}

def text(fp32, artifact, data):
    return "fine"

def boom(fp32, artifact, data):
    raise KeyError("labels")

def spoil(fp32, artifact, data):
    artifact["y"][:] = 0
    return {"score": 0.0, "passed": True}

not_callable = 3
"""


@pytest.fixture
def hooks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    (tmp_path / "user_metrics_fixture.py").write_text(textwrap.dedent(HOOKS))
    monkeypatch.syspath_prepend(str(tmp_path))
    return "user_metrics_fixture"


def _run(spec: str, artifact_offset: float = 0.0):  # type: ignore[no-untyped-def]
    fp32 = {"y": np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4)}
    artifact = {"y": fp32["y"] + artifact_offset}
    data = EvalData(inputs={"x": np.zeros((3, 2), np.float32)}, labels=None, path=None)
    return run_metric_hook(spec, load_metric_hook(spec), fp32, artifact, data)


def test_a_good_hook_gives_its_score_and_verdict(hooks: str) -> None:
    outcome = _run(f"{hooks}:close", 0.01)
    assert outcome.passed and outcome.name == "max abs error" and outcome.score == pytest.approx(0.01)
    assert not _run(f"{hooks}:close", 0.5).passed
    assert (_run(f"{hooks}:drop").score, _run(f"{hooks}:drop").drop_points) == (97.5, 2.5)
    assert _run(f"{hooks}:pair").passed is True


def test_the_hook_judges_the_budget_and_cannot_spoil_the_builtin_measures(hooks: str) -> None:
    fp32 = {"y": np.linspace(1, 2, 12, dtype=np.float32).reshape(3, 4)}
    artifact = {"y": fp32["y"] * 1.001}
    budget = fidelity_budget(1.0, 1.0, None, Precision.INT8)
    spec = f"{hooks}:spoil"
    plan = plan_fidelity({}, fp32, budget, (spec, load_metric_hook(spec)))
    judgement = assess(plan, fp32, artifact, EvalData(inputs={}, labels=None, path=None))
    assert judgement.met and judgement.metric == "custom" and judgement.judged_by.startswith("custom metric")
    assert judgement.outputs[0].sqnr_db > 50  # measured on the arrays the hook did not get to zero
    over = plan_fidelity({}, fp32, budget, (f"{hooks}:drop", load_metric_hook(f"{hooks}:drop")))
    assert not assess(over, fp32, artifact, EvalData(inputs={}, labels=None, path=None)).met  # 2.5 > 1.0


@pytest.mark.parametrize(
    ("function", "message"),
    [
        ("nan", "score: Value error, must be a finite number"),
        ("both", "exactly one of `passed`"),
        ("text", "returned str 'fine'; return a dict"),
        ("boom", "raised KeyError"),
    ],
)
def test_nonsense_from_the_hook_is_named(hooks: str, function: str, message: str) -> None:
    with pytest.raises(ConversionError, match=f"--metric {hooks}:{function}") as error:
        _run(f"{hooks}:{function}")
    assert message in str(error.value)


def test_a_hook_that_cannot_be_loaded_says_why(hooks: str) -> None:
    with pytest.raises(ConversionError, match="cannot import module 'no_such_metrics_module'"):
        load_metric_hook("no_such_metrics_module:f")
    with pytest.raises(ConversionError, match="has no callable 'not_callable'"):
        load_metric_hook(f"{hooks}:not_callable")
    with pytest.raises(ConversionError, match=r"expected package\.module:function"):
        load_metric_hook("just_a_name")
