"""ONNX ops TensorRT's ONNX parser builds into an engine: the table the TensorRT readiness check reads.

Source: onnx/onnx-tensorrt docs/operators.md, "Supported ONNX Operators", TensorRT 8.4 (the JetPack 5
release for Jetson Orin; JetPack 4.6 for the original Jetson Nano ships TensorRT 8.2 with the same list
for these ops). Researched, not run here: no TensorRT or CUDA on this machine. Ops marked "N" there, ops in
other domains (com.microsoft, ...) and anything not listed are taken by onnxruntime's next execution
provider in the profile (CUDA, then CPU) instead of TensorRT.
"""

from __future__ import annotations

OP_TABLE_SOURCE = "onnx/onnx-tensorrt docs/operators.md (TensorRT 8.4) - researched, not run here"
MIN_OPSET = 13  # explicit quantization: per-channel QuantizeLinear/DequantizeLinear need opset 13

# One name per word: easier to compare with the source table than a 130-line literal.
_SUPPORTED = """
    Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization Cast Ceil Celu
    Clip Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh CumSum DepthToSpace DequantizeLinear
    Div Dropout Einsum Elu Equal Erf Exp Expand EyeLike Flatten Floor Gather GatherElements GatherND Gemm
    GlobalAveragePool GlobalLpPool GlobalMaxPool Greater GreaterOrEqual GRU HardSigmoid Identity If
    ImageScaler InstanceNormalization IsNaN LeakyRelu Less LessOrEqual Log LogSoftmax Loop LRN LSTM
    LpNormalization LpPool MatMul Max MaxPool Mean Min Mul Neg NonMaxSuppression Not Or Pad
    ParametricSoftplus Pow PRelu QuantizeLinear RandomUniform RandomUniformLike Range ReduceL1 ReduceL2
    ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu
    Reshape Resize ReverseSequence RNN Round ScaledTanh Scan Scatter ScatterElements ScatterND Selu Shape
    Sigmoid Sign Sin Sinh Size Slice Softmax Softplus Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum Tan
    Tanh ThresholdedRelu Tile TopK Transpose Unsqueeze Upsample Where Xor
"""
TENSORRT_OPS = frozenset(_SUPPORTED.split())
