"""What conversion steps share: the request, the state they build up step by step, and the Step protocol."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import BaseModel, ConfigDict, Field

from edgefleet.contract.manifest import ConversionMetrics, TensorSpec
from edgefleet.contract.profiles import DeviceProfile

if TYPE_CHECKING:
    import onnx

    from edgefleet.converter.steps.calibration import TensorSet
    from edgefleet.converter.steps.load_onnx import ModelInfo


class ConversionRequest(BaseModel):
    """The boundary between the CLI (or any caller) and the converter."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: Path
    profile: str
    calib: Path
    eval: Path | None = None
    out: Path
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
    version: str = Field(default="1", pattern=r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$")
    key: Path | None = None


@dataclass
class ConversionContext:
    """Mutable state handed from step to step; each step fills the fields it owns."""

    request: ConversionRequest
    profile: DeviceProfile
    work_dir: Path
    private_key: Any = None  # Ed25519PrivateKey, loaded early so a bad key fails before heavy work
    model: onnx.ModelProto | None = None
    model_info: ModelInfo | None = None
    calib: TensorSet | None = None
    eval: TensorSet | None = None
    keras_model: Any = None  # set by OnnxToKeras (a keras.Model in NHWC layout)
    artifact_path: Path | None = None
    inputs: list[TensorSpec] = field(default_factory=list)
    outputs: list[TensorSpec] = field(default_factory=list)
    metrics: ConversionMetrics | None = None
    notes: list[str] = field(default_factory=list)  # things the user should know (printed in the summary)
    bundle_path: Path | None = None

    def need(self, value: Any, what: str) -> Any:
        """A value an earlier step should have produced (a pipeline wiring bug otherwise)."""
        if value is None:
            raise RuntimeError(f"pipeline bug: {what} is not available yet")
        return value


class Step(Protocol):
    """One conversion step: `name` is shown in progress output; `run` reads and fills the context."""

    name: str

    def run(self, ctx: ConversionContext) -> None: ...
