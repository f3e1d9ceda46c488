"""Issue 10, optional anti-rollback: with `anti_rollback: true` an agent refuses bundles below the signed
version floor of their model (set with `edgefleet floor`), ignores floors that are forged, meant for
another device or older than the one it holds, and accepts a newly signed lower floor."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest
from agent_helpers import DEVICE, Keys, agent_config, publish_bundle, publish_raw, started_agent

from edgefleet.cli import main
from edgefleet.contract import topics
from edgefleet.contract.messages import utc_now
from edgefleet.contract.signing import load_private_key
from edgefleet.contract.version_floor import VersionFloor, sign_floor
from edgefleet.fleet.broker import MosquittoProcess


def test_bundles_below_the_signed_floor_are_refused_and_only_a_newer_floor_lowers_it(
    tmp_path: Path,
    broker: MosquittoProcess,
    keys: Keys,
    other_keys: Keys,
    profiles_dir: Path,
    bundles: dict[str, Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = agent_config(tmp_path, broker.url, keys, anti_rollback=True)
    with started_agent(tmp_path, broker, config, profiles_dir) as agent:
        observer = agent.observer
        publish_bundle(broker.url, DEVICE, bundles["v1"], "d-1", version="1")
        observer.wait_active("1")
        publish_bundle(broker.url, DEVICE, bundles["v2"], "d-2", version="2")
        observer.wait_active("2")
        floor_flags = ["--broker", broker.url, "--device", DEVICE, "--signing-key", str(keys.private)]
        assert main(["floor", "--model", "digits", "--min-version", "2", *floor_flags]) == 0
        issued = utc_now()

        def rejected(deployment: str | None = None) -> str:
            event = observer.wait_for(
                "events",
                lambda e: e["kind"] == "rejected" and e["deployment_id"] not in seen
                and deployment in (None, e["deployment_id"]),
            )  # fmt: skip
            seen.add(event["deployment_id"])
            return str(event["detail"])

        seen: set[str] = set()
        # `edgefleet rollback` to the kept v1: refused from the signed manifest, nothing downloaded
        assert main(["rollback", "--device", DEVICE, "--to", "1", "--broker", broker.url]) == 0
        assert "digits v1 is below this device's signed minimum version 2" in rejected()
        # a new deployment of v1: refused before its download
        publish_bundle(broker.url, DEVICE, bundles["v1"], "d-3", version="1")
        assert "signed minimum version 2" in rejected("d-3")

        # Forged (another key), meant for another device, older than the floor held, empty: all ignored.
        lower = VersionFloor(device_id=DEVICE, model="digits", min_version=None)
        signing_key = load_private_key(keys.private)
        forged = sign_floor(load_private_key(other_keys.private), lower)
        elsewhere = sign_floor(signing_key, lower.model_copy(update={"device_id": "dev-2"}))
        stale = sign_floor(signing_key, lower.model_copy(update={"issued_at": issued - timedelta(hours=1)}))
        for payload in (forged, elsewhere, stale, b""):
            publish_raw(broker.url, topics.floor(DEVICE), payload, retain=True)
        publish_bundle(broker.url, DEVICE, bundles["v1"], "d-4", version="1")
        assert "signed minimum version 2" in rejected("d-4")
        log = agent.process.log()
        assert log.count("event=floor_refused") == 2 and "event=floor_stale" in log

        # A newly signed floor without a minimum lowers it.
        capsys.readouterr()
        assert main(["floor", "--model", "digits", "--clear", *floor_flags, "--json"]) == 0
        (signed,) = json.loads(capsys.readouterr().out)
        assert (signed["device_id"], signed["model"], signed["min_version"]) == (DEVICE, "digits", None)
        publish_bundle(broker.url, DEVICE, bundles["v1"], "d-5", version="1")
        observer.wait_active("1")
