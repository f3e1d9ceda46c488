"""The device side never needs the host toolchain: importing and starting the agent's modules pulls in no
TensorFlow, torch, onnx (the package) or any host-side edgefleet package."""

from __future__ import annotations

import json
import subprocess
import sys

AGENT_MODULES = [
    "edgefleet.cli",
    "edgefleet.agent.cli",
    "edgefleet.agent.daemon",
    "edgefleet.agent.backends.ort",
    "edgefleet.agent.backends.litert",
    "edgefleet.agent.http_api",
]
FORBIDDEN = ("tensorflow", "torch", "onnx", "keras", "edgefleet.converter", "edgefleet.fleet")


def test_agent_modules_import_no_host_packages() -> None:
    code = (
        "import importlib, json, sys\n"
        f"for name in {AGENT_MODULES!r}: importlib.import_module(name)\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    loaded = json.loads(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True).stdout)
    offending = [m for m in loaded if any(m == f or m.startswith(f + ".") for f in FORBIDDEN)]
    assert offending == []
