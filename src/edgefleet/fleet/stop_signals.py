"""Long-running host commands (watch, exporter) end cleanly on SIGTERM/SIGINT: the signal sets an event the
command waits on, and the previous handlers come back afterwards (tests run the commands in-process)."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


@contextmanager
def stop_on_signals(stop: threading.Event, *signums: int) -> Iterator[threading.Event]:
    """Set `stop` when one of `signums` arrives (default SIGTERM) while the block runs."""
    wanted = signums or (signal.SIGTERM,)
    if threading.current_thread() is not threading.main_thread():
        yield stop  # handlers can only be installed from the main thread; the caller stops us otherwise
        return

    def handle(signum: int, frame: Any) -> None:
        stop.set()

    previous = {signum: signal.signal(signum, handle) for signum in wanted}
    try:
        yield stop
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
