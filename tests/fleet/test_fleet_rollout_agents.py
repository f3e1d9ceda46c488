"""Rollouts with real agent processes: the agent announces its tags, the rollout waits for the agent's own
probation, treats the agent's rejection and the agent's own rollback as failures, and its rollback leaves
the agents on the previous version. A simulated device of another profile on the same broker is never sent
the bundle."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "agent"))

from agent_helpers import (
    OTHER_PROFILE,
    TEST_PROFILE,
    AgentProcess,
    Keys,
    agent_config,
    make_custom_bundle,
    sqrt_model,
    write_profiles,
)
from support_bundles import make_fp32_bundle

from edgefleet.contract.profiles import PROFILES_PATH_ENV
from edgefleet.contract.signing import create_key_pair
from edgefleet.fleet.broker import MosquittoProcess
from edgefleet.fleet.inference import InferenceClient
from edgefleet.fleet.inventory import collect_inventory
from edgefleet.fleet.rollout import start_rollout
from edgefleet.fleet.simulator import Simulator

pytestmark = [pytest.mark.mqtt, pytest.mark.slow]

DEVICES = ("agent-a", "agent-b")
PROBATION_S = 2.0


@pytest.fixture
def profiles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    directory = write_profiles(tmp_path / "profiles")
    monkeypatch.setenv(PROFILES_PATH_ENV, str(directory))  # the host needs the test profile's budget too
    return directory


@pytest.fixture
def agents(
    tmp_path: Path, broker: MosquittoProcess, profiles: Path
) -> Iterator[tuple[Keys, list[AgentProcess]]]:
    keys = Keys(*create_key_pair(tmp_path / "keys"))
    processes = []
    for device_id in DEVICES:
        workdir = tmp_path / device_id
        workdir.mkdir()
        config = agent_config(
            workdir,
            broker.url,
            keys,
            device_id=device_id,
            tags={"site": "lab", "rack": device_id[-1]},
            probation_s=PROBATION_S,
        )
        processes.append(AgentProcess(workdir, config, profiles).start())
    try:
        yield keys, processes
    finally:
        for process in processes:
            if process.alive():
                process.stop()
            print(process.log()[-3000:])


def _wait_announced(broker: MosquittoProcess, device_ids: list[str], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        inventory, _ = collect_inventory(broker.url, listen_s=0)
        if all(inventory.online(d) and inventory.status(d) for d in device_ids):
            return
        assert time.monotonic() < deadline, f"not all of {device_ids} announced themselves"
        time.sleep(0.2)


def test_rollouts_to_real_agents(
    agents: tuple[Keys, list[AgentProcess]], broker: MosquittoProcess, reference_dir: Path, tmp_path: Path
) -> None:
    keys, processes = agents
    other = Simulator(broker.url, 1, OTHER_PROFILE, telemetry_hz=2, tags={"site": "lab"}, id_prefix="other")
    other.start()
    try:
        other.wait_connected()
        _wait_announced(broker, [*DEVICES, "other-0000"])
        inventory, _ = collect_inventory(broker.url, listen_s=0)
        # the agents announce the tags of their config
        assert inventory.record("agent-b").tags == {"site": "lab", "rack": "b"}
        assert inventory.record("agent-a").profile == TEST_PROFILE

        model = reference_dir / "digits_cnn_v1.onnx"
        v1 = make_fp32_bundle(tmp_path / "v1.efb", model, keys.private, version="1", profile=TEST_PROFILE)
        v2 = make_fp32_bundle(
            tmp_path / "v2.efb",
            reference_dir / "digits_cnn_v2.onnx",
            keys.private,
            version="2",
            profile=TEST_PROFILE,
        )
        stranger = Keys(*create_key_pair(tmp_path / "stranger"))
        bad = make_fp32_bundle(
            tmp_path / "v3.efb", model, stranger.private, version="3", profile=TEST_PROFILE
        )
        state_dir = tmp_path / "rollouts"
        options = {"canary": "1", "batch": "100%", "min_healthy_s": 0.5, "stage_timeout_s": 40.0}

        first = start_rollout(broker.url, v1, "site=lab", state_dir=state_dir, **options)
        assert first.status == "completed"
        assert first.counts() == {"healthy": 2, "skipped": 1}
        assert "runs profile 'other-onnx'" in first.devices["other-0000"].detail
        for device_id in DEVICES:
            device = first.devices[device_id]
            # first install: no previous model, so no probation; healthy once telemetry on v1 arrived
            assert device.previous is None and device.reported_healthy

        second = start_rollout(broker.url, v2, "site=lab", state_dir=state_dir, **options)
        assert second.status == "completed" and second.counts() == {"healthy": 2, "skipped": 1}
        for device_id in DEVICES:
            device = second.devices[device_id]
            assert device.previous is not None and device.previous.version == "1"
            # the agent watched v2 on probation first: the rollout waited for its verdict
            assert (device.healthy_at - device.active_at).total_seconds() >= PROBATION_S - 0.5

        third = start_rollout(broker.url, bad, "site=lab", state_dir=state_dir, **options)
        assert third.status == "halted" and third.stage == 0
        canary = third.stages[0][0]
        rejected = third.devices[canary]
        assert rejected.failure is not None and rejected.failure.startswith("rejected:")
        assert "signed by key" in rejected.failure
        assert rejected.state == "rolled_back"
        outside = next(d for d in DEVICES if d != canary)
        assert third.devices[outside].state == "planned"

        # v4 passes the agent's health check (its samples are positive) but gives NaN for the negative
        # inputs the traffic sends while it is on probation: the agent rolls back to v2 on its own
        samples = np.abs(np.random.default_rng(0).normal(size=(3, 1, 8, 8))).astype(np.float32)
        v4 = make_custom_bundle(
            tmp_path / "v4.efb", sqrt_model(tmp_path / "sqrt.onnx"), keys.private, "4", health_samples=samples
        )
        stop = threading.Event()
        sent: list[int] = []

        def send_negative_inputs(device_id: str) -> None:
            # continuous traffic from the moment the canary is told about v4: v2 answers it normally, v4
            # gives NaN, which the agent's probation counts as failed runs (the replies still say "ok")
            with InferenceClient(broker.url, default_timeout=5) as client:
                negative = -np.ones((1, 1, 8, 8), np.float32)
                while not stop.is_set():
                    futures = [client.submit(device_id, {"image": negative}) for _ in range(10)]
                    for future in futures:
                        future.exception()
                    sent.append(len(futures))

        traffic = threading.Thread(target=send_negative_inputs, args=(DEVICES[0],), daemon=True)
        traffic.start()
        try:
            fourth = start_rollout(broker.url, v4, "site=lab", state_dir=state_dir, **options)
        finally:
            stop.set()
            traffic.join(10)
        assert fourth.stages[0] == [DEVICES[0]] and sum(sent) >= 20
        assert fourth.status == "halted" and fourth.stage == 0
        rolled = fourth.devices[fourth.stages[0][0]]
        assert rolled.failure is not None
        assert (
            rolled.failure.startswith("rolled_back:") or "went back to digits 2 on its own" in rolled.failure
        )
        assert rolled.state == "rolled_back"

        inventory, _ = collect_inventory(broker.url, listen_s=0)
        for device_id in DEVICES:
            assert inventory.record(device_id).model_version == "2"  # both still serve v2
        assert inventory.status(fourth.stages[0][0]).rollbacks == 1
        assert other.logs()["other-0000"].desired_seen == []
        assert all(process.alive() for process in processes)
    finally:
        other.stop()
