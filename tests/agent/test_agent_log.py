"""The agent's key=value log lines, on stdlib logging: format, quoting, levels, a broken stream, and a
handler a deployment attaches itself."""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Iterator

import pytest

from edgefleet.agent import log as agent_log


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    buffer = io.StringIO()
    agent_log.configure("info", buffer)
    yield buffer
    agent_log.configure()


def test_one_line_per_event_with_quoted_values_and_no_nones(stream: io.StringIO) -> None:
    agent_log.EventLog("deployment").warning(
        "chunk_dropped", bundle_id="ab12", reason='sha "mismatch" here', attempt=2, skipped=None
    )
    line = stream.getvalue()
    assert line.endswith("\n") and line.count("\n") == 1
    assert re.match(
        r"^ts=\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00 level=warning component=deployment ", line
    )
    assert 'event=chunk_dropped bundle_id=ab12 reason="sha \\"mismatch\\" here" attempt=2\n' in line
    assert "skipped" not in line


def test_the_level_filters_and_exceptions_say_where(stream: io.StringIO) -> None:
    log = agent_log.EventLog("agent")
    log.debug("noise")
    assert stream.getvalue() == ""
    agent_log.configure("debug", stream)
    log.debug("noise")
    try:
        raise KeyError("x")
    except KeyError as exc:
        log.exception("handler_failed", exc, route="infer")
    text = stream.getvalue()
    assert "event=noise" in text and "level=error" in text
    assert "error=\"KeyError: 'x'\"" in text and "where=" in text and "test_agent_log.py:" in text


def test_a_broken_stream_does_not_raise() -> None:
    closed = io.StringIO()
    closed.close()
    agent_log.configure("info", closed)
    try:
        agent_log.EventLog("agent").info("still_running")
    finally:
        agent_log.configure()


def test_a_handler_attached_to_edgefleet_agent_gets_the_records(stream: io.StringIO) -> None:
    seen: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    handler = Collect()
    logging.getLogger(agent_log.ROOT).addHandler(handler)
    try:
        agent_log.EventLog("store").info("installed", version="2")
    finally:
        logging.getLogger(agent_log.ROOT).removeHandler(handler)
    assert [(r.name, r.levelno, getattr(r, "event", None)) for r in seen] == [
        ("edgefleet.agent.store", logging.INFO, "installed")
    ]
    assert "event=installed version=2" in stream.getvalue()
