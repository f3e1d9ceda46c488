"""What the converter found out about whether the target can run the artifact: the static Edge TPU
compatibility report (and the compiler's summary), TensorRT's Q/DQ readiness, XNNPACK's op coverage.

Stored in the bundle manifest (`target_checks`), so it travels with the artifact and the host report can
include it. Receivers ignore it when they do not care: nothing on the device depends on it.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class UnsupportedOp(_Model):
    """One op the target's accelerator cannot run, and what happens to it."""

    op: str = Field(description="TFLite builtin name (e.g. LEAKY_RELU) or ONNX op type")
    version: int | None = Field(default=None, description="TFLite op version; null for ONNX ops")
    layer: str = Field(
        description="ONNX node name, or the TFLite op's output tensor (TFLite ops have no names)"
    )
    reason: str
    consequence: Literal["runs on the CPU", "refused", "runs outside TensorRT"]


class EdgeTpuOp(_Model):
    """One TFLite op in execution order, checked against the Edge TPU op list."""

    index: int
    op: str
    version: int
    layer: str
    problems: list[str] = Field(
        default_factory=list, description="why this op itself cannot map (empty: it can)"
    )
    runs_on: Literal["edgetpu", "cpu"] = Field(
        description="'cpu' for an op that cannot map and for every op after the first such op: the compiler "
        "partitions the graph once"
    )


class CompilerOpLine(_Model):
    """One row of edgetpu_compiler's operation table."""

    op: str
    count: int
    status: str = Field(description="e.g. 'Mapped to Edge TPU', 'Operation not supported'")


class EdgeTpuCompilation(_Model):
    compiled: bool
    detail: str = Field(
        description="one line: what was compiled, or why not ('not compiled for Edge TPU: ...')"
    )
    compiler_version: str | None = None
    artifact: str | None = Field(
        default=None, description="bundle member holding the compiled *_edgetpu.tflite"
    )
    edgetpu_subgraphs: int | None = None
    total_ops: int | None = None
    ops_on_edgetpu: int | None = None
    ops_on_cpu: int | None = None
    operations: list[CompilerOpLine] = Field(default_factory=list)


class EdgeTpuReport(_Model):
    op_table: str = Field(description="where the supported-op list and version limits come from")
    compatible: bool = Field(
        description="every op maps to the Edge TPU (statically, and per the compiler if run)"
    )
    io_dtype: str
    subgraphs: int
    model_problems: list[str] = Field(default_factory=list, description="problems not tied to one op")
    ops: list[EdgeTpuOp]
    first_cpu_op: int | None = Field(default=None, description="index of the first op that runs on the CPU")
    compilation: EdgeTpuCompilation


class TensorRtViolation(_Model):
    rule: Literal[
        "opset", "zero-point", "signed-int8", "per-tensor-activation", "per-channel-weights", "bias"
    ]
    node: str = Field(description="the ONNX node that breaks the rule")
    detail: str


class TensorRtReport(_Model):
    op_table: str
    opset: int
    checks_qdq: bool = Field(description="false for float artifacts: only op support was checked")
    ready: bool = Field(description="no Q/DQ rule violations and every op in TensorRT's ONNX op list")
    violations: list[TensorRtViolation] = Field(default_factory=list)


class XnnpackReport(_Model):
    measured_with: str = Field(description="the LiteRT build whose XNNPACK delegate partitioned the model")
    ops: int
    delegated_ops: int


class TargetChecks(_Model):
    """The checks run for one bundle's target; `unsupported_ops` is the one list a person reads first."""

    target: Literal["edgetpu", "tensorrt", "xnnpack"]
    passed: bool
    summary: str
    unsupported_ops: list[UnsupportedOp] = Field(default_factory=list)
    edgetpu: EdgeTpuReport | None = None
    tensorrt: TensorRtReport | None = None
    xnnpack: XnnpackReport | None = None
