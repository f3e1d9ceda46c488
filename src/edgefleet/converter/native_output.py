"""What the toolchains' native code prints while a conversion runs (TensorFlow's and absl's log lines,
LiteRT's "Created TensorFlow Lite XNNPACK delegate", oneDNN notices) goes to a log file, not into the
progress display: those libraries write to file descriptor 2 directly, before their log levels apply.
Python's own stderr keeps going to the terminal. `convert --verbose` leaves everything on the terminal.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def native_stderr_to_log() -> Iterator[Path]:
    """Send file descriptor 2 to a log file for the duration; yields its path (removed when empty)."""
    sys.stderr.flush()
    handle, name = tempfile.mkstemp(prefix="edgefleet-convert-", suffix=".log")
    log = Path(name)
    saved = os.dup(2)
    python_stderr = sys.stderr
    sys.stderr = os.fdopen(os.dup(saved), "w", buffering=1, encoding=python_stderr.encoding, errors="replace")
    os.dup2(handle, 2)
    os.close(handle)
    try:
        yield log
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        sys.stderr.close()
        sys.stderr = python_stderr
        if log.exists() and log.stat().st_size == 0:
            log.unlink()
