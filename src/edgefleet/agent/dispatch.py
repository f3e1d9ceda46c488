"""Worker threads that run message handlers off paho's network thread. A handler that raises is logged
and the worker carries on: one bad message or handler cannot stop the agent.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

from edgefleet.agent.log import EventLog

T = TypeVar("T")
_STOP = object()
log = EventLog("dispatch")


class Worker(Generic[T]):
    """`threads` threads taking items from one queue; `on_idle` runs every `idle_s` without work
    (only with a single thread, so it never races the handler)."""

    def __init__(
        self,
        name: str,
        handler: Callable[[T], None],
        *,
        threads: int = 1,
        max_queued: int = 0,
        on_idle: Callable[[], None] | None = None,
        idle_s: float = 1.0,
    ) -> None:
        if on_idle is not None and threads != 1:
            raise ValueError("on_idle needs a single-threaded worker")
        self.name = name
        self._handler = handler
        self._on_idle = on_idle
        self._idle_s = idle_s
        self._queue: queue.Queue[object] = queue.Queue(maxsize=max_queued)
        self._threads = [
            threading.Thread(target=self._loop, name=f"{name}-{i}", daemon=True) for i in range(threads)
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def submit(self, item: T) -> bool:
        """Enqueue without blocking; False when the queue is full."""
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            return False
        return True

    def _guarded(self, call: Callable[[], None], what: str) -> None:
        try:
            call()
        except Exception as exc:
            log.exception("handler_failed", exc, worker=self.name, what=what)

    def _loop(self) -> None:
        while True:
            try:
                item = self._queue.get(timeout=self._idle_s if self._on_idle else None)
            except queue.Empty:
                if self._on_idle is not None:
                    self._guarded(self._on_idle, "idle")
                continue
            if item is _STOP:
                return
            self._guarded(lambda item=item: self._handler(item), "message")  # type: ignore[misc]

    def stop(self, timeout: float = 10.0) -> None:
        """Finish what is queued, then stop the threads."""
        for _ in self._threads:
            self._queue.put(_STOP)
        for thread in self._threads:
            if thread.is_alive():
                thread.join(timeout)
