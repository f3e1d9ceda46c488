"""The command line's own mistakes: one line saying what was wrong, and the likely intended word."""

from __future__ import annotations

import argparse
import json

import pytest

from edgefleet.cli import main


@pytest.mark.parametrize(
    ("argv", "hint"),
    [
        (["covnert", "model.onnx"], "did you mean 'convert'?"),
        (["profiles", "lst"], "did you mean 'list'?"),
        (["status", "--broker", "mqtt://127.0.0.1:1", "--jsn"], "did you mean '--json'?"),
    ],
)
def test_a_typo_gets_a_suggestion_and_no_usage_block(
    argv: list[str], hint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and hint in err
    assert "usage:" not in err and len(err.splitlines()) == 2


def test_nothing_is_suggested_when_nothing_is_close(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["xyzzy"])
    assert "did you mean" not in capsys.readouterr().err


def test_commands_a_script_calls_print_json(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["profiles", "list", "--json"]) == 0
    names = [p["name"] for p in json.loads(capsys.readouterr().out)]
    assert "rpi4" in names and "jetson-orin-nano" in names
    assert main(["profiles", "show", "rpi4", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["memory_budget_mb"] == 512
    assert main(["keys", "init", "--dir", str(tmp_path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["public_key"] == str(tmp_path / "fleet.pub")


def test_convert_choices_are_the_requests_own() -> None:
    """The parser stays light (no converter import), so its choices are written out; they must be the
    request's Literal types exactly."""
    from typing import get_args

    from edgefleet.cli import build_parser
    from edgefleet.converter.context import CalibrationMethod, PruneCriterion

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    convert = sub.choices["convert"]
    choices = {a.dest: a.choices for a in convert._actions if a.choices}
    assert tuple(choices["prune_criterion"]) == get_args(PruneCriterion)
    assert tuple(choices["calib_method"]) == get_args(CalibrationMethod)
