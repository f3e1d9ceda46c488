"""What `edgefleet convert --profile a,b,c` prints: one table of the profiles' results that fits 80
columns, then the bundles, what needs attention and the notes (a note shared by profiles is shown once)."""

from __future__ import annotations

import textwrap
from pathlib import Path

from edgefleet.contract.manifest import AccuracyMetrics
from edgefleet.converter.fidelity.outputs import whole_samples
from edgefleet.converter.pipeline import ConversionResult, ProfileFailure

WIDTH = 80
GAP = "  "


def short_accuracy(accuracy: AccuracyMetrics | None) -> str:
    """The headline measure in a table cell, with the samples it moved ("1/360")."""
    if accuracy is None:
        return "not measured"
    measure = accuracy.measure or accuracy.metric
    if measure == "top1":
        lost = whole_samples(accuracy.drop_points, accuracy.samples).replace(" of ", "/").split()[0]
        text = f"top-1 {accuracy.artifact:.1f}%, drop {accuracy.drop_points:+.2f} ({lost})"
    elif measure == "top1_agreement":
        differ = whole_samples(100 - accuracy.artifact, accuracy.samples).replace(" of ", "/").split()[0]
        text = f"agrees {accuracy.artifact:.1f}% ({differ} differ)"
    elif accuracy.unit == "dB":
        text = f"SQNR {accuracy.artifact:.1f} dB"
    else:
        text = f"{measure} drop {accuracy.drop_points:+.2f}"
    return text + (" OVER" if accuracy.within_budget is False else "")


def _size(n: int) -> str:
    return f"{n / 1024:.0f} KiB" if n < 1024**2 else f"{n / 1024**2:.2f} MiB"


def _row(outcome: ConversionResult | ProfileFailure) -> list[str]:
    if isinstance(outcome, ProfileFailure):
        return [outcome.profile, "failed", "see below", "", ""]
    spec, metrics = outcome.profile.artifact, outcome.metrics
    return [
        outcome.profile.name,
        f"{spec.format.value}/{spec.precision.value}",
        short_accuracy(metrics.accuracy),
        _size(metrics.size_bytes_artifact),
        f"{metrics.host_latency_ms_artifact:.3f}",
    ]


def table_lines(outcomes: list[ConversionResult | ProfileFailure], width: int = WIDTH) -> list[str]:
    """Profile, artifact, accuracy, size, host latency; the latency column goes first when it does not
    fit `width` (it is the host's figure, not the device's), then the size column."""
    header = ["profile", "artifact", "accuracy", "size", "host ms"]
    rows = [header, *(_row(outcome) for outcome in outcomes)]
    keep = len(header)
    while keep > 3:
        widths = [max(len(row[i]) for row in rows) for i in range(keep)]
        if sum(widths) + len(GAP) * (keep - 1) <= width:
            break
        keep -= 1
    widths = [max(len(row[i]) for row in rows) for i in range(keep)]
    right = {3, 4}  # numbers align right
    return [
        GAP.join(
            cell.rjust(widths[i]) if i in right else cell.ljust(widths[i])
            for i, cell in enumerate(row[:keep])
        ).rstrip()
        for row in rows
    ]


def _here(path: Path) -> str:
    """`path` relative to the working directory when it is below it (shorter lines), else as given."""
    return (
        str(path.relative_to(Path.cwd()))
        if path.is_absolute() and path.is_relative_to(Path.cwd())
        else str(path)
    )


def profiles_summary(outcomes: list[ConversionResult | ProfileFailure], seconds: float) -> list[str]:
    lines = table_lines(outcomes)
    lines.append("")
    notes: dict[str, list[str]] = {}
    failures: dict[str, list[str]] = {}  # the same reason for several profiles is said once
    for outcome in outcomes:
        if isinstance(outcome, ProfileFailure):
            failures.setdefault(str(outcome.error), []).append(outcome.profile)
            continue
        name = outcome.profile.name
        bundle = outcome.bundle_path
        if not any(line.startswith("bundles   ") for line in lines):
            lines.append(f"bundles   in {_here(bundle.parent)} (reports: <bundle>.report.html beside each)")
        lines.append(f"          {bundle.name}")
        html = [path for path in outcome.report_files if path.suffix == ".html"]
        lines.extend(f"          report {_here(path)}" for path in html if path.parent != bundle.parent)
        checks = outcome.target_checks
        if checks is not None and not checks.passed:
            lines.append(f"attention {name}: {checks.target}: {checks.summary}")
        for note in outcome.notes:
            notes.setdefault(note, []).append(name)
    lines.extend(f"failed    {', '.join(names)}: {reason}" for reason, names in failures.items())
    lines.extend(f"note      {', '.join(names)}: {note}" for note, names in notes.items())
    made = sum(isinstance(outcome, ConversionResult) for outcome in outcomes)
    lines.append(f"done      {made} of {len(outcomes)} profiles in {seconds:.1f} s; latency is the host's")
    return [_wrap(line) for line in lines]


def _wrap(line: str) -> str:
    """Long notes and reasons continue under their text (paths are never split)."""
    if len(line) <= WIDTH:
        return line
    return textwrap.fill(
        line, WIDTH, subsequent_indent=" " * 10, break_long_words=False, break_on_hyphens=False
    )
