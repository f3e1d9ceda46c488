"""Hot-swap safety on a real agent process: the health check before the swap, the probation after it
(automatic rollback), bad signatures, and `edgefleet rollback` to a kept version - with requests flowing."""

from __future__ import annotations

import json
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from agent_helpers import (
    DEVICE,
    AgentProcess,
    Keys,
    RunningAgent,
    Traffic,
    agent_config,
    file_sha256,
    make_bundle,
    make_custom_bundle,
    publish_bundle,
    publish_bundle_parts,
    restart,
    sqrt_model,
    started_agent,
    wait_until,
)

from edgefleet.cli import main
from edgefleet.fleet.broker import MosquittoProcess

pytestmark = [pytest.mark.mqtt, pytest.mark.slow]

POSITIVE = np.ones((4, 1, 8, 8), np.float32)  # sqrt_model gives finite outputs
NEGATIVE = -np.ones((2, 1, 8, 8), np.float32)  # sqrt_model gives NaN


@pytest.fixture
def probation_agent(
    tmp_path: Path, broker: MosquittoProcess, keys: Keys, profiles_dir: Path
) -> Iterator[RunningAgent]:
    config = agent_config(tmp_path, broker.url, keys, probation_s=2.0, probation_min_requests=5)
    with started_agent(tmp_path, broker, config, profiles_dir, log_tail=6000) as agent:
        yield agent


def _logged_since_start(process: AgentProcess, event: str) -> str | None:
    """The log since the agent's last start, once it holds `event` (None before)."""
    since = process.log().rsplit("event=starting", 1)[1]
    return since if f"event={event}" in since else None


def _rejected(deployment_id: str) -> Callable[[dict[str, Any]], bool]:
    return lambda e: e["kind"] == "rejected" and e["deployment_id"] == deployment_id


def test_failed_health_check_rejects_and_the_old_model_keeps_serving(
    running_agent: RunningAgent, bundles: dict[str, Path], keys: Keys, tmp_path: Path
) -> None:
    obs, url, process = running_agent.observer, running_agent.broker.url, running_agent.process
    running_agent.deploy(bundles["v1"], "1")
    nan_bundle = make_custom_bundle(
        tmp_path / "nan.efb", sqrt_model(tmp_path / "sqrt.onnx"), keys.private, "2", health_samples=NEGATIVE
    )
    narrow = make_custom_bundle(
        tmp_path / "narrow.efb",
        sqrt_model(tmp_path / "narrow.onnx", outputs=5),
        keys.private,
        "3",
        health_samples=POSITIVE,
    )
    with Traffic(obs, POSITIVE) as traffic:
        publish_bundle(url, DEVICE, nan_bundle, "d-nan", version="2")
        event = obs.wait_for("events", _rejected("d-nan"))
        assert "health check failed" in event["detail"] and "NaN" in event["detail"], event
        publish_bundle(url, DEVICE, narrow, "d-narrow", version="3")
        event = obs.wait_for("events", _rejected("d-narrow"))
        assert "output 'logits' has shape (1,5), the manifest declares (?,10)" in event["detail"], event
    assert traffic.results and not traffic.failed() and traffic.versions() == {"1"}
    status = obs.wait_for("status", lambda s: s["last_error"] and "(1,5)" in s["last_error"])
    assert status["model"]["version"] == "1" and status["swaps"] == 0 and status["state"] == "serving"
    # the rejected bundles were unpacked (the health check needs the files) but are kept as failed
    kept = {k["version"]: k["failed"] for k in status["kept"]}
    assert kept["1"] is False and kept.get("2", True) and kept.get("3", True)

    # after a restart the retained desired state still names the failed deployment: it is not retried
    process.stop()
    restart(process, obs)
    after_restart = wait_until(
        lambda: _logged_since_start(process, "desired_already_failed"), 10, "the verdict"
    )
    assert "event=desired_already_failed deployment_id=d-narrow" in after_restart
    assert "event=health_check" not in after_restart
    status = obs.wait_for("status", lambda s: s["last_error"] and "d-narrow" in s["last_error"])
    assert "rejected" in status["last_error"] and status["model"]["version"] == "1"
    assert obs.infer(POSITIVE).model_version == "1"


def test_probation_failure_rolls_back_without_dropping_a_request(
    probation_agent: RunningAgent, bundles: dict[str, Path], keys: Keys, tmp_path: Path
) -> None:
    obs, url, process = probation_agent.observer, probation_agent.broker.url, probation_agent.process
    probation_agent.deploy(bundles["v1"], "1")
    # passes its health check (positive samples), but real traffic (negative inputs) gives NaN
    fragile = make_custom_bundle(
        tmp_path / "fragile.efb",
        sqrt_model(tmp_path / "sqrt.onnx"),
        keys.private,
        "2",
        health_samples=POSITIVE,
    )
    with Traffic(obs, NEGATIVE) as traffic:
        publish_bundle(url, DEVICE, fragile, "d-fragile", version="2")
        on_probation = obs.wait_for("status", lambda s: (s.get("probation") or {}).get("version") == "2")
        assert on_probation["probation"]["previous_version"] == "1"
        assert on_probation["model"]["version"] == "2"
        event = obs.wait_for(
            "events", lambda e: e["kind"] == "rolled_back" and e["deployment_id"] == "d-fragile", timeout=10
        )
        obs.wait_for("status", lambda s: s["rollbacks"] == 1)
        n_after_rollback = len(traffic.results)
        wait_until(lambda: len(traffic.results) >= n_after_rollback + 5, 10, "requests after the rollback")
    assert "v2 was rolled back to v1" in event["detail"] and "NaN" in event["detail"], event
    assert not traffic.failed(), traffic.failed()[:5]  # every request answered, across swap and rollback
    assert traffic.versions() == {"1", "2"} and traffic.results[-1] == ("ok", "1")
    status = obs.wait_for("status", lambda s: s["rollbacks"] == 1 and s["probation"] is None)
    assert status["model"]["version"] == "1" and status["swaps"] == 2
    assert "rolled back" in status["last_error"]
    assert {k["version"]: k["failed"] for k in status["kept"]} == {"1": False, "2": True}
    assert "event=model_closed version=2" in process.log()  # the failed model is unloaded

    # the retained desired state still names the failed deployment: a restart keeps v1
    process.stop()
    restart(process, obs)
    after_restart = wait_until(
        lambda: _logged_since_start(process, "desired_already_failed"), 10, "the verdict"
    )
    assert "event=desired_already_failed deployment_id=d-fragile" in after_restart
    assert obs.infer(POSITIVE).model_version == "1"

    # a new deployment of the same bundle is tried again, from disk; with good traffic it passes
    n_started = len(obs.of("events"))
    with Traffic(obs, POSITIVE) as traffic:
        publish_bundle_parts(url, DEVICE, fragile, "d-fragile-2", chunks=[], meta=False, version="2")
        obs.wait_for(
            "events", lambda e: e["kind"] == "probation_passed" and e["deployment_id"] == "d-fragile-2"
        )
    assert not traffic.failed() and "2" in traffic.versions()
    new_events = obs.of("events")[n_started:]
    assert not [e for e in new_events if e["kind"] == "delivery_started"], "a kept bundle is not downloaded"
    status = obs.wait_for(
        "status", lambda s: s["probation"] is None and (s["model"] or {}).get("version") == "2"
    )
    assert {k["version"]: k["failed"] for k in status["kept"]} == {"2": False, "1": False}


def _tampered(bundle: Path, out: Path) -> Path:
    """The same bundle with one byte of its signed manifest changed (the version)."""
    with zipfile.ZipFile(bundle) as zin, zipfile.ZipFile(out, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            if item.filename == "manifest.json":
                data = data.replace(b'"version": "2"', b'"version": "9"')
            zout.writestr(item.filename, data)
    return out


def test_bad_signature_bundles_are_rejected_and_the_old_model_keeps_serving(
    running_agent: RunningAgent,
    bundles: dict[str, Path],
    reference_dir: Path,
    other_keys: Keys,
    tmp_path: Path,
) -> None:
    obs, url = running_agent.observer, running_agent.broker.url
    state = tmp_path / "state"
    running_agent.deploy(bundles["v1"], "1")
    tampered = _tampered(bundles["v2"], tmp_path / "tampered.efb")
    untrusted = make_bundle(tmp_path / "u.efb", reference_dir / "digits_cnn_v2.onnx", other_keys.private, "2")
    with Traffic(obs, POSITIVE) as traffic:
        publish_bundle(url, DEVICE, tampered, "d-tampered", version="9")
        event = obs.wait_for("events", _rejected("d-tampered"))
        assert "signature does not verify" in event["detail"]
        publish_bundle(url, DEVICE, untrusted, "d-untrusted", version="2")
        event = obs.wait_for("events", _rejected("d-untrusted"))
        assert "signed by key" in event["detail"]
    assert traffic.results and not traffic.failed() and traffic.versions() == {"1"}
    status = obs.wait_for("status", lambda s: s["last_error"] and "signed by key" in s["last_error"])
    assert status["model"]["version"] == "1" and status["swaps"] == 0
    # nothing of either bundle was unpacked or left behind, and the pointer never moved
    for bad in (tampered, untrusted):
        assert not (state / "bundles" / file_sha256(bad)).exists()
    assert list((state / "incoming").iterdir()) == []
    assert (state / "active").read_text().strip() == file_sha256(bundles["v1"])


def test_rollback_command_reactivates_a_kept_version_without_download(
    running_agent: RunningAgent, bundles: dict[str, Path], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    obs, url, process = running_agent.observer, running_agent.broker.url, running_agent.process
    running_agent.deploy(bundles["v1"], "1")
    running_agent.deploy(bundles["v2"], "2")
    obs.wait_for("status", lambda s: [k["version"] for k in s["kept"]] == ["2", "1"])
    obs.wait_for("events", lambda e: e["kind"] == "activated" and e["deployment_id"] == "d-v2")
    n_events = len(obs.of("events"))

    assert main(["rollback", "--device", DEVICE, "--broker", url, "--wait", "--timeout", "20"]) == 0
    assert "digits 1 active" in capsys.readouterr().out
    assert obs.infer(POSITIVE).model_version == "1"
    capsys.readouterr()
    assert main(["rollback", "--device", DEVICE, "--broker", url, "--to", "2", "--wait", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert (result["to"]["version"], result["from_version"], result["active"]) == ("2", "1", True)
    assert obs.infer(POSITIVE).model_version == "2"
    # the events travel separately from the status that ended the wait: wait for both activations
    wait_until(
        lambda: [e["kind"] for e in obs.of("events")[n_events:]].count("activated") >= 2,
        timeout=30,
        what="both activation events",
    )
    kinds = [e["kind"] for e in obs.of("events")[n_events:]]
    assert kinds.count("activated") == 2 and "delivery_started" not in kinds, kinds
    assert process.log().count("event=activating_kept_bundle") == 2

    capsys.readouterr()
    assert main(["rollback", "--device", DEVICE, "--broker", url, "--to", "7"]) == 2
    err = capsys.readouterr().err
    assert "version 7 is not kept on device dev-1" in err and "edgefleet deploy" in err, err
    assert obs.infer(POSITIVE).model_version == "2"  # a refused rollback changes nothing

    # a kept copy that no longer verifies (bit rot) is not trusted: the device fetches the bundle again
    kept_model = tmp_path / "state" / "bundles" / file_sha256(bundles["v1"]) / "model.onnx"
    with kept_model.open("r+b") as handle:
        handle.seek(200)
        handle.write(b"\xff\xff\xff")
    n_events = len(obs.of("events"))
    assert main(["rollback", "--device", DEVICE, "--broker", url, "--to", "1", "--wait"]) == 0
    assert obs.infer(POSITIVE).model_version == "1"
    assert "event=kept_bundle_damaged" in process.log()
    wait_until(
        lambda: "delivery_started" in [e["kind"] for e in obs.of("events")[n_events:]],
        timeout=30,
        what="the damaged kept bundle to be fetched again",
    )


def test_keep_bundles_holds_while_deployments_keep_arriving_within_probation(
    tmp_path: Path, broker: MosquittoProcess, keys: Keys, profiles_dir: Path
) -> None:
    """Each new model replaces the one on probation before its window ends; bundles on disk must still stay
    within keep_bundles (the active one and the version it would fall back to), not pile up on the SD card."""
    config = agent_config(tmp_path, broker.url, keys, probation_s=60.0, keep_bundles=2)
    with started_agent(tmp_path, broker, config, profiles_dir) as agent:
        for version in ("1", "2", "3", "4", "5"):
            model = sqrt_model(tmp_path / f"m{version}.onnx")
            bundle = make_custom_bundle(tmp_path / f"v{version}.efb", model, keys.private, version)
            publish_bundle(broker.url, DEVICE, bundle, f"d-{version}", version=version)
            agent.observer.wait_active(version)
        agent.observer.wait_for("status", lambda s: s["probation"] and s["probation"]["version"] == "5")
        on_disk = sorted(p.name for p in (tmp_path / "state" / "bundles").iterdir() if p.is_dir())
        kept = {file_sha256(tmp_path / "v5.efb"), file_sha256(tmp_path / "v4.efb")}
        assert set(on_disk) == kept, on_disk
