"""The memory requests may hold while they are queued, decoded and served, out of the device profile's
budget. Each request reserves an estimate of its peak before its body is read (HTTP) or when it is
queued (MQTT); one that can never fit is refused as too large, one that does not fit now as overloaded.

The estimates were measured (docs/agent.md, "Memory of requests"): a JSON body of tensor data becomes
Python lists and then numpy arrays, up to ~22x its size for compact integer data ("0,0,0,..."); a binary
body (.npy, .npz, Triton's binary tensor data) is held once, viewed as arrays and converted once: ~3x.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

JSON_FACTOR = 24
BINARY_FACTOR = 3
MIB = 1024 * 1024
OVERLOADED_MEMORY = "the agent is overloaded (request memory in use); retry later"


def request_cost(binary_bytes: int, json_bytes: int = 0) -> int:
    """Bytes a request of this size may hold at its peak."""
    return binary_bytes * BINARY_FACTOR + json_bytes * JSON_FACTOR


@dataclass(frozen=True)
class Refusal:
    """Why a request was not admitted; `retry`: it may fit later (overloaded), else it never will."""

    message: str
    retry: bool


class RequestMemory:
    """A byte budget shared by every request in flight, over both APIs (reserve/release, never blocks)."""

    def __init__(self, capacity_bytes: int) -> None:
        self.capacity = capacity_bytes
        self._used = 0
        self._lock = threading.Lock()

    def reserve(self, cost: int, what: str) -> Refusal | None:
        """Reserve `cost` for a request (None), or say why not: it can never fit, or not now."""
        if not self.fits_ever(cost):
            return Refusal(self.too_large(cost, what), retry=False)
        if not self.try_reserve(cost):
            return Refusal(OVERLOADED_MEMORY, retry=True)
        return None

    def fits_ever(self, cost: int) -> bool:
        return cost <= self.capacity

    def try_reserve(self, cost: int) -> bool:
        with self._lock:
            if self._used + cost > self.capacity:
                return False
            self._used += cost
            return True

    def release(self, cost: int) -> None:
        with self._lock:
            self._used = max(0, self._used - cost)

    @property
    def used(self) -> int:
        with self._lock:
            return self._used

    def too_large(self, cost: int, what: str) -> str:
        return (
            f"{what} needs about {cost / MIB:.0f} MiB to decode and serve, more than the "
            f"{self.capacity / MIB:.0f} MiB this device gives requests (request_memory_mb in the agent "
            "config); send smaller batches, or tensor data as binary (.npy/.npz, or Triton's binary "
            "tensor data extension) rather than JSON"
        )
