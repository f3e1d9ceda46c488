from __future__ import annotations

from pathlib import Path

import pytest

from edgefleet.cli import main
from edgefleet.fleet import broker


def test_demo_without_mosquitto_says_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(broker, "SEARCH_PATHS", ())
    assert main(["demo", "--workdir", str(tmp_path / "demo")]) == 2
    err = capsys.readouterr().err
    assert "mosquitto broker is not installed" in err and "apt-get install mosquitto" in err
    assert not (tmp_path / "demo" / "broker").exists(), "nothing may start before the check"
