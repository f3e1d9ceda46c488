"""The agent process: wires config, store, model slot, MQTT session, deployment, inference and telemetry,
and runs until SIGTERM/SIGINT (stop taking requests, finish the queued ones, say offline, disconnect).
"""

from __future__ import annotations

import math
import signal
import threading
import time
from pathlib import Path
from typing import Any

from edgefleet.agent.config import AgentConfig
from edgefleet.agent.deployment import Deployer, DeploymentSettings
from edgefleet.agent.dispatch import Worker
from edgefleet.agent.http_api import HttpApi
from edgefleet.agent.inference import InferenceService
from edgefleet.agent.log import EventLog
from edgefleet.agent.model_slot import ModelSlot
from edgefleet.agent.prometheus import render as render_metrics
from edgefleet.agent.request_memory import RequestMemory
from edgefleet.agent.sdnotify import SystemdNotifier
from edgefleet.agent.session import Envelope, MqttSession
from edgefleet.agent.status import StatusReporter
from edgefleet.agent.store import BundleStore
from edgefleet.agent.telemetry import RequestMetrics, TelemetryCollector
from edgefleet.contract import topics
from edgefleet.contract.messages import MAX_CHUNK_SIZE, PACKET_HEADROOM, Presence
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
            config.client_id,
            config.broker_address,
            keepalive_s=config.keepalive_s,
            session_expiry_s=config.session_expiry_s,
            will=(topics.online(device), Presence(online=False).to_bytes()),
            # nothing larger than a request or a bundle chunk is ever read: the broker drops it for us
            max_packet_bytes=max(config.max_request_bytes, MAX_CHUNK_SIZE) + PACKET_HEADROOM,
        )
        self.reporter = StatusReporter(device, self.profile.name, self.slot, self._publish, config.tags)
        self.deployer = Deployer(
            self.store,
            self.slot,
            self.reporter,
            self.session,
            self.profile,
            DeploymentSettings.from_config(config),
            anti_rollback=config.anti_rollback,
        )
        self.inference = InferenceService(
            self.slot,
            self.metrics,
            self._publish,
            max_request_bytes=config.max_request_bytes,
            memory=RequestMemory(config.request_memory_bytes(self.profile.memory_budget_mb)),
        )
        self.telemetry = TelemetryCollector(device, config.telemetry_interval_s, self.metrics, self.slot)
        self.http = (
            HttpApi(
                config.http_host,
                config.http_port,
                service=self.inference,
                metrics_text=self._metrics_text,
                max_request_bytes=config.max_request_bytes,
                max_inflight=config.max_queued_requests,
                max_connections=config.http_max_connections,
            )
            if config.http_port is not None
            else None
        )
        self.systemd = SystemdNotifier.from_env()
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
        self.session.route("meta", topics.ALL_BUNDLE_META, self.control.submit)
        self.session.route("chunk", topics.ALL_BUNDLE_CHUNKS, self.control.submit)
        self.session.route("infer", topics.infer(device), self._on_request)
        self.session.route("floor", topics.floor(device), self.control.submit)
        self.session.on_connected = self._on_connected

    def _publish(
        self, topic: str, payload: bytes, qos: int = 1, retain: bool = False, properties: Any = None
    ) -> Any:
        return self.session.publish(topic, payload, qos=qos, retain=retain, properties=properties)

    def _on_request(self, envelope: Envelope) -> None:
        # network thread: only enqueue (or answer at once when we cannot take the request)
        if self._closing:
            self.inference.reply_shutting_down(envelope)
        elif not self.inference.admit(envelope):
            return
        elif not self.requests.submit(envelope):
            self.inference.release(envelope)
            self.inference.reply_busy(envelope)

    def _on_connected(self) -> None:
        self._publish(topics.online(self.config.device_id), Presence(online=True).to_bytes(), 1, True)
        self.reporter.publish()
        # the deployer re-asks for what a delivery lacks (a restarted broker may have lost it)
        self.control.submit(Envelope("connected", "", b"", None, False))

    def request_stop(self, signum: int = 0, frame: object = None) -> None:
        self._stop.set()

    def _metrics_text(self) -> str:
        ready = self.slot.current is not None and not self._closing
        return render_metrics(
            self.telemetry.current(), self.metrics.totals(), profile=self.profile.name, ready=ready
        )

    def _start_http(self) -> None:
        """The HTTP API is an extra: when it cannot listen, say so loudly and keep serving over MQTT."""
        if self.http is None:
            return
        try:
            self.http.start()
        except OSError as exc:
            where = f"http_host/http_port in {self.config_path}" if self.config_path else "http_port"
            message = (
                f"the HTTP API cannot listen on {self.config.http_host}:{self.config.http_port} "
                f"({exc.strerror or exc}); MQTT inference keeps working; change {where}"
            )
            log.error("http_unavailable", error=message)
            self.reporter.event("error", message)
            self.http = None

    def _healthy(self) -> bool:
        """What the systemd watchdog ping vouches for besides this loop running."""
        return self.http is None or self.http.alive()

    def _publish_telemetry(self) -> None:
        telemetry = self.telemetry.sample()
        # retained, expiring: a host command started between two reports (`status`, `devices`) gets the
        # latest at once, and a device gone silent for a minute leaves nothing behind
        self._publish(
            topics.telemetry(self.config.device_id),
            telemetry.to_bytes(),
            0,
            True,
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
        if self.config.anti_rollback:
            self.session.subscribe(topics.floor(self.config.device_id))
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
        self._start_http()
        model = self.slot.current
        self.systemd.ready(f"serving {model.manifest.name} v{model.version}" if model else "no model yet")
        interval = self.config.telemetry_interval_s
        ping_every = self.systemd.watchdog_s or math.inf
        next_telemetry = time.monotonic() + interval
        while not self._stop.wait(max(0.0, min(ping_every, next_telemetry - time.monotonic()))):
            if self._healthy():
                self.systemd.watchdog()
            if time.monotonic() >= next_telemetry:
                next_telemetry = max(next_telemetry + interval, time.monotonic())
                try:
                    self._publish_telemetry()
                except Exception as exc:
                    log.exception("telemetry_failed", exc)
        return self._shutdown()

    def _shutdown(self) -> int:
        log.info("stopping")
        self.systemd.stopping("finishing in-flight requests")
        self._closing = True
        if self.http is not None:
            self.http.close()  # refuses new requests, lets those in flight finish
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
        counts, _ = self.metrics.snapshot()
        log.info("stopped", requests=counts.requests, errors=counts.errors)
        return 0
