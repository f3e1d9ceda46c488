"""Agent kill -9 at varied moments of a delivery and a swap, on a real agent process: after every kill the
`active` pointer names a complete bundle that re-verifies (old or new, never partial), the restarted agent
comes back on exactly that bundle, resumes a delivery from the chunks it had verified, and ends on the
new version. A model that keeps the agent crashing during its probation is rolled back."""

from __future__ import annotations

import random
import re
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from agent_helpers import (
    DEVICE,
    TEST_PROFILE,
    AgentProcess,
    Keys,
    Observer,
    RunningAgent,
    agent_config,
    chunks_logged,
    file_sha256,
    make_custom_bundle,
    publish_bundle,
    publish_bundle_parts,
    restart,
    started_agent,
    wait_until,
)

from edgefleet.agent.store import BundleStore
from edgefleet.contract.signing import load_public_key
from edgefleet.fleet.broker import MosquittoProcess

pytestmark = [pytest.mark.mqtt, pytest.mark.slow]
CHUNK = 64 * 1024
PADDING = 8 * 2**20
IMAGES = np.zeros((1, 1, 8, 8), np.float32)


@pytest.fixture
def crash_agent(
    tmp_path: Path, broker: MosquittoProcess, keys: Keys, profiles_dir: Path, request: pytest.FixtureRequest
) -> Iterator[RunningAgent]:
    probation_s = request.param if hasattr(request, "param") else 0.5
    config = agent_config(tmp_path, broker.url, keys, probation_s=probation_s, delivery_stall_s=1.0)
    with started_agent(tmp_path, broker, config, profiles_dir, log_tail=8000) as agent:
        yield agent


def kill_9(process: AgentProcess) -> None:
    assert process.process is not None
    process.process.kill()
    process.process.wait(10)


def active_complete_and_verified(state: Path, public_key: Path, allowed: dict[str, str]) -> str:
    """The version the `active` pointer names; fails unless it is one of `allowed` (bundle id -> version)
    and its unpacked files re-verify (signature, every file's sha256)."""
    store = BundleStore(state, load_public_key(public_key), TEST_PROFILE)
    active = store.active_id()
    assert active in allowed, f"the active pointer names {active}, not one of the deployed bundles"
    installed = store.load_installed(active)  # raises BundleError on a partial or altered bundle
    assert installed.manifest.version == allowed[active]
    return allowed[active]


def since_last_start(process: AgentProcess) -> str:
    return process.log().rsplit("event=starting", 1)[1]


def serving(obs: Observer, version: str) -> bool:
    return obs.infer(IMAGES).model_version == version


def test_agent_kill_9_at_varied_moments_never_leaves_a_partial_model(
    crash_agent: RunningAgent, bundles: dict[str, Path], keys: Keys, reference_dir: Path, tmp_path: Path
) -> None:
    obs, url, process = crash_agent.observer, crash_agent.broker.url, crash_agent.process
    state = tmp_path / "state"
    crash_agent.deploy(bundles["v1"], "1")
    allowed = {file_sha256(bundles["v1"]): "1"}
    rng = random.Random(20261122)
    moments = ["mid-delivery", "activating", "activated", "random", "random", "random"]
    for version_number, moment in enumerate(moments, start=2):
        version = str(version_number)
        model = reference_dir / f"digits_cnn_v{1 + version_number % 2}.onnx"
        bundle = make_custom_bundle(
            tmp_path / f"{version}.efb", model, keys.private, version, padding_bytes=PADDING
        )
        bundle_id = file_sha256(bundle)
        total = -(-bundle.stat().st_size // CHUNK)
        deployment = f"d-{version}"
        n_status = len(obs.of("status"))
        if moment == "mid-delivery":
            half = total // 2
            publish_bundle_parts(
                url, DEVICE, bundle, deployment, chunk_size=CHUNK, chunks=range(half), version=version
            )
            wait_until(
                lambda b=bundle_id, h=half: chunks_logged(state, b) == h, 20, "half of the chunks verified"
            )
        else:
            publish_bundle_parts(url, DEVICE, bundle, deployment, chunk_size=CHUNK, version=version)
            if moment == "activating":
                wait_until(
                    lambda n=n_status: any(s["state"] == "activating" for s in obs.of("status")[n:]),
                    20,
                    "the activating state",
                    every=0.002,
                )
                pause = rng.uniform(0.0, 0.05)
            elif moment == "activated":
                obs.wait_for(
                    "events", lambda e, d=deployment: e["kind"] == "activated" and e["deployment_id"] == d
                )
                pause = 0.0
            else:
                pause = rng.uniform(0.0, 0.3)  # delivery and activation of 8 MiB take ~0.1-0.4 s here
            time.sleep(pause)
        kill_9(process)
        allowed[bundle_id] = version
        current = active_complete_and_verified(state, keys.public, allowed)
        print(f"killed at {moment}: active is v{current}")
        if moment == "activated":
            assert current == version  # the pointer moves before the device says `activated`
        if moment == "mid-delivery":
            assert current == str(version_number - 1)

        restart(process, obs)
        restored = re.findall(r"event=restored name=digits version=(\S+)", since_last_start(process))
        assert restored[:1] == [current], "the agent came back on exactly the bundle the pointer names"
        if moment == "mid-delivery":
            pattern = rf"event=meta bundle_id={bundle_id[:12]} .* resumed=(\d+)"
            resumed = wait_until(
                lambda p=pattern: re.findall(p, since_last_start(process)), 10, "the resumed delivery"
            )
            assert resumed == [str(half)], "it resumed from the chunks it had verified"
            publish_bundle_parts(
                url,
                DEVICE,
                bundle,
                deployment,
                chunk_size=CHUNK,
                chunks=range(half, total),
                meta=False,
                desired=False,
            )
        wait_until(lambda v=version: serving(obs, v), 30, f"v{version} serving after the kill at {moment}")
        assert not list((state / "bundles").glob(".*.tmp")), "a staging dir survived the restart"
        wait_until(lambda: not list((state / "incoming").iterdir()), 5, "the part file removed")
    assert active_complete_and_verified(state, keys.public, allowed) == str(len(moments) + 1)


@pytest.mark.parametrize("crash_agent", [60.0], indirect=True)
def test_agent_crashing_during_probation_rolls_back_after_three_starts(
    crash_agent: RunningAgent, bundles: dict[str, Path], tmp_path: Path
) -> None:
    obs, url, process = crash_agent.observer, crash_agent.broker.url, crash_agent.process
    crash_agent.deploy(bundles["v1"], "1")
    publish_bundle(url, DEVICE, bundles["v2"], "d-v2", version="2")
    obs.wait_for("status", lambda s: (s.get("probation") or {}).get("version") == "2")
    for starts in (1, 2):
        kill_9(process)
        restart(process, obs)
        assert f"event=probation_resumed version=2 starts={starts}" in since_last_start(process)
        assert serving(obs, "2")
    kill_9(process)
    restart(process, obs)  # the third start since the swap: a crash loop
    event = obs.wait_for("events", lambda e: e["kind"] == "rolled_back" and e["deployment_id"] == "d-v2")
    assert "started 3 times while 2 was on probation" in event["detail"], event
    assert serving(obs, "1")
    status = obs.wait_for("status", lambda s: s["rollbacks"] == 1)
    assert status["model"]["version"] == "1" and "rolled back" in status["last_error"]
    assert {k["version"]: k["failed"] for k in status["kept"]} == {"1": False, "2": True}
    assert (tmp_path / "state" / "active").read_text().strip() == file_sha256(bundles["v1"])
