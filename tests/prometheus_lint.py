"""`promtool check metrics` and `promtool check rules` (apt package prometheus, installed by
scripts/setup.sh): what Prometheus itself would refuse or warn about, as a list of its messages."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path


def _promtool(*args: str, stdin: str | None = None) -> list[str]:
    tool = shutil.which("promtool")
    assert tool is not None, (
        "promtool is missing: run ./scripts/setup.sh (it installs apt package prometheus)"
    )
    done = subprocess.run([tool, "check", *args], input=stdin, capture_output=True, text=True, timeout=60)
    lines = [line.strip() for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    if done.returncode == 0:
        return [line for line in lines if not line.startswith(("Checking ", "SUCCESS"))]
    return lines or [f"promtool exited {done.returncode}"]


def problems(text: str) -> list[str]:
    """`promtool check metrics` on an exposition: its lint findings (an empty list when it passes)."""
    return _promtool("metrics", stdin=text)


def rule_problems(path: Path) -> list[str]:
    """`promtool check rules` on an alert-rules file."""
    return _promtool("rules", str(path))
