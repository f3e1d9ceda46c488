"""Structured device logs: one event per line, `key=value` pairs, written to stderr.

Values with spaces, quotes or `=` are JSON-quoted so every line stays machine-parseable.
"""

from __future__ import annotations

import json
import sys
import threading
import traceback
from datetime import datetime, timezone
from typing import Any, TextIO

_LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}
_lock = threading.Lock()
_state: dict[str, Any] = {"level": 20, "stream": None}


def configure(level: str = "info", stream: TextIO | None = None) -> None:
    _state["level"] = _LEVELS.get(level, 20)
    _state["stream"] = stream


def _fmt(value: Any) -> str:
    text = value if isinstance(value, str) else str(value)
    if text == "" or any(c in text for c in ' "=\n\t\\'):
        return json.dumps(text)
    return text


class EventLog:
    """A logger for one component: `log.info("bundle_activated", version="2", ms=41.2)`."""

    def __init__(self, component: str) -> None:
        self.component = component

    def _emit(self, level: str, event: str, fields: dict[str, Any]) -> None:
        if _LEVELS[level] < _state["level"]:
            return
        at = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
        parts = [f"ts={at}", f"level={level}", f"component={self.component}", f"event={event}"]
        parts += [f"{key}={_fmt(value)}" for key, value in fields.items() if value is not None]
        line = " ".join(parts) + "\n"
        stream = _state["stream"] or sys.stderr
        with _lock:
            try:
                stream.write(line)
                stream.flush()
            except (OSError, ValueError):
                pass  # a closed stderr must not take the agent down

    def debug(self, event: str, **fields: Any) -> None:
        self._emit("debug", event, fields)

    def info(self, event: str, **fields: Any) -> None:
        self._emit("info", event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._emit("warning", event, fields)

    def error(self, event: str, **fields: Any) -> None:
        self._emit("error", event, fields)

    def exception(self, event: str, exc: BaseException, **fields: Any) -> None:
        """An unexpected exception, with where it happened (last frame), still on one line."""
        frames = traceback.extract_tb(exc.__traceback__)
        where = f"{frames[-1].filename}:{frames[-1].lineno}" if frames else None
        self._emit("error", event, {**fields, "error": f"{type(exc).__name__}: {exc}", "where": where})
