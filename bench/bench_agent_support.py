"""Shared parts of the device-agent benchmarks (bench/bench_agent_*.py): converted bundles of the reference
models, the bare LiteRT runtime they are compared with, a private broker with a real agent process, and
latency summaries. Not a benchmark itself.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import yaml

from edgefleet.contract.profiles import PROFILES_PATH_ENV, load_profile

DEVICE = "bench-1"
CALIB_SAMPLES = 64  # enough for the activation ranges; more only makes the conversion slower


def machine_load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} CPUs"


@dataclass(frozen=True)
class Summary:
    """Latency figures of one path, in ms."""

    samples: int
    p50: float
    mean: float
    p99: float
    worst: float

    @classmethod
    def of(cls, values_ms: Sequence[float]) -> Summary:
        data = np.asarray(values_ms, dtype=np.float64)
        return cls(
            samples=int(data.size),
            p50=float(np.percentile(data, 50)),
            mean=float(data.mean()),
            p99=float(np.percentile(data, 99)),
            worst=float(data.max()),
        )


def percent(value: float, reference: float) -> float:
    return (value - reference) / reference * 100


THREADS_HELP = "default: the profile's, at most the CPUs"


def agent_bench_parser(description: str, threads_help: str = THREADS_HELP) -> argparse.ArgumentParser:
    """The options the agent benchmarks share, --profile (rpi4), --threads and --work (where converted
    bundles are kept); each benchmark adds its own."""
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--profile", default="rpi4")
    parser.add_argument("--threads", type=int, default=None, help=threads_help)
    parser.add_argument("--work", type=Path, default=None, help="keep converted bundles here (reused)")
    return parser


# -- profiles and bundles ----------------------------------------------------------------------------------


def use_profile_threads(work: Path, profile: str, threads: int | None) -> int:
    """The thread count the profile's runtime uses; with `threads`, a copy of the profile with that count
    is put first on the profile search path (this process and the agents it starts inherit it)."""
    spec = load_profile(profile)
    if spec.runtime.engine.value != "litert":
        raise SystemExit(
            f"profile '{profile}' runs on {spec.runtime.engine.value}; these benchmarks compare the agent "
            "with the bare LiteRT runtime: pick a litert profile (e.g. rpi4, rpi5)"
        )
    if threads is None or threads == spec.runtime.threads:
        return spec.runtime.threads
    directory = work / "profiles"
    directory.mkdir(parents=True, exist_ok=True)
    data = spec.model_dump(mode="json", exclude_none=True)
    data["runtime"]["threads"] = threads
    (directory / f"{profile}.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    os.environ[PROFILES_PATH_ENV] = os.pathsep.join(
        [str(directory), *[p for p in os.environ.get(PROFILES_PATH_ENV, "").split(os.pathsep) if p]]
    )
    assert load_profile(profile).runtime.threads == threads
    return threads


class BenchWork(NamedTuple):
    """Where a benchmark keeps its bundles and keys, and the runtime thread count both sides use."""

    work: Path
    threads: int
    private_key: Path
    public_key: Path


def prepare_work(tmp: Path, work: Path | None, profile: str, threads: int | None) -> BenchWork:
    """The bundle folder `work` (default `tmp`) created, the thread count put in force through a profile
    copy under `tmp` (`threads`, else the profile's, at most this machine's CPUs), and the fleet key pair."""
    work = work or tmp
    work.mkdir(parents=True, exist_ok=True)
    wanted = threads or min(load_profile(profile).runtime.threads, os.cpu_count() or 1)
    used = use_profile_threads(tmp, profile, wanted)
    private_key, public_key = keys(work)
    return BenchWork(work, used, private_key, public_key)


def reference_bundles(work: Path, profile: str, private_key: Path) -> dict[str, Path]:
    """The two reference models, converted for `profile`, by the label a benchmark prints."""
    return {
        "digits CNN": convert_reference(work, "digits", profile, "1", private_key),
        "MobileNetV2 224": convert_reference(work, "mobilenet", profile, "1", private_key, 224),
    }


def keys(work: Path) -> tuple[Path, Path]:
    """The fleet key pair in `work/keys` (made once, so bundles kept in `work` stay verifiable)."""
    from edgefleet.contract.signing import PRIVATE_KEY_FILE, PUBLIC_KEY_FILE, create_key_pair

    directory = work / "keys"
    if (directory / PRIVATE_KEY_FILE).exists():
        return directory / PRIVATE_KEY_FILE, directory / PUBLIC_KEY_FILE
    return create_key_pair(directory)


def convert_reference(
    work: Path, model: str, profile: str, version: str, private_key: Path, size: int = 224
) -> Path:
    """A signed bundle of a reference model ('digits' CNN or 'mobilenet' at `size`) converted by the
    converter API for `profile`; reused from `work` when it is already there."""
    from edgefleet.converter.context import ConversionRequest
    from edgefleet.converter.pipeline import convert
    from edgefleet.reference_models import reference_model_dir
    from edgefleet.reference_models.mobilenet_digits import MODEL_FILES, upscale_digits

    models = reference_model_dir()
    out = work / f"bundles-{model}-{profile}-v{version}"
    done = sorted(out.glob("*.efb")) if out.is_dir() else []
    if done:
        return done[0]
    if model == "digits":
        source, calib, name = models / f"digits_cnn_v{version}.onnx", models / "calib.npz", "digits"
    else:
        source, name = models / MODEL_FILES[size], f"mobilenet{size}"
        calib = work / f"calib_{size}.npz"
        if not calib.exists():
            with np.load(models / "calib.npz") as data:
                images = data["image"][:CALIB_SAMPLES]
            np.savez(calib, image=upscale_digits(images, size))
    started = time.perf_counter()
    result = convert(
        ConversionRequest(
            model=source, profile=profile, calib=calib, out=out, name=name, version=version, key=private_key
        )
    )
    print(f"# converted {source.name} for {profile} (v{version}) in {time.perf_counter() - started:.1f} s")
    return result.bundle_path


def unpack(bundle: Path, dest: Path, public_key: Path) -> tuple[str, Any]:
    """(bundle id, manifest) of a verified bundle unpacked into `dest`."""
    from edgefleet.contract.bundle import extract_bundle, sha256_file
    from edgefleet.contract.signing import load_public_key

    shutil.rmtree(dest, ignore_errors=True)
    manifest = extract_bundle(bundle, dest, load_public_key(public_key))
    return sha256_file(bundle), manifest


def as_version(
    bundle: Path,
    version: str,
    out: Path,
    private_key: Path,
    public_key: Path,
    extra_files: dict[str, Path] | None = None,
) -> Path:
    """The same model as `bundle` signed again as `version` (a new bundle id), without converting again;
    `extra_files` are added as listed (signed, hashed) files."""
    from edgefleet.contract.bundle import write_bundle
    from edgefleet.contract.signing import load_private_key

    unpacked = out.with_suffix(".src")
    _, manifest = unpack(bundle, unpacked, public_key)
    files = {entry.path: unpacked / entry.path for entry in manifest.files} | (extra_files or {})
    write_bundle(out, manifest.model_copy(update={"version": version}), files, load_private_key(private_key))
    return out


class BareRuntime:
    """The runtime called directly, as a user without the agent would: ai_edge_litert's Interpreter with
    the same model file and thread count (default op resolver, i.e. XNNPACK, as the agent on a CPU)."""

    def __init__(self, model_path: Path, threads: int) -> None:
        from ai_edge_litert.interpreter import Interpreter

        self.interpreter = Interpreter(model_path=str(model_path), num_threads=threads)
        self.interpreter.allocate_tensors()
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]

    @classmethod
    def wrapping(cls, interpreter: Any) -> BareRuntime:
        """An Interpreter that is already loaded (e.g. the agent's own)."""
        bare = cls.__new__(cls)
        bare.interpreter = interpreter
        bare.input = interpreter.get_input_details()[0]
        bare.output = interpreter.get_output_details()[0]
        return bare

    def run(self, array: np.ndarray) -> np.ndarray:
        self.interpreter.set_tensor(self.input["index"], array)
        self.interpreter.invoke()
        return self.interpreter.get_tensor(self.output["index"])

    def sample_input(self, seed: int = 0) -> np.ndarray:
        info = np.iinfo(self.input["dtype"])
        rng = np.random.default_rng(seed)
        return rng.integers(info.min, info.max, size=self.input["shape"], dtype=self.input["dtype"])


def float_sample(manifest: Any, seed: int = 0) -> np.ndarray:
    """A float-form input (the source model's layout, values in [0, 1]) of the manifest's first input."""
    spec = manifest.inputs[0]
    shape = [1 if d is None else d for d in spec.float_shape]
    return np.random.default_rng(seed).random(shape, dtype=np.float32)


def artifact_sample(manifest: Any, seed: int = 0) -> np.ndarray:
    """The same input in the artifact's own form (permuted and quantized as the manifest says)."""
    from edgefleet.contract.tensors import to_artifact

    return to_artifact(manifest.inputs[0], float_sample(manifest, seed))[0]


# -- a private broker and a real agent process --------------------------------------------------------------


def read_vm_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS in /proc/{pid}/status")


class Agent:
    """A real agent process (`python -m edgefleet.cli agent`) with a config we write, logging to a file."""

    def __init__(
        self, workdir: Path, broker_url: str, public_key: Path, profile: str, **config: object
    ) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = workdir / "agent.yaml"
        self.log_path = workdir / "agent.log"
        settings = {
            "device_id": DEVICE,
            "profile": profile,
            "broker": broker_url,
            "state_dir": str(workdir / "state"),
            "trusted_key": str(public_key),
            "telemetry_interval_s": 5.0,
            **config,
        }
        self.config_path.write_text(yaml.safe_dump(settings))
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Agent:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "edgefleet.cli", "agent", "--config", str(self.config_path)],
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def wait_log(self, pattern: str, timeout: float = 30) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = re.search(pattern, self.log())
            if found:
                return found
            if not self.alive():
                raise RuntimeError(f"the agent exited:\n{self.log()[-3000:]}")
            time.sleep(0.05)
        raise RuntimeError(f"the agent did not log {pattern!r} within {timeout} s:\n{self.log()[-3000:]}")

    def http_port(self) -> int:
        return int(self.wait_log(r"event=http_listening host=\S+ port=(\d+)").group(1))

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class DeviceWatcher:
    """Records, with arrival times, the status and events the device publishes (a plain paho client)."""

    def __init__(self, broker_url: str, device_id: str = DEVICE) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.subscribeoptions import SubscribeOptions

        from edgefleet.contract import topics
        from edgefleet.mqtt import BrokerAddress, connect, new_client

        self.lock = threading.Condition()
        self.status: list[tuple[float, dict[str, Any]]] = []
        self.events: list[tuple[float, dict[str, Any]]] = []
        self._status_topic = topics.status(device_id)
        self._events_topic = topics.events(device_id)
        self.client = new_client(f"bench-watch-{uuid.uuid4().hex[:8]}")
        ready = threading.Event()

        def on_connect(*_: Any) -> None:
            for topic in (self._status_topic, self._events_topic):
                self.client.subscribe(topic, options=SubscribeOptions(qos=1))
            ready.set()

        def on_message(_c: Any, _u: Any, message: mqtt.MQTTMessage) -> None:
            import json

            now = time.monotonic()
            try:
                body = json.loads(message.payload) if message.payload else {}
            except ValueError:
                return
            with self.lock:
                target = self.status if message.topic == self._status_topic else self.events
                target.append((now, body))
                self.lock.notify_all()

        self.client.on_connect = on_connect
        self.client.on_message = on_message
        self.client.reconnect_delay_set(0.2, 1)
        connect(self.client, BrokerAddress.parse(broker_url))
        self.client.loop_start()
        if not ready.wait(10):
            raise RuntimeError("the watcher could not connect to the broker")
        time.sleep(0.2)  # SUBACKs

    def wait(
        self, what: str, predicate: Callable[[dict[str, Any]], bool], timeout: float, since: float = 0.0
    ) -> float:
        """Arrival time of the first status or event message after `since` that matches."""
        deadline = time.monotonic() + timeout
        with self.lock:
            while True:
                source = self.status if what == "status" else self.events
                for at, body in source:
                    if at >= since and predicate(body):
                        return at
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    last = source[-3:]
                    raise RuntimeError(f"no matching {what} within {timeout} s; last: {last}")
                self.lock.wait(remaining)

    def wait_version(self, version: str, timeout: float = 60, since: float = 0.0) -> float:
        return self.wait(
            "status",
            lambda s: (
                s.get("model") is not None
                and s["model"]["version"] == version
                and s.get("state") == "serving"
            ),
            timeout,
            since,
        )

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
