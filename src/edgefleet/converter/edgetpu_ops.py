"""The Edge TPU's supported TFLite ops: the one table the static Edge TPU check reads.

Sources (researched, not measured: no Edge TPU or edgetpu_compiler is available here):
- Op list, runtime versions and known limitations: coral.ai/docs/edgetpu/models-intro/#supported-operations
  ("Supported operations", Edge TPU Compiler 16.0), cross-checked against copies of that table (the Axis
  ARTPEC-7 DLPU page reproduces it) and google-coral/edgetpu issues: LEAKY_RELU and HARD_SWISH are not
  supported (#272, open), TRANSPOSE is supported from compiler 16 (#193), DEQUANTIZE is not (#659).
- Op version limits: edgetpu_compiler 16.0.384591198 embeds an older TFLite op resolver and refuses newer op
  versions ("Didn't find op for builtin opcode 'CONV_2D' version '6'", #631; TRANSPOSE_CONV v4, #845;
  QUANTIZE v3, #879; RSQRT v2 only from compiler 16, #384). The other limits are the max versions of the
  TFLite builtin resolver of that era (tensorflow/lite/kernels/register.cc); they are upper bounds, and
  int8 conversions from today's TensorFlow use low versions (CONV_2D 3, FULLY_CONNECTED 4, QUANTIZE 1).
- Model-wide rules (same page): 8-bit quantized tensors (int32 only for bias and shape-like operands),
  static tensor sizes, one subgraph, and "if a tensor has more than 3 dimensions, only the 3 innermost
  dimensions may have a size greater than 1". The compiler partitions the graph once: at the first op it
  cannot map, that op and every op after it run on the CPU.
"""

from __future__ import annotations

from dataclasses import dataclass, field

OP_TABLE_SOURCE = (
    "coral.ai/docs/edgetpu/models-intro/#supported-operations (Edge TPU Compiler 16.0); op version limits "
    "of edgetpu_compiler 16.0.384591198 (google-coral/edgetpu #631, #845, #879) - researched, not run here"
)
COMPILER_VERSION = "16.0"
MAX_INNER_DIMS = 3  # only the 3 innermost dimensions of a tensor may be larger than 1
SOFTMAX_MAX_ELEMENTS = 16000
NO_FUSED_ACTIVATION = {"AVERAGE_POOL_2D", "MAX_POOL_2D", "CONCATENATION"}


@dataclass(frozen=True)
class EdgeTpuOpRule:
    max_version: int  # newest op version edgetpu_compiler 16 accepts
    runtime: str  # Edge TPU runtime version that maps it ("all" or the first version)
    limitations: str  # coral.ai's known limitations (the checked ones are enforced in edgetpu_check)
    int32_operands: frozenset[int] = field(default_factory=frozenset)  # operands that may be int32 constants


def _rule(
    max_version: int, runtime: str = "all", limitations: str = "", int32: tuple[int, ...] = ()
) -> EdgeTpuOpRule:
    return EdgeTpuOpRule(max_version, runtime, limitations, frozenset(int32))


EDGETPU_OPS: dict[str, EdgeTpuOpRule] = {
    "ADD": _rule(4),
    "AVERAGE_POOL_2D": _rule(3, limitations="No fused activation function."),
    "CONCATENATION": _rule(
        3,
        limitations="No fused activation function. A constant input must be all zeros, with 2 inputs.",
    ),
    "CONV_2D": _rule(5, limitations="Must use the same dilation in x and y dimensions.", int32=(2,)),
    "DEPTHWISE_CONV_2D": _rule(
        6, limitations="Dilated kernels need runtime 13+; same dilation in x and y.", int32=(2,)
    ),
    "EXPAND_DIMS": _rule(1, "13", int32=(1,)),
    "FULLY_CONNECTED": _rule(
        9,
        limitations="Only the default weights format. Output tensor is one-dimensional.",
        int32=(2,),
    ),
    "L2_NORMALIZATION": _rule(2),
    "LOGISTIC": _rule(3),
    "LSTM": _rule(4, "14", "Unidirectional LSTM only."),
    "MAXIMUM": _rule(4),
    "MAX_POOL_2D": _rule(3, limitations="No fused activation function."),
    "MEAN": _rule(
        3, limitations="No reduction in the batch dimension; a z-reduction needs z % 4 == 0.", int32=(1,)
    ),
    "MINIMUM": _rule(4),
    "MUL": _rule(5),
    "PACK": _rule(3, limitations="No packing in the batch dimension."),
    "PAD": _rule(4, limitations="No padding in the batch dimension.", int32=(1,)),
    "PRELU": _rule(1, "13", "Alpha must be 1-dimensional (only the innermost dimension > 1)."),
    "QUANTIZE": _rule(2, "13"),
    "REDUCE_MAX": _rule(3, "14", "Cannot operate on the batch dimension.", int32=(1,)),
    "REDUCE_MIN": _rule(3, "14", "Cannot operate on the batch dimension.", int32=(1,)),
    "RELU": _rule(3),
    "RELU6": _rule(3),
    "RELU_N1_TO_1": _rule(1),
    "RESHAPE": _rule(
        1, limitations="Certain reshapes might not be mapped for large tensor sizes.", int32=(1,)
    ),
    "RESIZE_BILINEAR": _rule(
        4, limitations="3-dimensional input/output; may stay on the CPU to avoid precision loss.", int32=(1,)
    ),
    "RESIZE_NEAREST_NEIGHBOR": _rule(
        4, limitations="3-dimensional input/output; may stay on the CPU to avoid precision loss.", int32=(1,)
    ),
    "RSQRT": _rule(2, "14"),
    "SLICE": _rule(5, int32=(1, 2)),
    "SOFTMAX": _rule(3, limitations="Only a 1-D input tensor with at most 16,000 elements."),
    "SPACE_TO_DEPTH": _rule(2),
    "SPLIT": _rule(4, limitations="No splitting in the batch dimension.", int32=(0,)),
    "SQUARED_DIFFERENCE": _rule(2, "14"),
    "SQUEEZE": _rule(2, limitations="Only when the input has at most 3 dimensions larger than 1."),
    "STRIDED_SLICE": _rule(
        6, limitations="All strides 1 (a slice); ellipsis-axis and new-axis masks 0.", int32=(1, 2, 3)
    ),
    "SUB": _rule(5),
    "SUM": _rule(2, "13", "No reduction in the batch dimension; a z-reduction needs z % 4 == 0.", int32=(1,)),
    "TANH": _rule(3),
    "TRANSPOSE": _rule(5, "14", int32=(1,)),
    "TRANSPOSE_CONV": _rule(3, int32=(0, 3)),
}
