"""The Deployer in-process (no broker: its session never connects), for failure paths that are hard to
reach with a real process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from agent_helpers import DEVICE, TEST_PROFILE, Keys

from edgefleet.agent.deployment import Deployer
from edgefleet.agent.model_slot import ModelSlot
from edgefleet.agent.session import Envelope, MqttSession
from edgefleet.agent.status import StatusReporter
from edgefleet.agent.store import BundleStore
from edgefleet.contract import topics
from edgefleet.contract.messages import DesiredState
from edgefleet.contract.profiles import load_profile
from edgefleet.contract.signing import load_public_key
from edgefleet.mqtt import BrokerAddress


def test_a_rejection_is_published_even_when_its_verdict_cannot_be_saved(
    tmp_path: Path, keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Out of descriptors (EMFILE) a deployment failed and then the verdict's own write failed too, so the
    handler died before telling the host: the host must hear `rejected` whatever the disk says."""
    published: list[tuple[str, bytes]] = []
    slot = ModelSlot()
    reporter = StatusReporter(DEVICE, TEST_PROFILE, slot, lambda t, p, q, r: published.append((t, p)))
    session = MqttSession(
        "unit", BrokerAddress.parse("mqtt://127.0.0.1:1"), keepalive_s=30, session_expiry_s=0,
        will=(topics.online(DEVICE), b""),
    )  # fmt: skip
    store = BundleStore(tmp_path / "state", load_public_key(keys.public), TEST_PROFILE)
    deployer = Deployer(store, slot, reporter, session, load_profile(TEST_PROFILE))
    deployer.on_connected()

    def no_descriptors(*args: object) -> None:
        raise OSError(24, "Too many open files")

    monkeypatch.setattr(deployer.ledger, "add_verdict", no_descriptors)
    desired = DesiredState(
        deployment_id="d-x", bundle_id="a" * 64, name="digits", version="9", profile="another-profile"
    )
    deployer.on_desired(Envelope("desired", topics.desired(DEVICE), desired.to_bytes(), None, True))

    events = [json.loads(p) for t, p in published if t == topics.events(DEVICE)]
    assert [e["kind"] for e in events] == ["rejected"] and "another-profile" in events[0]["detail"]
    status = json.loads([p for t, p in published if t == topics.status(DEVICE)][-1])
    assert "another-profile" in status["last_error"]
