"""How `edgefleet convert` shows target findings: summary lines, and panels nobody can miss for a model the
Edge TPU would not run (red) or a Coral bundle that is not compiled for the Edge TPU (yellow)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from edgefleet.contract.target_checks import TargetChecks

if TYPE_CHECKING:
    from edgefleet.converter.errors import TargetRefusedError
    from edgefleet.converter.pipeline import ConversionResult

MAX_LISTED_OPS = 8


def target_lines(result: ConversionResult) -> list[str]:
    """Summary lines: the target check, and the alternative artifacts the bundle carries."""
    lines = []
    checks = result.target_checks
    if checks is not None:
        lines.append(
            f"target    {checks.target}: {'ok' if checks.passed else 'ATTENTION'} - {checks.summary}"
        )
        lines.extend(
            f"          {op.op} at '{op.layer}': {op.consequence} ({op.reason})"
            for op in checks.unsupported_ops[:MAX_LISTED_OPS]
        )
    preferred = f"model.{result.profile.artifact.format.value}"
    for alternative in result.alternatives:
        facts = [alternative.kind]
        if alternative.requires_delegate:
            facts.append(f"runs only with the {alternative.requires_delegate} delegate")
        metrics = alternative.metrics
        if metrics is not None:
            accuracy = metrics.accuracy
            if accuracy is not None:
                measure = accuracy.measure or accuracy.metric
                in_db = accuracy.unit == "dB"
                value = f"{accuracy.artifact:.1f} dB" if in_db else f"{accuracy.artifact:.2f}%"
                within = {True: ", within budget", False: ", OVER budget", None: ""}[accuracy.within_budget]
                facts.append(f"accuracy {value} ({measure}{within})")
            facts.append(f"{metrics.size_bytes_artifact / 1024:.1f} KiB")
        lines.append(
            f"also      {alternative.path} ({', '.join(facts)}); the preferred artifact is {preferred}"
        )
    return lines


def _panel(title: str, body: str, style: str) -> None:
    from rich.console import Console
    from rich.panel import Panel

    console = Console(file=sys.stderr)  # the terminal's width; 80 columns when stderr is not a terminal
    console.print(Panel(body, title=title, border_style=style, style=style))


def warn_if_not_compiled(checks: TargetChecks | None) -> None:
    """Yellow panel: a Coral bundle without an Edge TPU-compiled model runs on the device's CPU."""
    if checks is None or checks.edgetpu is None or checks.edgetpu.compilation.compiled:
        return
    _panel("NOT COMPILED FOR EDGE TPU", checks.edgetpu.compilation.detail, "bold yellow")


def show_refusal(error: TargetRefusedError) -> None:
    """Red panel listing what the target cannot run (read back from the report the converter wrote)."""
    body = str(error)
    path = error.report_path
    if isinstance(path, Path) and path.is_file():
        checks = TargetChecks.model_validate(json.loads(path.read_text()))
        ops = [f"- {op.op} at '{op.layer}': {op.reason}" for op in checks.unsupported_ops[:MAX_LISTED_OPS]]
        body = "\n".join([checks.summary, *ops, f"report: {path}"])
    _panel("REFUSED FOR THIS TARGET", body, "bold red")
