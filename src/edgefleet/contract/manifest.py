"""The bundle manifest: the one schema describing what a bundle carries and how to feed its model."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from edgefleet.contract.ids import Sha256Hex
from edgefleet.contract.profiles import ArtifactFormat, Precision
from edgefleet.contract.target_checks import TargetChecks

MANIFEST_SCHEMA_VERSION: Final = 1
TensorDtype = Literal["float32", "float16", "int8", "uint8", "int32", "int64"]
Dim = int | None  # None: dynamic (any size)
MAX_DIM = 2**31 - 1
_INTEGER_RANGES = {
    "int8": (-128, 127),
    "uint8": (0, 255),
    "int32": (-(2**31), 2**31 - 1),
    "int64": (-(2**63), 2**63 - 1),
}


class _Model(BaseModel):
    # Unknown fields are ignored, so an agent accepts bundles from a newer converter that added optional
    # fields; the signature covers the whole manifest either way.
    model_config = ConfigDict(extra="ignore")


class QuantParams(_Model):
    """real_value = scale * (quantized_value - zero_point)."""

    scale: float = Field(gt=0, allow_inf_nan=False)
    zero_point: int


class TensorSpec(_Model):
    """One input or output of the artifact, and how it relates to the source model's float tensor.

    A client may send either the artifact's own form (`dtype`, `shape`) or the float32 form of the source
    model (`float_shape`); the agent converts the latter with `perm` and `quantization`.
    """

    name: str
    dtype: TensorDtype
    shape: list[Dim]
    quantization: QuantParams | None = None
    float_shape: list[Dim]
    perm: list[int] | None = Field(
        default=None, description="artifact tensor = transpose(float tensor, perm); null: same layout"
    )

    @model_validator(mode="after")
    def _consistent(self) -> TensorSpec:
        """What the agent relies on to convert between the two forms; a signed manifest can still say
        anything, so nonsense is refused here, with a reason, rather than failing on a request."""
        if any(d is not None and not 0 <= d <= MAX_DIM for d in (*self.shape, *self.float_shape)):
            raise ValueError(f"'{self.name}': dimensions must be 0..{MAX_DIM} or null")
        if self.perm is not None and len(self.shape) != len(self.float_shape):
            raise ValueError(f"'{self.name}': a perm between shape and float_shape of different ranks")
        if self.perm is not None and sorted(self.perm) != list(range(len(self.shape))):
            raise ValueError(
                f"'{self.name}': perm {self.perm} is not a permutation of its {len(self.shape)} axes"
            )
        if self.quantization is not None:
            if self.dtype not in _INTEGER_RANGES:
                raise ValueError(f"'{self.name}': quantization applies to integer tensors, not {self.dtype}")
            low, high = _INTEGER_RANGES[self.dtype]
            if not low <= self.quantization.zero_point <= high:
                raise ValueError(
                    f"'{self.name}': zero_point {self.quantization.zero_point} is outside {self.dtype}"
                )
        return self


class FileEntry(_Model):
    path: str
    sha256: Sha256Hex
    size: int = Field(ge=0)


class AccuracyMetrics(_Model):
    """How close the artifact is to the fp32 model on the evaluation set, for one headline output.

    `metric` keeps the two values every reader accepts: 'top1' (against labels) or 'top1_agreement'
    (against the fp32 model's own outputs). Converters that measure outputs by their kind add `measure`
    (detection F1, mask IoU, CTC string equality, SQNR, ...) and `unit`; readers that know them use them.
    """

    metric: Literal["top1", "top1_agreement"]
    samples: int
    fp32: float | None = Field(description="percent; null for top1_agreement (fp32 agrees with itself)")
    artifact: float = Field(description="the measure's value, in `unit`")
    drop_points: float = Field(description="points lost vs fp32 for percentage measures; 0 for dB measures")
    # Added with per-output measures; optional, so manifests of older converters still read.
    measure: str | None = Field(
        default=None,
        description="what `artifact` measures: top1, top1_agreement, detection_f1, mask_iou, "
        "ctc_string_equality or sqnr; null: as `metric` says",
    )
    unit: Literal["%", "dB"] = "%"
    output: str | None = Field(default=None, description="the model output measured")
    sqnr_db: float | None = Field(default=None, description="that output's SQNR against fp32, dB")
    judged_by: str | None = Field(
        default=None, description="the measure(s) that judged the accuracy budget, over every output"
    )
    within_budget: bool | None = Field(default=None, description="every output within its budget")


class ConversionMetrics(_Model):
    accuracy: AccuracyMetrics | None = None
    size_bytes_fp32: int
    size_bytes_artifact: int
    host_latency_ms_fp32: float
    host_latency_ms_artifact: float
    host_runtime: str = Field(description="what ran the artifact on the host to measure it")


class ArtifactAlternative(_Model):
    """Another model file in the bundle for the same target (e.g. an INT8 ONNX next to the preferred
    TFLite, or the Edge TPU-compiled TFLite); `BundleManifest.artifact` stays the profile's preferred one."""

    kind: str = Field(description="what it is: 'onnx-int8', 'onnx-fp16', 'tflite-int8-edgetpu'")
    path: str = Field(description="path of the model file inside the bundle (listed in `files`)")
    format: ArtifactFormat
    precision: Precision
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    metrics: ConversionMetrics | None = Field(default=None, description="null when the host cannot run it")
    requires_delegate: Literal["edgetpu"] | None = Field(
        default=None, description="runs only where this delegate is loaded (compiled Edge TPU models)"
    )


class HealthReference(_Model):
    """What the health samples must give on the device: the artifact's own outputs on the host runtime that
    measured it, and how close a device must come. A device whose kernels compute wrong numbers (a
    miscompiled int8 path, a broken delegate) fails its health check instead of serving them."""

    outputs: str = Field(
        description="path of an .npz inside the bundle (listed in `files`): one array per output name, in "
        "the artifact's form, first axis = the health samples in order"
    )
    min_sqnr_db: float = Field(
        allow_inf_nan=False,
        description="each output of each sample, dequantized, against the reference: at least this SQNR",
    )
    host_runtime: str = Field(description="what computed the reference")
    min_top1_agreement: float | None = Field(
        default=None,
        ge=0,
        le=1,
        allow_inf_nan=False,
        description="classification outputs (float form [N, C]): the share of samples whose top-1 class must "
        "be the reference's; null: not required (still reported)",
    )


class BundleManifest(_Model):
    schema_version: Literal[1] = MANIFEST_SCHEMA_VERSION
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
    version: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$")
    profile: str
    format: ArtifactFormat
    precision: Precision
    artifact: str = Field(description="path of the model file inside the bundle")
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    files: list[FileEntry]
    metrics: ConversionMetrics
    converter_version: str
    created_at: datetime
    health_samples: str | None = Field(
        default=None,
        description="path of an .npz inside the bundle (listed in `files`): a few inputs in the float form, "
        "one array per input name, first axis = samples; the agent runs them before it swaps the model in",
    )
    health_reference: HealthReference | None = Field(
        default=None, description="the outputs `health_samples` must give (null: only finite, shaped outputs)"
    )
    alternatives: list[ArtifactAlternative] = Field(
        default_factory=list, description="other model files for this target; `artifact` is the preferred one"
    )
    target_checks: TargetChecks | None = Field(
        default=None, description="what the converter checked about the target running the artifact"
    )
    weight_sparsity: Literal["2:4"] | None = Field(
        default=None,
        description="the artifact's weights follow this structured sparsity pattern (checked by the "
        "converter); the agent asks TensorRT for sparse kernels",
    )
    report: dict[str, Any] | None = Field(
        default=None,
        description="the converter's report.json (accuracy budget, per-output and per-layer error, every "
        "artifact vs fp32); its schema is edgefleet.converter.report.ConversionReport (`schema_version`)",
    )

    def file(self, path: str) -> FileEntry:
        for entry in self.files:
            if entry.path == path:
                return entry
        raise KeyError(path)
