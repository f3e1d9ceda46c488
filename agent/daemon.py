"""The agent process: wires config, store, model slot, MQTT session, deployment, inference and telemetry,
and runs until SIGTERM/SIGINT (stop taking requests, finish the queued ones, say offline, disconnect).
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Any

from edgefleet.agent.config import AgentConfig
from edgefleet.agent.deployment import Deployer
from edgefleet.agent.dispatch import Worker
from edgefleet.agent.inference import InferenceService
from edgefleet.agent.log import EventLog
from edgefleet.agent.model_slot import ModelSlot
from edgefleet.agent.session import Envelope, MqttSession
from edgefleet.agent.status import StatusReporter
from edgefleet.agent.store import BundleStore
from edgefleet.agent.telemetry import CpuSampler, RequestMetrics, rss_mb
from edgefleet.contract import topics
from edgefleet.contract.messages import Presence, Telemetry
from edgefleet.contract.profiles import load_profile
from edgefleet.contract.signing import load_public_key
from edgefleet.mqtt import BrokerError, publish_properties

log = EventLog("agent")
TELEMETRY_EXPIRY_S = 60


class Agent:
    def __init__(self, config: AgentConfig, config_path: Path | None = None) -> None:
        self.config = config
        self.config_path = config_path
        self.profile = load_profile(config.profile)
        self.store = BundleStore(
            config.state_dir, load_public_key(config.trusted_key), self.profile.name, keep=config.keep_bundles
        )
        self.slot = ModelSlot()
        self.metrics = RequestMetrics(config.latency_window)
        device = config.device_id
        self.session = MqttSession(
            f"edgefleet-agent-{device}",
            config.broker_address,
            keepalive_s=config.keepalive_s,
            session_expiry_s=config.session_expiry_s,
            will=(topics.online(device), Presence(online=False).to_bytes()),
        )
        self.reporter = StatusReporter(device, self.profile.name, self.slot, self._publish)
        self.deployer = Deployer(self.store, self.slot, self.reporter, self.session, self.profile)
        self.inference = InferenceService(self.slot, self.metrics, self._publish)
        self.control: Worker[Envelope] = Worker("control", self.deployer.handle, on_idle=self.deployer.tick)
        self.requests: Worker[Envelope] = Worker(
            "infer",
            self.inference.handle,
            threads=config.inference_workers,
            max_queued=config.max_queued_requests,
        )
        self._stop = threading.Event()
        self._closing = False
        self.session.route("desired", topics.desired(device), self.control.submit)
        self.session.route("meta", f"{topics.PREFIX}/bundles/+/meta", self.control.submit)
        self.session.route("chunk", f"{topics.PREFIX}/bundles/+/chunks/+", self.control.submit)
        self.session.route("infer", topics.infer(device), self._on_request)
        self.session.on_connected = self._on_connected

    def _publish(
        self, topic: str, payload: bytes, qos: int = 1, retain: bool = False, properties: Any = None
    ) -> Any:
        return self.session.publish(topic, payload, qos=qos, retain=retain, properties=properties)

    def _on_request(self, envelope: Envelope) -> None:
        # network thread: only enqueue (or answer at once when we cannot take the request)
        if self._closing:
            self.inference.reply_shutting_down(envelope)
        elif not self.requests.submit(envelope):
            self.inference.reply_busy(envelope)

    def _on_connected(self) -> None:
        self._publish(topics.online(self.config.device_id), Presence(online=True).to_bytes(), 1, True)
        self.reporter.publish()

    def request_stop(self, signum: int = 0, frame: object = None) -> None:
        self._stop.set()

    def _publish_telemetry(self, cpu: CpuSampler) -> None:
        requests, errors, latency = self.metrics.snapshot()
        model = self.slot.current
        telemetry = Telemetry(
            device_id=self.config.device_id,
            interval_s=self.config.telemetry_interval_s,
            model_version=model.version if model else None,
            requests=requests,
            errors=errors,
            latency_ms=latency,
            rss_mb=rss_mb(),
            cpu_percent=cpu.sample(),
            swaps=self.slot.swaps,
        )
        self._publish(
            topics.telemetry(self.config.device_id),
            telemetry.to_bytes(),
            0,
            False,
            publish_properties(MessageExpiryInterval=TELEMETRY_EXPIRY_S),
        )

    def run(self) -> int:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self.request_stop)
        log.info(
            "starting",
            device_id=self.config.device_id,
            profile=self.profile.name,
            broker=self.config.broker_address,
            state_dir=self.config.state_dir,
        )
        self.deployer.restore_active()
        self.control.start()
        self.requests.start()
        self.session.subscribe(topics.desired(self.config.device_id))
        self.session.subscribe(topics.infer(self.config.device_id))
        try:
            self.session.start()
        except BrokerError as exc:
            cause = exc.__cause__
            where = f"'broker' in {self.config_path}" if self.config_path else "the broker URL"
            reason = getattr(cause, "strerror", None) or cause or exc
            log.error(
                "broker_unreachable",
                error=f"cannot reach the MQTT broker at {self.config.broker_address} "
                f"({reason}); check that it runs and that {where} is right",
            )
            self.slot.clear()
            return 1
        self.deployer.announce_fallbacks()
        cpu = CpuSampler()
        while not self._stop.wait(self.config.telemetry_interval_s):
            try:
                self._publish_telemetry(cpu)
            except Exception as exc:
                log.exception("telemetry_failed", exc)
        return self._shutdown()

    def _shutdown(self) -> int:
        log.info("stopping")
        self._closing = True
        self.session.unsubscribe(topics.infer(self.config.device_id))
        self.requests.stop()  # answers what was already queued
        self.control.stop()
        info = self._publish(topics.online(self.config.device_id), Presence(online=False).to_bytes(), 1, True)
        if info is not None:
            try:
                info.wait_for_publish(timeout=3)
            except (RuntimeError, ValueError) as exc:
                log.warning("offline_not_published", error=str(exc))
        self.session.stop()
        self.slot.clear()
        requests, errors, _ = self.metrics.snapshot()
        log.info("stopped", requests=requests, errors=errors)
        return 0
