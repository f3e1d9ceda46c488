"""Shared fixtures: a real mosquitto per test, on a free loopback port with a config the test writes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from edgefleet.fleet.broker import MosquittoProcess
from edgefleet.reference_models import reference_model_dir


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[MosquittoProcess]:
    with MosquittoProcess(tmp_path / "broker") as process:
        yield process


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    return reference_model_dir()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that starts a broker is an mqtt test whether it says so or not (the fast lane skips those)."""
    for item in items:
        if "broker" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.mqtt)


@pytest.fixture(autouse=True)
def _terminal_width_from_the_test(monkeypatch: pytest.MonkeyPatch) -> None:
    """The commands honour COLUMNS on a pipe; a CI runner's own COLUMNS must not change what tests read
    (tests that want a width pass it)."""
    monkeypatch.delenv("COLUMNS", raising=False)
    monkeypatch.delenv("LINES", raising=False)
