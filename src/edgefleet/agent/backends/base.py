"""The one small protocol every runtime backend implements, so the agent core never knows which runtime
it drives: load a model file, describe its inputs/outputs, run it, close it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from edgefleet.contract.errors import EdgefleetError
from edgefleet.contract.messages import BackendInfo


class BackendError(EdgefleetError):
    """The runtime could not load or run a model."""


@dataclass(frozen=True)
class TensorInfo:
    """An input or output as the runtime sees it; None marks a dynamic dimension."""

    name: str
    dtype: str
    shape: tuple[int | None, ...]


class Backend(Protocol):
    """A loaded model. Not thread-safe: callers serialize `run` (see model_slot.LoadedModel)."""

    @property
    def info(self) -> BackendInfo: ...

    def inputs(self) -> list[TensorInfo]: ...

    def outputs(self) -> list[TensorInfo]: ...

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def close(self) -> None: ...
