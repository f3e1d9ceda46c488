"""Native libraries' writes to file descriptor 2 go to a log during a conversion; Python's stderr (the
progress display, our messages) stays on the terminal (issue 11: TensorFlow lines broke the display)."""

from __future__ import annotations

import os
import sys

import pytest

from edgefleet.converter.native_output import native_stderr_to_log


def test_native_writes_go_to_the_log_and_ours_to_the_terminal(capfd: pytest.CaptureFixture[str]) -> None:
    with native_stderr_to_log() as log:
        os.write(2, b"I0000 port.cc:153] oneDNN custom operations are on\n")  # what TensorFlow's C++ does
        print("  [ 1/19] load model", file=sys.stderr)
        sys.stderr.flush()
    err = capfd.readouterr().err
    assert "load model" in err and "oneDNN" not in err
    assert "oneDNN custom operations" in log.read_text()
    log.unlink()
    os.write(2, b"after\n")  # descriptor 2 is the terminal's again
    assert "after" in capfd.readouterr().err


def test_an_empty_log_is_removed() -> None:
    with native_stderr_to_log() as log:
        pass
    assert not log.exists()
