"""The Deployer in-process (no broker: its session never connects), for failure paths that are hard to
reach with a real process."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from agent_helpers import DEVICE, TEST_PROFILE, Keys
from support_bundles import chunked_bundle

from edgefleet.agent.deployment import Deployer, DeploymentSettings
from edgefleet.agent.model_slot import ModelSlot
from edgefleet.agent.session import Envelope, MqttSession
from edgefleet.agent.status import StatusReporter
from edgefleet.agent.store import BundleStore
from edgefleet.contract import topics
from edgefleet.contract.messages import DesiredState
from edgefleet.contract.profiles import load_profile
from edgefleet.contract.signing import load_public_key
from edgefleet.mqtt import BrokerAddress

MIB = 1024 * 1024


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


class _Harness:
    """A Deployer on a manual clock and a disk whose free space the test sets."""

    def __init__(self, tmp_path: Path, keys: Keys, probation_s: float = 30.0) -> None:
        self.now = 1000.0
        self.free = 10 * MIB
        self.published: list[tuple[str, bytes]] = []
        slot = ModelSlot()
        reporter = StatusReporter(
            DEVICE, TEST_PROFILE, slot, lambda t, p, q, r: self.published.append((t, p))
        )
        session = MqttSession(
            "unit", BrokerAddress.parse("mqtt://127.0.0.1:1"), keepalive_s=30, session_expiry_s=0,
            will=(topics.online(DEVICE), b""),
        )  # fmt: skip
        store = BundleStore(
            tmp_path / "state", load_public_key(keys.public), TEST_PROFILE, free_bytes=lambda _: self.free
        )
        self.deployer = Deployer(
            store,
            slot,
            reporter,
            session,
            load_profile(TEST_PROFILE),
            DeploymentSettings(probation_s=probation_s),
            clock=lambda: self.now,
        )
        self.deployer.on_connected()

    def events(self) -> list[dict[str, str]]:
        """The events besides the delivery's progress."""
        events = [json.loads(p) for t, p in self.published if t == topics.events(DEVICE)]
        return [e for e in events if not e["kind"].startswith("delivery_")]

    def send(self, route: str, topic: str, message: bytes) -> None:
        self.deployer.handle(Envelope(route, topic, message, None, True))


def test_a_full_disk_defers_the_deployment_and_it_is_tried_again_with_backoff(
    tmp_path: Path, keys: Keys
) -> None:
    """Issue 10: disk space is checked before a download starts; a deployment the device itself fails
    (disk, descriptors, memory) gets no verdict: the retained desired state is tried again, 5 s then
    doubling, until it succeeds."""
    harness = _Harness(tmp_path, keys)
    _, bundle_meta = chunked_bundle(b"x" * (12 * MIB), 4 * MIB, version="2", profile=TEST_PROFILE)
    bundle_id, meta = bundle_meta.bundle_id, bundle_meta.to_bytes()
    desired = DesiredState(
        deployment_id="d-2", bundle_id=bundle_id, name="digits", version="2", profile=TEST_PROFILE
    ).to_bytes()
    harness.send("desired", topics.desired(DEVICE), desired)
    harness.send("meta", topics.bundle_meta(bundle_id), meta)  # 12 MiB, twice that needed: 10 MiB free
    (error,) = harness.events()
    assert error["kind"] == "error" and "not enough disk space" in error["detail"]
    assert "trying again in 5 s (attempt 1)" in error["detail"]
    assert harness.deployer.ledger.verdict_for("d-2", bundle_id) is None
    assert harness.deployer.delivery is None
    assert not (tmp_path / "state" / "incoming" / f"{bundle_id}.part").exists()  # not one byte written

    harness.send("desired", topics.desired(DEVICE), desired)  # the retained desired again, too early
    assert harness.deployer.delivery is None
    harness.now += 5
    harness.deployer.tick()  # due: tried again, the disk still full
    harness.send("meta", topics.bundle_meta(bundle_id), meta)
    assert "trying again in 10 s (attempt 2)" in harness.events()[-1]["detail"]
    harness.now += 10
    harness.free = 1024 * MIB  # room made
    harness.deployer.tick()
    harness.send("meta", topics.bundle_meta(bundle_id), meta)
    assert harness.deployer.delivery is not None and harness.deployer.delivery.store is not None
    assert [e["kind"] for e in harness.events()] == ["error", "error"]  # no rejection ever


def test_only_the_machine_running_out_of_something_is_worth_retrying() -> None:
    """A bundle declaring a 233 TiB input raised MemoryError and was retried forever; a member path that
    is a directory raised IsADirectoryError, likewise (found by fuzzing). Both are the bundle's fault."""
    import errno

    from edgefleet.agent.deployment import device_trouble

    assert device_trouble(OSError(errno.ENOSPC, "No space left on device"))
    assert device_trouble(OSError(errno.EMFILE, "Too many open files"))
    assert not device_trouble(MemoryError("Unable to allocate 233. TiB"))
    assert not device_trouble(IsADirectoryError(errno.EISDIR, "Is a directory"))


def test_a_model_whose_numbers_drift_during_probation_is_rolled_back(
    tmp_path: Path, keys: Keys, reference_dir: Path
) -> None:
    """Issue 10: probation compares against the golden outputs too. v2 passes its health check, then its
    runtime starts computing other numbers (as a kernel or delegate may under real traffic): at the end
    of its probation the health samples no longer give the converter's outputs, and v1 serves again."""
    import numpy as np
    import onnxruntime as ort
    from agent_helpers import make_bundle, make_custom_bundle

    harness = _Harness(tmp_path, keys, probation_s=5)
    harness.free = 1024 * MIB
    deployer = harness.deployer
    model_file = reference_dir / "digits_cnn_v2.onnx"
    samples = np.load(reference_dir / "eval.npz")["image"][:8]
    session = ort.InferenceSession(str(model_file), providers=["CPUExecutionProvider"])
    logits = session.run(None, {"image": samples})[0]
    bundles = {
        "1": make_bundle(tmp_path / "v1.efb", reference_dir / "digits_cnn_v1.onnx", keys.private, "1"),
        "2": make_custom_bundle(
            tmp_path / "v2.efb", model_file, keys.private, "2",
            health_samples=samples, health_reference=(logits, 30.0),
        ),
    }  # fmt: skip
    for version, bundle in bundles.items():
        installed = deployer.store.install(bundle, hashlib.sha256(bundle.read_bytes()).hexdigest())
        desired = DesiredState(
            deployment_id=f"d-{version}", bundle_id=installed.bundle_id, name="digits", version=version,
            profile=TEST_PROFILE,
        )  # fmt: skip
        deployer._activate(installed, desired)
    v2 = deployer.slot.current
    assert v2 is not None and v2.version == "2" and deployer.watch is not None
    real_run = v2.backend.run
    v2.backend.run = lambda feeds: {k: v * 0.5 for k, v in real_run(feeds).items()}  # type: ignore[method-assign]
    harness.now += 6
    deployer.tick()
    current = deployer.slot.current
    assert current is not None and current.version == "1"
    (rolled_back,) = [e for e in harness.events() if e["kind"] == "rolled_back"]
    assert "at the end of its probation its outputs were no longer the converter's" in rolled_back["detail"]
