"""Structured device logs on stdlib logging: one event per line, `key=value` pairs, written to stderr.

Every component logs through `logging.getLogger("edgefleet.agent.<component>")`, so a deployment may attach
its own handlers (journald, a file) to `edgefleet.agent`; the agent's own handler formats each record as
`ts=... level=... component=... event=... key=value ...`. Values with spaces, quotes or `=` are JSON-quoted
so every line stays machine-parseable.
"""

from __future__ import annotations

import json
import logging
import sys
import traceback
from datetime import datetime, timezone
from typing import Any, TextIO

ROOT = "edgefleet.agent"
_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def _fmt(value: Any) -> str:
    text = value if isinstance(value, str) else str(value)
    if text == "" or any(c in text for c in ' "=\n\t\\'):
        return json.dumps(text)
    return text


class KeyValueFormatter(logging.Formatter):
    """`ts=<UTC ISO 8601> level=<level> component=<logger's last part> event=<event> key=value ...`; a
    record from elsewhere (no `event`) puts its message in `event`."""

    def format(self, record: logging.LogRecord) -> str:
        at = datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds")
        event = getattr(record, "event", None) or _fmt(record.getMessage())
        fields: dict[str, Any] = getattr(record, "fields", {})
        parts = [
            f"ts={at}",
            f"level={record.levelname.lower()}",
            f"component={record.name.rsplit('.', 1)[-1]}",
        ]
        parts.append(f"event={event}")
        parts += [f"{key}={_fmt(value)}" for key, value in fields.items() if value is not None]
        return " ".join(parts)


class _LineHandler(logging.Handler):
    """Writes each formatted line to `stream`, or to whatever sys.stderr is at the time; a closed or broken
    stream is ignored (it must not take the agent down)."""

    def __init__(self, stream: TextIO | None = None) -> None:
        super().__init__()
        self.stream = stream
        self.setFormatter(KeyValueFormatter())

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + "\n"
            stream = self.stream or sys.stderr
            stream.write(line)
            stream.flush()
        except (OSError, ValueError):
            pass


_root = logging.getLogger(ROOT)
_handler = _LineHandler()
_root.addHandler(_handler)
_root.setLevel(logging.INFO)
_root.propagate = False  # the agent's lines go out once, in its own format


def configure(level: str = "info", stream: TextIO | None = None) -> None:
    _root.setLevel(_LEVELS.get(level, logging.INFO))
    _handler.stream = stream


class EventLog:
    """A logger for one component: `log.info("bundle_activated", version="2", ms=41.2)`."""

    def __init__(self, component: str) -> None:
        self.component = component
        self._logger = logging.getLogger(f"{ROOT}.{component}")

    def _emit(self, level: int, event: str, fields: dict[str, Any]) -> None:
        if self._logger.isEnabledFor(level):
            self._logger.log(level, event, extra={"event": event, "fields": fields})

    def debug(self, event: str, **fields: Any) -> None:
        self._emit(logging.DEBUG, event, fields)

    def info(self, event: str, **fields: Any) -> None:
        self._emit(logging.INFO, event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._emit(logging.WARNING, event, fields)

    def error(self, event: str, **fields: Any) -> None:
        self._emit(logging.ERROR, event, fields)

    def exception(self, event: str, exc: BaseException, **fields: Any) -> None:
        """An unexpected exception, with where it happened (last frame), still on one line."""
        frames = traceback.extract_tb(exc.__traceback__)
        where = f"{frames[-1].filename}:{frames[-1].lineno}" if frames else None
        self._emit(logging.ERROR, event, {**fields, "error": f"{type(exc).__name__}: {exc}", "where": where})
