"""Where the fleet commands' tables go: the terminal's width on a terminal; on a file or pipe, the width
COLUMNS gives, else a wide one (rows are not wrapped at a guessed 80 columns)."""

from __future__ import annotations

import os
import sys

from rich.console import Console


def stdout_console(pipe_width: int) -> Console:
    if sys.stdout.isatty() or "COLUMNS" in os.environ:
        return Console()
    return Console(width=pipe_width)
