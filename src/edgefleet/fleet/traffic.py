"""Drive inference traffic at a device through an InferenceClient, keeping a few requests in flight,
and count what came back: answers, failures and (with labels) correct top-1 predictions."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import KW_ONLY, dataclass, field

import numpy as np

from edgefleet.fleet.inference import InferenceClient

Outputs = dict[str, np.ndarray]


@dataclass
class TrafficStats:
    sent: int = 0
    answered: int = 0
    failed: int = 0
    correct: int = 0
    failures: list[str] = field(default_factory=list)

    @property
    def accuracy(self) -> float | None:
        return None if self.answered == 0 else 100.0 * self.correct / self.answered

    def add(self, other: TrafficStats) -> None:
        self.sent += other.sent
        self.answered += other.answered
        self.failed += other.failed
        self.correct += other.correct
        self.failures.extend(other.failures[: max(0, 5 - len(self.failures))])


@dataclass
class TrafficDriver:
    """Sends the samples of `inputs` (one row = one request of batch 1) to one device."""

    client: InferenceClient
    device_id: str
    input_name: str
    inputs: np.ndarray
    labels: np.ndarray | None
    _: KW_ONLY
    in_flight: int = 4
    timeout: float = 10.0

    def one_pass(self) -> TrafficStats:
        """Every sample once; accuracy covers exactly this pass."""
        return self._run(lambda sent: sent >= len(self.inputs))

    def until(self, stop: threading.Event) -> TrafficStats:
        """Cycle through the samples until `stop` is set."""
        return self._run(lambda _sent: stop.is_set())

    def _run(self, done: Callable[[int], bool]) -> TrafficStats:
        stats = TrafficStats()
        window: deque[tuple[int, Future[Outputs]]] = deque()
        index = 0
        while not done(stats.sent):
            sample = index % len(self.inputs)
            batch = self.inputs[sample : sample + 1]
            window.append(
                (sample, self.client.submit(self.device_id, {self.input_name: batch}, self.timeout))
            )
            stats.sent += 1
            index += 1
            if len(window) >= self.in_flight:
                self._collect(*window.popleft(), stats)
        while window:
            self._collect(*window.popleft(), stats)
        return stats

    def _collect(self, sample: int, future: Future[Outputs], stats: TrafficStats) -> None:
        try:
            outputs = future.result()
        except Exception as exc:  # InferenceError or timeout: both are failed requests
            stats.failed += 1
            if len(stats.failures) < 5:
                stats.failures.append(str(exc))
            return
        stats.answered += 1
        if self.labels is not None:
            logits = next(iter(outputs.values()))
            stats.correct += int(int(np.argmax(logits)) == int(self.labels[sample]))
