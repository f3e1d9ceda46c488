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
    # Python's stderr keeps its destination: when it writes to descriptor 2 it gets a copy of the original
    # descriptor; any other stream (a test's capture, an IDE's console) is left as it is
    replaced = _writes_to_fd2(python_stderr)
    if replaced:
        encoding = getattr(python_stderr, "encoding", None) or "utf-8"
        sys.stderr = os.fdopen(os.dup(saved), "w", buffering=1, encoding=encoding, errors="replace")
    os.dup2(handle, 2)
    os.close(handle)
    try:
        yield log
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        if replaced:
            sys.stderr.close()
            sys.stderr = python_stderr
        if log.exists() and log.stat().st_size == 0:
            log.unlink()


def _writes_to_fd2(stream: object) -> bool:
    try:
        return bool(stream.fileno() == 2)  # type: ignore[attr-defined]
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is an OSError and a ValueError
        return False
