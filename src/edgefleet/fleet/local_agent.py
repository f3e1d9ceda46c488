"""Run a device agent as a separate local process (for the demo and tests): write its config, start it,
stop it with SIGTERM (or kill -9 it)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import yaml

from edgefleet.fleet.lifecycle import Started


def spawn_agent(config_path: Path, log_path: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """`python -m edgefleet.cli agent --config config_path` as a child process, output added to log_path."""
    with log_path.open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "edgefleet.cli", "agent", "--config", str(config_path)],
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
            env=env,
        )


class LocalAgent(Started):
    def __init__(
        self,
        workdir: Path,
        *,
        device_id: str,
        profile: str,
        broker_url: str,
        trusted_key: Path,
        telemetry_interval_s: float = 1.0,
        env: dict[str, str] | None = None,
    ) -> None:
        self.device_id = device_id
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = workdir / "agent.yaml"
        self.log_path = workdir / "agent.log"
        self.state_dir = workdir / "state"
        self.config_path.write_text(
            yaml.safe_dump(
                {
                    "device_id": device_id,
                    "profile": profile,
                    "broker": broker_url,
                    "state_dir": str(self.state_dir),
                    "trusted_key": str(trusted_key),
                    "telemetry_interval_s": telemetry_interval_s,
                }
            )
        )
        self._env = {**os.environ, **(env or {})}
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def returncode(self) -> int | None:
        return None if self._process is None else self._process.poll()

    def start(self) -> LocalAgent:
        self._process = spawn_agent(self.config_path, self.log_path, self._env)
        return self

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, then kill -9 if it has not exited within `timeout`; returns the exit code."""
        if self._process is None:
            return None
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        return self._process.returncode

    def kill(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait()

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""
