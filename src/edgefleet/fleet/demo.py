"""`edgefleet demo`: the whole path once, on real parts. A private mosquitto, three agents as separate
processes (rpi4, jetson-nano, coral-usb), the reference model converted per profile, v1 deployed, held-out
traffic, v2 deployed while the traffic runs, and a table of what every device did.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import textwrap
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

import numpy as np
from pydantic import BaseModel
from rich import box
from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from edgefleet.contract.errors import EdgefleetError
from edgefleet.contract.signing import create_key_pair
from edgefleet.converter.context import ConversionRequest
from edgefleet.converter.native_output import native_stderr_to_log
from edgefleet.converter.pipeline import ConversionResult, convert
from edgefleet.fleet.broker import MosquittoProcess, find_mosquitto
from edgefleet.fleet.consoles import stdout_console
from edgefleet.fleet.deploy import deploy_bundle
from edgefleet.fleet.describe import describe_backend
from edgefleet.fleet.inference import InferenceClient
from edgefleet.fleet.local_agent import LocalAgent
from edgefleet.fleet.status import collect_fleet_status
from edgefleet.fleet.traffic import TrafficDriver, TrafficStats
from edgefleet.reference_models import reference_model_dir

PROFILES = ("rpi4", "jetson-nano", "coral-usb")
MODEL_NAME = "digits"
VERSIONS = ("1", "2")
TELEMETRY_INTERVAL_S = 1.0
DEPLOY_TIMEOUT_S = 120.0


class ConversionRow(BaseModel):
    profile: str
    version: str
    bundle: str
    artifact: str
    size_bytes: int
    accuracy_fp32: float | None
    accuracy_artifact: float
    host_latency_ms_fp32: float
    host_latency_ms_artifact: float
    seconds: float


class DeviceRow(BaseModel):
    device_id: str
    profile: str
    artifact: str
    backend: str
    fallbacks: list[str]
    active_version: str | None
    accuracy_v1: float | None
    accuracy_v2: float | None
    p50_ms: float | None
    p95_ms: float | None
    rss_mb: float | None
    swaps: int
    requests: int
    failed_requests: int
    failures: list[str]


class DemoResult(BaseModel):
    ok: bool
    duration_s: float
    broker: str
    held_out_samples: int
    conversions: list[ConversionRow]
    devices: list[DeviceRow]
    problems: list[str]


def _artifact_label(result: ConversionResult) -> str:
    spec = result.profile.artifact
    return f"{spec.format.value} {spec.precision.value} ({result.inputs[0].dtype} I/O)"


class Demo:
    def __init__(self, workdir: Path, console: Console) -> None:
        self.workdir = workdir
        self.say = console

    def run(self) -> DemoResult:
        start = time.perf_counter()
        find_mosquitto()  # fail fast, with the install hint, before any work
        models = reference_model_dir()
        evaluation = np.load(models / "eval.npz")
        images, labels = evaluation["image"], evaluation["y"]
        _, public_key = create_key_pair(self.workdir / "keys")
        devices = {profile: f"demo-{profile}" for profile in PROFILES}
        problems: list[str] = []

        with ExitStack() as stack:
            broker = stack.enter_context(MosquittoProcess(self.workdir / "broker"))
            self.say.log(f"broker: mosquitto on {broker.url}")
            agents = {
                profile: stack.enter_context(
                    LocalAgent(
                        self.workdir / "devices" / device_id,
                        device_id=device_id,
                        profile=profile,
                        broker_url=broker.url,
                        trusted_key=public_key,
                        telemetry_interval_s=TELEMETRY_INTERVAL_S,
                    )
                )
                for profile, device_id in devices.items()
            }
            self.say.log(f"agents: started {', '.join(devices.values())} (separate processes)")
            conversions = self._convert_all(models)
            bundles = {(c.profile.name, v): c for (v, c) in conversions}

            self._deploy_all(broker.url, devices, bundles, "1")
            client = stack.enter_context(InferenceClient(broker.url, default_timeout=15.0))
            drivers = {
                profile: TrafficDriver(client, devices[profile], "image", images, labels, in_flight=4)
                for profile in PROFILES
            }
            with ThreadPoolExecutor(max_workers=len(PROFILES)) as pool:
                self.say.log("traffic: one pass over the held-out set on v1")
                v1 = dict(zip(PROFILES, pool.map(lambda p: drivers[p].one_pass(), PROFILES), strict=True))
                self.say.log("traffic: continuous, while v2 is deployed to every device")
                stop = threading.Event()
                during = {p: pool.submit(drivers[p].until, stop) for p in PROFILES}
                try:
                    self._deploy_all(broker.url, devices, bundles, "2")
                finally:
                    time.sleep(1.0)  # keep traffic on the new model for a moment after the swap
                    stop.set()
                swap = {p: future.result() for p, future in during.items()}
                self.say.log("traffic: one pass over the held-out set on v2")
                v2 = dict(zip(PROFILES, pool.map(lambda p: drivers[p].one_pass(), PROFILES), strict=True))
            time.sleep(TELEMETRY_INTERVAL_S * 1.5)  # let telemetry cover the last pass
            fleet = collect_fleet_status(broker.url, listen_s=TELEMETRY_INTERVAL_S * 2.5)

            rows = []
            for profile, device_id in devices.items():
                total = TrafficStats()
                for stats in (v1[profile], swap[profile], v2[profile]):
                    total.add(stats)
                view = (
                    fleet.device(device_id) if any(d.device_id == device_id for d in fleet.devices) else None
                )
                status = view.status if view else None
                telemetry = view.telemetry if view else None
                rows.append(
                    DeviceRow(
                        device_id=device_id,
                        profile=profile,
                        artifact=_artifact_label(bundles[(profile, "2")]),
                        backend=describe_backend(status.backend, with_fallbacks=False)
                        if status and status.backend
                        else "?",
                        fallbacks=list(status.backend.fallbacks) if status and status.backend else [],
                        active_version=status.model.version if status and status.model else None,
                        accuracy_v1=v1[profile].accuracy,
                        accuracy_v2=v2[profile].accuracy,
                        p50_ms=telemetry.latency_ms.p50 if telemetry else None,
                        p95_ms=telemetry.latency_ms.p95 if telemetry else None,
                        rss_mb=telemetry.rss_mb if telemetry else None,
                        swaps=status.swaps if status else 0,
                        requests=total.sent,
                        failed_requests=total.failed,
                        failures=total.failures,
                    )
                )
                if total.failed:
                    problems.append(f"{device_id}: {total.failed} failed requests ({total.failures[0]})")
                if not status or not status.model or status.model.version != VERSIONS[-1]:
                    problems.append(f"{device_id}: v{VERSIONS[-1]} is not active")
                if telemetry is None:
                    problems.append(f"{device_id}: no telemetry received")
            for profile, agent in agents.items():
                code = agent.stop()
                if code != 0:
                    problems.append(f"{devices[profile]}: agent exited with code {code} on SIGTERM")
            broker_url = broker.url

        return DemoResult(
            ok=not problems,
            duration_s=round(time.perf_counter() - start, 1),
            broker=broker_url,
            held_out_samples=len(images),
            conversions=[
                ConversionRow(
                    profile=c.profile.name,
                    version=v,
                    bundle=str(c.bundle_path),
                    artifact=_artifact_label(c),
                    size_bytes=c.metrics.size_bytes_artifact,
                    accuracy_fp32=c.metrics.accuracy.fp32 if c.metrics.accuracy else None,
                    accuracy_artifact=c.metrics.accuracy.artifact if c.metrics.accuracy else float("nan"),
                    host_latency_ms_fp32=c.metrics.host_latency_ms_fp32,
                    host_latency_ms_artifact=c.metrics.host_latency_ms_artifact,
                    seconds=round(c.total_seconds, 1),
                )
                for v, c in conversions
            ],
            devices=rows,
            problems=problems,
        )

    def _convert_all(self, models: Path) -> list[tuple[str, ConversionResult]]:
        results = []
        for version in VERSIONS:
            for profile in PROFILES:
                # the toolchains' native log lines go to a log file, not through the display
                status = self.say.status(f"converting digits v{version} for {profile}")
                with native_stderr_to_log() as native_log, status:
                    result = convert(
                        ConversionRequest(
                            model=models / f"digits_cnn_v{version}.onnx",
                            profile=profile,
                            calib=models / "calib.npz",
                            eval=models / "eval.npz",
                            out=self.workdir / "bundles",
                            name=MODEL_NAME,
                            version=version,
                            key=self.workdir / "keys" / "fleet.key",
                        )
                    )
                native_log.unlink(missing_ok=True)
                acc = result.metrics.accuracy
                self.say.log(
                    f"converted v{version} for {profile}: {_artifact_label(result)}, "
                    f"{result.metrics.size_bytes_artifact / 1024:.0f} KiB, top-1 "
                    f"{acc.fp32 if acc else '?'}% fp32 -> {acc.artifact if acc else '?'}% "
                    f"({result.total_seconds:.1f} s)"
                )
                results.append((version, result))
        return results

    def _deploy_all(
        self,
        broker_url: str,
        devices: dict[str, str],
        bundles: dict[tuple[str, str], ConversionResult],
        version: str,
    ) -> None:
        def one(profile: str) -> None:
            result = deploy_bundle(
                broker_url,
                bundles[(profile, version)].bundle_path,
                devices[profile],
                wait=True,
                timeout=DEPLOY_TIMEOUT_S,
            )
            self.say.log(f"deploy: v{version} active on {devices[profile]} after {result.wait_seconds:.1f} s")

        with ThreadPoolExecutor(max_workers=len(devices)) as pool:
            for future in [pool.submit(one, p) for p in devices]:
                future.result()


def _fmt(value: float | None, digits: int = 2, suffix: str = "") -> str:
    return "-" if value is None else f"{value:.{digits}f}{suffix}"


WIDE = 170  # columns from which the demo's table carries profile, artifact and backend as columns


def render(result: DemoResult, width: int | None = None) -> Group:
    """The result table; narrower than WIDE (80 columns included), what ran where moves under the
    table, one line per device, so no cell wraps mid-word."""
    wide = width is None or width >= WIDE
    title = f"edgefleet demo: {result.held_out_samples} held-out digits, {result.duration_s} s"
    if not wide:
        title = f"edgefleet demo: {result.held_out_samples} digits, {result.duration_s} s; v1/v2 top-1, ms"
    table = Table(title=title, box=box.HEAVY_HEAD if wide else None, pad_edge=wide)
    where = ("profile", "artifact", "backend used") if wide else ()
    figures = (
        ("top-1 v1", "top-1 v2", "p50/p95 ms", "RSS MB", "swaps", "requests", "failed")
        if wide
        else ("v1", "v2", "p50/p95", "RSS MB", "swaps", "reqs", "failed")
    )
    for column in ("device", *where, *figures):
        wraps = column == "backend used" or (not wide and column == "device")
        table.add_column(column, overflow="fold", no_wrap=not wraps)
    below: list[Text] = []
    for row in result.devices:
        backend = row.backend + (" [yellow](fallback*)[/]" if row.fallbacks else "")
        cells = [row.profile, row.artifact, backend] if wide else []
        table.add_row(
            row.device_id,
            *cells,
            _fmt(row.accuracy_v1, 1, "%"),
            _fmt(row.accuracy_v2, 1, "%"),
            f"{_fmt(row.p50_ms, 2)} / {_fmt(row.p95_ms, 2)}",
            _fmt(row.rss_mb, 0),
            str(row.swaps),
            str(row.requests),
            str(row.failed_requests),
        )
        if not wide:
            line = f"{row.device_id}: {row.profile}, {row.artifact}, on {row.backend}"
            text = Text(hanging(line + (" (fallback*)" if row.fallbacks else ""), width or WIDE))
            text.highlight_words(["(fallback*)"], "yellow")
            below.append(text)
    return Group(table, *below)


def hanging(line: str, width: int) -> str:
    """`line` wrapped at `width`, its continuation lines indented under it."""
    return textwrap.fill(line, width, subsequent_indent="  ", break_long_words=False, break_on_hyphens=False)


def render_fallbacks(result: DemoResult, width: int) -> list[str]:
    return [
        hanging(f"* {row.device_id}: {fallback}", width)
        for row in result.devices
        for fallback in row.fallbacks
    ]


def run_demo(args: argparse.Namespace) -> int:
    console = Console(stderr=True, log_path=False)  # no source locations in what a user reads
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="edgefleet-demo-"))
    try:
        result = Demo(workdir.resolve(), console).run()
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        print(json.dumps(result.model_dump(mode="json"), indent=2))
    else:
        out = stdout_console(pipe_width=WIDE)
        out.print(render(result, out.width))
        for line in render_fallbacks(result, out.width):
            out.print(line, highlight=False, markup=False)
        for problem in result.problems:
            console.print(f"[red]problem:[/] {problem}")
    if not result.ok:
        raise EdgefleetError("the demo did not complete cleanly: " + "; ".join(result.problems))
    return 0
