"""The whole path on real parts: convert -> signed bundle -> deploy over a real mosquitto -> a real agent
process serves inference equal to running the artifact directly -> telemetry -> deploy v2 -> v2 active."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from edgefleet.contract.bundle import extract_bundle
from edgefleet.contract.signing import create_key_pair, load_public_key
from edgefleet.contract.tensors import from_artifact, to_artifact
from edgefleet.converter.context import ConversionRequest
from edgefleet.converter.pipeline import ConversionResult, convert
from edgefleet.fleet.broker import MosquittoProcess
from edgefleet.fleet.deploy import deploy_bundle
from edgefleet.fleet.inference import InferenceClient
from edgefleet.fleet.local_agent import LocalAgent
from edgefleet.fleet.status import collect_fleet_status

pytestmark = [pytest.mark.mqtt, pytest.mark.slow]


def _convert(reference_dir: Path, out: Path, key: Path, profile: str, version: str) -> ConversionResult:
    return convert(
        ConversionRequest(
            model=reference_dir / f"digits_cnn_v{version}.onnx",
            profile=profile,
            calib=reference_dir / "calib.npz",
            eval=reference_dir / "eval.npz",
            out=out,
            name="digits",
            version=version,
            key=key,
        )
    )


def _run_directly(bundle: Path, public_key: Path, workdir: Path, images: np.ndarray) -> np.ndarray:
    """Run the bundle's artifact with LiteRT, outside the agent, feeding the same float inputs."""
    from ai_edge_litert.interpreter import Interpreter

    manifest = extract_bundle(bundle, workdir, load_public_key(public_key))
    interpreter = Interpreter(model_path=str(workdir / manifest.artifact))
    interpreter.allocate_tensors()
    (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()
    logits = []
    for image in images:
        x, _ = to_artifact(manifest.inputs[0], image[None])
        interpreter.set_tensor(inp["index"], x)
        interpreter.invoke()
        logits.append(
            from_artifact(manifest.outputs[0], interpreter.get_tensor(out["index"]), as_float=True)[0]
        )
    return np.stack(logits)


def test_convert_deploy_serve_telemetry_swap(
    broker: MosquittoProcess, tmp_path: Path, reference_dir: Path
) -> None:
    private_key, public_key = create_key_pair(tmp_path / "keys")
    v1 = _convert(reference_dir, tmp_path / "bundles", private_key, "rpi4", "1")
    v2 = _convert(reference_dir, tmp_path / "bundles", private_key, "rpi4", "2")
    evaluation = np.load(reference_dir / "eval.npz")
    images = evaluation["image"][:64]

    with LocalAgent(
        tmp_path / "device",
        device_id="pi-1",
        profile="rpi4",
        broker_url=broker.url,
        trusted_key=public_key,
        telemetry_interval_s=0.5,
    ) as agent:
        result = deploy_bundle(broker.url, v1.bundle_path, "pi-1", wait=True, timeout=60)
        assert result.active, agent.log_tail()

        with InferenceClient(broker.url) as client:
            served = np.stack([client.infer("pi-1", {"image": image[None]})["logits"][0] for image in images])
        direct = _run_directly(v1.bundle_path, public_key, tmp_path / "direct", images)
        # Same int8 model, same quantization of the input: equal up to one output quantization step.
        step = v1.outputs[0].quantization.scale if v1.outputs[0].quantization else 1e-6
        assert np.max(np.abs(served - direct)) <= step + 1e-6
        assert (served.argmax(1) == direct.argmax(1)).all()

        deadline = time.monotonic() + 10
        telemetry = None
        while time.monotonic() < deadline:
            view = collect_fleet_status(broker.url, listen_s=1.0).device("pi-1")
            telemetry = view.telemetry
            if telemetry is not None and telemetry.requests >= len(images):
                break
        assert telemetry is not None and telemetry.requests >= len(images), (
            "no telemetry covering the requests"
        )
        assert telemetry.errors == 0
        assert telemetry.latency_ms.p50 is not None and 0 < telemetry.latency_ms.p50 < 1000
        assert telemetry.rss_mb > 10

        result = deploy_bundle(broker.url, v2.bundle_path, "pi-1", wait=True, timeout=60)
        assert result.active and result.status is not None
        assert result.status.model is not None and result.status.model.version == "2"
        assert result.status.swaps >= 1
        assert agent.returncode is None, "the agent must not restart to swap models"
        assert agent.stop() == 0


def test_demo_runs_clean_and_reports_every_device(tmp_path: Path) -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "edgefleet.cli", "demo", "--json", "--workdir", str(tmp_path / "demo")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    result = json.loads(completed.stdout)
    assert result["ok"] and not result["problems"]
    assert {d["profile"] for d in result["devices"]} == {"rpi4", "jetson-nano", "coral-usb"}
    for device in result["devices"]:
        assert device["failed_requests"] == 0
        assert device["swaps"] >= 1 and device["active_version"] == "2"
        assert device["accuracy_v2"] > 95.0
    for conversion in result["conversions"]:
        assert conversion["accuracy_fp32"] - conversion["accuracy_artifact"] <= 1.0
