"""The `with` protocol of the host's long-lived parts, once: a broker connection or feed is opened and
closed, a process or server is started and stopped."""

from __future__ import annotations

from typing import Any, TypeVar

_Opened = TypeVar("_Opened", bound="Opened")
_Started = TypeVar("_Started", bound="Started")


class Opened:
    """`with x:` opens `x` for the block and closes it after, also on errors."""

    def open(self: _Opened) -> _Opened:
        raise NotImplementedError

    def close(self) -> object:  # what a subclass returns is its own
        raise NotImplementedError

    def __enter__(self: _Opened) -> _Opened:
        return self.open()

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


class Started:
    """`with x:` starts `x` for the block and stops it after, also on errors."""

    def start(self: _Started) -> _Started:
        raise NotImplementedError

    def stop(self) -> object:  # e.g. a process's exit status
        raise NotImplementedError

    def __enter__(self: _Started) -> _Started:
        return self.start()

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()
