"""The convert command's progress display (rich, on stderr): a live bar naming the running step and what
it is doing inside (e.g. the mixed-precision search), and one line per finished step with its time.
On a non-terminal stderr only the per-step lines are printed.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any


@dataclass
class ConversionProgress:
    """Callbacks for pipeline.convert: `step_done` (its `progress`) and `status` (its `status`)."""

    progress: Any  # rich.progress.Progress
    task: Any

    def status(self, text: str) -> None:
        """What runs now: a step's name, or '<step>: <detail>' from inside a long step."""
        self.progress.update(self.task, description=text)

    def step_done(self, index: int, total: int, name: str, seconds: float) -> None:
        self.progress.update(self.task, completed=index, total=total)
        self.progress.console.print(f"  [{index:>2}/{total}] {name:<34} {seconds:6.2f} s", highlight=False)


@contextmanager
def conversion_progress() -> Iterator[ConversionProgress]:
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
    )

    console = Console(stderr=True)
    columns = (
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=True) as progress:
        yield ConversionProgress(progress, progress.add_task("starting", total=None))
