"""Translate an fp32 ONNX graph into an equivalent Keras functional model in NHWC layout, batch fixed to 1.

The TFLite converter needs a TensorFlow model; building it here (instead of with onnx2tf) keeps the
toolchain to tensorflow + onnx and puts every layout decision in one place.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from edgefleet.converter.context import ConversionContext
from edgefleet.converter.errors import ConversionError, UnsupportedModelError

NCHW_TO_NHWC = [0, 2, 3, 1]
SUPPORTED_OPS = (
    "Add, AveragePool, BatchNormalization, Clip, Concat, Constant, Conv (incl. grouped/depthwise), Dropout, "
    "Flatten, Gemm, GlobalAveragePool, GlobalMaxPool, Identity, LeakyRelu, MatMul, MaxPool, Mul, Relu, "
    "Reshape (to 2D), Sigmoid, Softmax, Sub, and shape arithmetic on constants"
)
# Max |keras - onnx| relative to the output range above which the translation is considered wrong.
MAX_RELATIVE_DEVIATION = 1e-3

Layout = Literal["same", "nhwc", "flat_nhwc"]


@dataclass(frozen=True)
class _Value:
    """A translated tensor. layout 'same': ONNX layout; 'nhwc': an NCHW tensor held as NHWC;
    'flat_nhwc': a [batch, C*H*W] tensor flattened in NHWC order (chw = ONNX C, H, W)."""

    tensor: Any
    layout: Layout = "same"
    chw: tuple[int, int, int] | None = None


@dataclass(frozen=True)
class KerasTranslation:
    model: Any  # keras.Model
    input_perms: dict[str, list[int] | None]  # artifact = transpose(float, perm)
    output_perms: dict[str, list[int] | None]
    # Keras layer name -> the ONNX nodes it computes (a Conv and the BatchNormalization folded into it).
    # TensorFlow op names, and so TFLite tensor names, carry the layer name: this is how a TFLite tensor
    # is traced back to the ONNX layer it came from (per-layer error, mixed precision).
    layer_nodes: dict[str, list[str]] = field(default_factory=dict)


LAYER_NAME = re.compile(r"(?:^|/)(L\d+_[a-z0-9]+)(?:_\d+)?/")


def node_label(node: Any) -> str:
    """How a node is named in reports and in ctx.float_layers: its ONNX name, else its first output."""
    return str(node.name or node.output[0])


def layer_names_in(tensor_name: str) -> list[str]:
    """The translator's Keras layer names found in a TensorFlow/TFLite tensor name (fused ops join several
    op names with ';'), in ONNX graph order."""
    found = dict.fromkeys(LAYER_NAME.findall(tensor_name))
    return sorted(found, key=lambda name: int(name[1:].split("_", 1)[0]))


def keras_safe_name(name: str) -> str:
    """The name Keras (and so the TFLite serving signature) gives an input translated from `name`."""
    return re.sub(r"[^A-Za-z0-9_]", "_", name)


def _attrs(node: Any) -> dict[str, Any]:
    import onnx

    return {attr.name: onnx.helper.get_attribute_value(attr) for attr in node.attribute}


def _flat_nhwc_index(chw: tuple[int, int, int]) -> np.ndarray:
    """order[j] = ONNX (C,H,W)-flat index of the element at NHWC-flat position j."""
    c, h, w = chw
    return np.arange(c * h * w).reshape(c, h, w).transpose(1, 2, 0).reshape(-1)


def import_keras() -> Any:
    """Keras on the TensorFlow backend (the TFLite converter needs TensorFlow graphs), imported quietly."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if "keras" not in sys.modules:
        os.environ["KERAS_BACKEND"] = "tensorflow"
    import keras

    if keras.backend.backend() != "tensorflow":
        raise ConversionError(
            f"Keras runs on the '{keras.backend.backend()}' backend in this process; the TFLite path needs "
            "'tensorflow' (unset KERAS_BACKEND)"
        )
    return keras


class _Translator:
    def __init__(self, model: Any) -> None:
        import onnx

        keras = import_keras()

        self.keras = keras
        self.onnx = onnx
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
        self.model = self._fix_batch(model)
        # data_prop lets shape-valued tensors propagate where onnx can; Reshape falls back to _reshape_target.
        inferred = onnx.shape_inference.infer_shapes(self.model, data_prop=True)
        self.shapes: dict[str, list[int]] = {}
        for value in [*inferred.graph.value_info, *inferred.graph.output, *inferred.graph.input]:
            dims = value.type.tensor_type.shape.dim
            if dims and all(d.HasField("dim_value") for d in dims):
                self.shapes[value.name] = [d.dim_value for d in dims]
        self.consts: dict[str, np.ndarray] = {
            init.name: onnx.numpy_helper.to_array(init) for init in self.model.graph.initializer
        }
        self.values: dict[str, _Value] = {}
        self.consumers: dict[str, list[Any]] = {}
        for node in self.model.graph.node:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)
        self.graph_outputs = {v.name for v in self.model.graph.output}
        self.fused: set[int] = set()  # ids of nodes folded into an earlier layer
        self.node_index = {id(node): index for index, node in enumerate(self.model.graph.node)}
        self.layer_nodes: dict[str, list[str]] = {}
        self.handlers: dict[str, Callable[[Any], None]] = {
            "Conv": self._conv,
            "Relu": self._relu,
            "LeakyRelu": self._leaky_relu,
            "Clip": self._clip,
            "Sigmoid": self._sigmoid,
            "MaxPool": self._max_pool,
            "AveragePool": self._avg_pool,
            "GlobalAveragePool": self._global_pool,
            "GlobalMaxPool": self._global_pool,
            "Add": self._binary,
            "Sub": self._binary,
            "Mul": self._binary,
            "Gemm": self._gemm,
            "MatMul": self._matmul,
            "Flatten": self._flatten,
            "Reshape": self._reshape,
            "BatchNormalization": self._batch_norm,
            "Identity": self._identity,
            "Dropout": self._identity,
            "Softmax": self._softmax,
            "Concat": self._concat,
        }

    # --- setup -------------------------------------------------------------------------------------
    def _fix_batch(self, model: Any) -> Any:
        """A copy whose inputs have batch 1 (TFLite/Edge TPU want static shapes); other dims must be fixed."""
        fixed = self.onnx.ModelProto()
        fixed.CopyFrom(model)
        initializers = {init.name for init in fixed.graph.initializer}
        for value in fixed.graph.input:
            if value.name in initializers:
                continue
            dims = value.type.tensor_type.shape.dim
            for axis, dim in enumerate(dims):
                if dim.HasField("dim_value") and dim.dim_value > 0:
                    continue
                if axis != 0:
                    raise UnsupportedModelError(
                        f"input '{value.name}' axis {axis} is dynamic; TFLite needs static shapes: "
                        "export the model with fixed non-batch dimensions"
                    )
                dim.Clear()
                dim.dim_value = 1
        for value in fixed.graph.output:  # let shape inference recompute output shapes with batch 1
            value.type.tensor_type.ClearField("shape")
        return fixed

    def _name(self, node: Any, *folded: Any) -> str:
        """A unique Keras layer name for `node` (recorded with the ONNX nodes the layer computes)."""
        name = f"L{self.node_index[id(node)]}_{re.sub(r'[^a-z0-9]', '', node.op_type.lower())}"
        self.layer_nodes[name] = [node_label(n) for n in (node, *folded)]
        return name

    def _padding_name(self, node: Any) -> str:
        """The explicit padding in front of `node`: a layer of its own, reported as '<node>/pad'."""
        name = f"L{self.node_index[id(node)]}_pad"
        self.layer_nodes[name] = [f"{node_label(node)}/pad"]
        return name

    def _unsupported(self, node: Any, why: str) -> UnsupportedModelError:
        return UnsupportedModelError(
            f"node '{node.name or node.output[0]}' ({node.op_type}): {why}; the TFLite path supports "
            f"{SUPPORTED_OPS} - simplify or re-export the model, or choose an ONNX profile"
        )

    def _value(self, node: Any, name: str) -> _Value:
        if name in self.values:
            return self.values[name]
        if name in self.consts:
            raise self._unsupported(node, f"input '{name}' is a constant where a tensor is expected")
        raise self._unsupported(node, f"input '{name}' was not produced by a supported node")

    def _const(self, node: Any, index: int) -> np.ndarray | None:
        if index >= len(node.input) or not node.input[index]:
            return None
        name = node.input[index]
        if name not in self.consts:
            raise self._unsupported(node, f"input '{name}' must be a constant (initializer)")
        return self.consts[name]

    def _sole_consumer(self, name: str, op_type: str) -> Any | None:
        users = self.consumers.get(name, [])
        if len(users) == 1 and users[0].op_type == op_type and name not in self.graph_outputs:
            return users[0]
        return None

    def _set(self, node: Any, value: _Value, output: str | None = None) -> None:
        name = output or node.output[0]
        self.values[name] = value
        expected = self.shapes.get(name)
        if expected is None:
            return
        got = [int(d) for d in value.tensor.shape]
        if value.layout == "nhwc" and len(expected) == 4:
            expected = [expected[i] for i in NCHW_TO_NHWC]
        if got != expected:
            raise self._unsupported(
                node, f"translated shape {got} differs from the ONNX shape {expected} (padding or layout)"
            )

    # --- run ---------------------------------------------------------------------------------------
    def translate(self) -> KerasTranslation:
        keras = self.keras
        initializers = set(self.consts)
        inputs, input_perms = [], {}
        for value in self.model.graph.input:
            if value.name in initializers:
                continue
            shape = [d.dim_value for d in value.type.tensor_type.shape.dim]
            safe = keras_safe_name(value.name)
            if len(shape) == 4:
                tensor = keras.Input(shape=tuple(shape[i] for i in NCHW_TO_NHWC[1:]), batch_size=1, name=safe)
                self.values[value.name] = _Value(tensor, "nhwc")
                input_perms[value.name] = list(NCHW_TO_NHWC)
            else:
                tensor = keras.Input(shape=tuple(shape[1:]), batch_size=1, name=safe)
                self.values[value.name] = _Value(tensor)
                input_perms[value.name] = None
            inputs.append(tensor)
        for node in self.model.graph.node:
            if id(node) in self.fused:
                continue
            if node.domain not in ("", "ai.onnx"):
                raise self._unsupported(node, f"custom domain '{node.domain}' is not supported")
            if node.op_type == "Constant" or (
                node.input
                and all(not n or n in self.consts for n in node.input)
                and node.op_type != "Dropout"
            ):
                self._fold_constant(node)
                continue
            if node.op_type == "Shape":
                self._shape(node)
                continue
            handler = self.handlers.get(node.op_type)
            if handler is None:
                raise self._unsupported(node, "op type is not supported")
            handler(node)
        outputs, output_perms = [], {}
        for value in self.model.graph.output:
            translated = self.values.get(value.name)
            if translated is None:
                raise UnsupportedModelError(f"output '{value.name}' is not computed from the inputs")
            tensor = translated.tensor
            if translated.layout == "flat_nhwc":
                assert translated.chw is not None
                c, h, w = translated.chw
                tensor = keras.ops.reshape(
                    keras.ops.transpose(keras.ops.reshape(tensor, (1, h, w, c)), (0, 3, 1, 2)), (1, c * h * w)
                )
            output_perms[value.name] = list(NCHW_TO_NHWC) if translated.layout == "nhwc" else None
            outputs.append(tensor)
        return KerasTranslation(keras.Model(inputs, outputs), input_perms, output_perms, self.layer_nodes)

    # --- constants and shapes ----------------------------------------------------------------------
    def _fold_constant(self, node: Any) -> None:
        from onnx.reference import ReferenceEvaluator

        try:
            feeds = {name: self.consts[name] for name in node.input if name}
            results = ReferenceEvaluator(node).run(None, feeds)
        except Exception as exc:
            raise self._unsupported(node, f"cannot evaluate it on constants ({exc})") from exc
        for name, result in zip(node.output, results, strict=False):
            self.consts[name] = np.asarray(result)

    def _shape(self, node: Any) -> None:
        shape = self.shapes.get(node.input[0])
        if shape is None:
            raise self._unsupported(node, "the shape of its input is not static")
        attrs = _attrs(node)
        start, end = attrs.get("start", 0), attrs.get("end", len(shape))
        self.consts[node.output[0]] = np.asarray(shape[start:end], dtype=np.int64)

    # --- helpers -----------------------------------------------------------------------------------
    def _spatial_padding(
        self, node: Any, in_hw: list[int], kernel: list[int], strides: list[int], dilations: list[int]
    ) -> tuple[str, list[int]]:
        """('same'|'valid'|'explicit', pads[top, left, bottom, right]) for a 2D window op."""
        attrs = _attrs(node)
        auto_pad = attrs.get("auto_pad", b"NOTSET")
        auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
        same = []
        for size, k, s, d in zip(in_hw, kernel, strides, dilations, strict=True):
            out = -(-size // s)
            total = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
            same.append((total // 2, total - total // 2))
        tf_same = [same[0][0], same[1][0], same[0][1], same[1][1]]
        if auto_pad == "SAME_UPPER":
            return "same", tf_same
        if auto_pad == "VALID":
            return "valid", [0, 0, 0, 0]
        if auto_pad == "SAME_LOWER":
            pads = [same[0][1], same[1][1], same[0][0], same[1][0]]
        else:
            pads = list(attrs.get("pads", [0, 0, 0, 0]))
        if not any(pads):
            return "valid", pads
        if pads == tf_same:
            return "same", pads
        return "explicit", pads

    def _window(self, node: Any, x: _Value, default_kernel: list[int] | None = None) -> tuple[list[int], ...]:
        if x.layout != "nhwc" or len(x.tensor.shape) != 4:
            raise self._unsupported(node, "only 2D (NCHW) inputs are supported")
        attrs = _attrs(node)
        kernel = list(attrs.get("kernel_shape", default_kernel or []))
        if len(kernel) != 2:
            raise self._unsupported(node, "only 2D kernels are supported")
        strides = list(attrs.get("strides", [1, 1]))
        dilations = list(attrs.get("dilations", [1, 1]))
        in_hw = [int(x.tensor.shape[1]), int(x.tensor.shape[2])]
        return kernel, strides, dilations, in_hw

    def _to_layout(self, const: np.ndarray, like: _Value, node: Any) -> np.ndarray:
        """A constant operand rearranged to broadcast against a translated tensor the way ONNX would."""
        const = const.astype(np.float32)
        if like.layout == "same" or const.size == 1:
            return const.reshape(()) if const.size == 1 else const
        if like.layout == "nhwc":
            if const.ndim > 4:
                raise self._unsupported(node, "constant operand has more than 4 dims")
            full = const.reshape((1,) * (4 - const.ndim) + const.shape)
            return full.transpose(NCHW_TO_NHWC)
        assert like.chw is not None
        flat = const.reshape(-1)
        if flat.size != int(np.prod(like.chw)):
            raise self._unsupported(node, "constant operand does not match the flattened feature map")
        return flat[_flat_nhwc_index(like.chw)]

    # --- op handlers -------------------------------------------------------------------------------
    def _conv(self, node: Any) -> None:
        keras = self.keras
        x = self._value(node, node.input[0])
        weight = self._const(node, 1)
        bias = self._const(node, 2)
        assert weight is not None
        if weight.ndim != 4:
            raise self._unsupported(node, f"only 2D convolutions are supported (weight rank {weight.ndim})")
        kernel, strides, dilations, in_hw = self._window(node, x, list(weight.shape[2:]))
        if max(strides) > 1 and max(dilations) > 1:
            raise self._unsupported(node, "strides and dilations > 1 together are not supported by Keras")
        out_ch, in_per_group = int(weight.shape[0]), int(weight.shape[1])
        group = int(_attrs(node).get("group", 1))
        in_ch = int(x.tensor.shape[3])
        weight = weight.astype(np.float32)
        bias = np.zeros(out_ch, np.float32) if bias is None else bias.astype(np.float32)
        output = node.output[0]
        bn = self._sole_consumer(output, "BatchNormalization")
        folded = []
        if bn is not None and all(n in self.consts for n in bn.input[1:5]):
            scale, shift = self._bn_affine(bn)
            weight = weight * scale[:, None, None, None]
            bias = bias * scale + shift
            self.fused.add(id(bn))
            output = bn.output[0]
            folded.append(bn)
        mode, pads = self._spatial_padding(node, in_hw, kernel, strides, dilations)
        tensor = x.tensor
        if mode == "explicit":
            tensor = keras.layers.ZeroPadding2D(
                ((pads[0], pads[2]), (pads[1], pads[3])), name=self._padding_name(node)
            )(tensor)
            mode = "valid"
        common = {
            "strides": tuple(strides),
            "padding": mode,
            "dilation_rate": tuple(dilations),
            "name": self._name(node, *folded),
        }
        if group == 1:
            layer = keras.layers.Conv2D(out_ch, tuple(kernel), **common)
            kernel_w = weight.transpose(2, 3, 1, 0)
        elif group == in_ch and in_per_group == 1:
            layer = keras.layers.DepthwiseConv2D(tuple(kernel), depth_multiplier=out_ch // in_ch, **common)
            kernel_w = weight.reshape(in_ch, out_ch // in_ch, *kernel).transpose(2, 3, 0, 1)
        else:
            layer = keras.layers.Conv2D(out_ch, tuple(kernel), groups=group, **common)
            kernel_w = weight.transpose(2, 3, 1, 0)
        result = layer(tensor)
        layer.set_weights([kernel_w, bias])
        self._set(node, _Value(result, "nhwc"), output)

    def _bn_affine(self, node: Any) -> tuple[np.ndarray, np.ndarray]:
        gamma, beta, mean, var = (self.consts[n].astype(np.float32) for n in node.input[1:5])
        eps = float(_attrs(node).get("epsilon", 1e-5))
        scale = gamma / np.sqrt(var + eps)
        return scale, beta - mean * scale

    def _batch_norm(self, node: Any) -> None:
        x = self._value(node, node.input[0])
        if not all(n in self.consts for n in node.input[1:5]):
            raise self._unsupported(node, "scale, bias, mean and variance must be constants")
        if x.layout == "flat_nhwc" or (x.layout == "same" and len(x.tensor.shape) != 2):
            raise self._unsupported(node, "only NCHW feature maps and [batch, features] inputs are supported")
        scale, shift = self._bn_affine(node)
        ops = self.keras.ops
        self._set(node, _Value(ops.add(ops.multiply(x.tensor, scale), shift), x.layout))

    def _relu(self, node: Any) -> None:
        x = self._value(node, node.input[0])
        self._set(node, _Value(self.keras.layers.ReLU(name=self._name(node))(x.tensor), x.layout, x.chw))

    def _leaky_relu(self, node: Any) -> None:
        x = self._value(node, node.input[0])
        alpha = float(_attrs(node).get("alpha", 0.01))
        layer = self.keras.layers.LeakyReLU(negative_slope=alpha, name=self._name(node))
        self._set(node, _Value(layer(x.tensor), x.layout, x.chw))

    def _sigmoid(self, node: Any) -> None:
        x = self._value(node, node.input[0])
        layer = self.keras.layers.Activation("sigmoid", name=self._name(node))
        self._set(node, _Value(layer(x.tensor), x.layout, x.chw))

    def _clip(self, node: Any) -> None:
        x = self._value(node, node.input[0])
        attrs = _attrs(node)
        low, high = attrs.get("min"), attrs.get("max")
        if self.opset >= 11:
            low_c, high_c = self._const(node, 1), self._const(node, 2)
            low = None if low_c is None else float(low_c)
            high = None if high_c is None else float(high_c)
        if low == 0.0:  # ReLU / ReLU6: fused into the producing conv by the TFLite converter
            result = self.keras.layers.ReLU(max_value=high, name=self._name(node))(x.tensor)
        else:
            result = self.keras.ops.clip(
                x.tensor, -np.inf if low is None else low, np.inf if high is None else high
            )
        self._set(node, _Value(result, x.layout, x.chw))

    def _max_pool(self, node: Any) -> None:
        x = self._value(node, node.input[0])
        kernel, strides, dilations, in_hw = self._window(node, x)
        if max(dilations) > 1:
            raise self._unsupported(node, "dilated pooling is not supported")
        mode, _ = self._spatial_padding(node, in_hw, kernel, strides, dilations)
        if mode == "explicit":
            raise self._unsupported(node, "padding other than none or TF-'same' is not supported for MaxPool")
        layer = self.keras.layers.MaxPooling2D(
            tuple(kernel), tuple(strides), padding=mode, name=self._name(node)
        )
        result = layer(x.tensor)
        self._set(node, _Value(result, "nhwc"))

    def _avg_pool(self, node: Any) -> None:
        keras = self.keras
        x = self._value(node, node.input[0])
        kernel, strides, dilations, in_hw = self._window(node, x)
        mode, pads = self._spatial_padding(node, in_hw, kernel, strides, dilations)
        include_pad = bool(_attrs(node).get("count_include_pad", 0))
        tensor = x.tensor
        if mode == "explicit" or (mode == "same" and include_pad):
            if not include_pad:
                raise self._unsupported(node, "explicit padding with count_include_pad=0 is not supported")
            tensor = keras.layers.ZeroPadding2D(
                ((pads[0], pads[2]), (pads[1], pads[3])), name=self._padding_name(node)
            )(tensor)
            mode = "valid"
        layer = keras.layers.AveragePooling2D(
            tuple(kernel), tuple(strides), padding=mode, name=self._name(node)
        )
        result = layer(tensor)
        self._set(node, _Value(result, "nhwc"))

    def _global_pool(self, node: Any) -> None:
        x = self._value(node, node.input[0])
        if x.layout != "nhwc":
            raise self._unsupported(node, "only 2D (NCHW) inputs are supported")
        layer_type = (
            self.keras.layers.GlobalAveragePooling2D
            if node.op_type == "GlobalAveragePool"
            else self.keras.layers.GlobalMaxPooling2D
        )
        self._set(node, _Value(layer_type(keepdims=True, name=self._name(node))(x.tensor), "nhwc"))

    def _binary(self, node: Any) -> None:
        ops = self.keras.ops
        op = {"Add": ops.add, "Sub": ops.subtract, "Mul": ops.multiply}[node.op_type]
        a_const, b_const = (node.input[i] in self.consts for i in (0, 1))
        if a_const or b_const:
            x = self._value(node, node.input[1 if a_const else 0])
            const = self._to_layout(self.consts[node.input[0 if a_const else 1]], x, node)
            result = op(const, x.tensor) if a_const else op(x.tensor, const)
            self._set(node, _Value(result, x.layout, x.chw))
            return
        a, b = self._value(node, node.input[0]), self._value(node, node.input[1])
        if (a.layout, a.chw) != (b.layout, b.chw) or len(a.tensor.shape) != len(b.tensor.shape):
            raise self._unsupported(node, "operands have different layouts or ranks")
        if a.tensor.shape == b.tensor.shape:  # a named layer, so a residual Add is traceable in TFLite
            layers = self.keras.layers
            layer_type = {"Add": layers.Add, "Sub": layers.Subtract, "Mul": layers.Multiply}[node.op_type]
            result = layer_type(name=self._name(node))([a.tensor, b.tensor])
        else:
            result = op(a.tensor, b.tensor)
        self._set(node, _Value(result, a.layout, a.chw))

    def _dense(
        self,
        node: Any,
        x: _Value,
        kernel: np.ndarray,
        bias: np.ndarray | None,
        output: str,
        folded: tuple[Any, ...] = (),
    ) -> None:
        """Dense layer on a [batch, features] tensor; rows of `kernel` (in, out) follow ONNX order."""
        if len(x.tensor.shape) != 2 or x.layout == "nhwc":
            raise self._unsupported(node, "only [batch, features] inputs are supported")
        if x.layout == "flat_nhwc":
            # The features arrive flattened in NHWC order; reordering the weight rows avoids a TRANSPOSE.
            assert x.chw is not None
            kernel = kernel[_flat_nhwc_index(x.chw)]
        layer = self.keras.layers.Dense(
            kernel.shape[1], use_bias=bias is not None, name=self._name(node, *folded)
        )
        result = layer(x.tensor)
        layer.set_weights([kernel] if bias is None else [kernel, bias])
        self._set(node, _Value(result), output)

    def _gemm(self, node: Any) -> None:
        x = self._value(node, node.input[0])
        attrs = _attrs(node)
        if attrs.get("transA", 0):
            raise self._unsupported(node, "transA=1 is not supported")
        weight = self._const(node, 1)
        assert weight is not None
        weight = weight.astype(np.float32)
        kernel = (weight.T if attrs.get("transB", 0) else weight) * float(attrs.get("alpha", 1.0))
        bias_c = self._const(node, 2)
        bias = None
        if bias_c is not None:
            try:
                bias = np.broadcast_to(
                    bias_c.astype(np.float32) * float(attrs.get("beta", 1.0)), (1, kernel.shape[1])
                )
            except ValueError as exc:
                raise self._unsupported(node, f"bias C of shape {bias_c.shape} does not broadcast") from exc
            bias = np.ascontiguousarray(bias.reshape(-1))
        self._dense(node, x, np.ascontiguousarray(kernel), bias, node.output[0])

    def _matmul(self, node: Any) -> None:
        x = self._value(node, node.input[0])
        kernel = self._const(node, 1)
        assert kernel is not None
        if kernel.ndim != 2:
            raise self._unsupported(node, "only [batch, in] x [in, out] with a constant weight is supported")
        kernel = kernel.astype(np.float32)
        bias, output, folded = None, node.output[0], ()
        add = self._sole_consumer(output, "Add")
        if add is not None:
            other = add.input[1] if add.input[0] == output else add.input[0]
            candidate = self.consts.get(other)
            if candidate is not None and candidate.size == kernel.shape[1]:
                bias, output = candidate.astype(np.float32).reshape(-1), add.output[0]
                self.fused.add(id(add))
                folded = (add,)
        self._dense(node, x, kernel, bias, output, folded)

    def _flatten(self, node: Any) -> None:
        x = self._value(node, node.input[0])
        axis = int(_attrs(node).get("axis", 1))
        rank = len(x.tensor.shape)
        if axis not in (1, 1 - rank):
            raise self._unsupported(node, f"axis {axis} is not supported (only 1: [batch, features])")
        self._flatten_to_2d(node, x)

    def _flatten_to_2d(self, node: Any, x: _Value) -> None:
        shape = [int(d) for d in x.tensor.shape]
        if x.layout == "nhwc":
            h, w, c = shape[1:]
            flat = self.keras.layers.Flatten(name=self._name(node))(x.tensor)
            # With H = W = 1 the NHWC and NCHW flattening orders coincide.
            self._set(node, _Value(flat, "same") if h == w == 1 else _Value(flat, "flat_nhwc", (c, h, w)))
        elif len(shape) == 2:
            self._set(node, x)
        else:
            self._set(node, _Value(self.keras.layers.Flatten(name=self._name(node))(x.tensor), "same"))

    def _reshape(self, node: Any) -> None:
        x = self._value(node, node.input[0])
        target = self.shapes.get(node.output[0]) or self._reshape_target(node, x)
        if len(target) == 2 and target[0] == 1:
            self._flatten_to_2d(node, x)
        elif x.layout == "same":
            layer = self.keras.layers.Reshape(tuple(target[1:]), name=self._name(node))
            self._set(node, _Value(layer(x.tensor)))
        else:
            raise self._unsupported(node, f"reshaping an NCHW feature map to {target} is not supported")

    def _reshape_target(self, node: Any, x: _Value) -> list[int]:
        """ONNX Reshape semantics on static shapes (0 copies a dim, -1 is inferred)."""
        requested = self._const(node, 1)
        if requested is None:
            raise self._unsupported(node, "the target shape is not static")
        shape = [int(d) for d in x.tensor.shape]
        if x.layout == "nhwc":
            shape = [shape[0], shape[3], shape[1], shape[2]]
        elif x.layout == "flat_nhwc":
            shape = [shape[0], int(np.prod(shape[1:]))]
        dims = [
            shape[i] if d == 0 and not _attrs(node).get("allowzero", 0) else int(d)
            for i, d in enumerate(requested)
        ]
        target = list(np.empty(shape, dtype=np.int8).reshape(dims).shape)
        self.shapes[node.output[0]] = target
        return target

    def _identity(self, node: Any) -> None:
        self._set(node, self._value(node, node.input[0]))

    def _softmax(self, node: Any) -> None:
        x = self._value(node, node.input[0])
        rank = len(x.tensor.shape)
        axis = int(_attrs(node).get("axis", -1 if self.opset >= 13 else 1))
        if x.layout != "same" or axis not in (-1, rank - 1):
            raise self._unsupported(node, "only softmax over the last axis of a [batch, features] tensor")
        self._set(node, _Value(self.keras.layers.Softmax(axis=-1, name=self._name(node))(x.tensor)))

    def _concat(self, node: Any) -> None:
        parts = [self._value(node, name) for name in node.input]
        layouts = {(p.layout, len(p.tensor.shape)) for p in parts}
        if len(layouts) != 1 or parts[0].layout == "flat_nhwc":
            raise self._unsupported(node, "inputs must share one layout (NCHW maps or plain tensors)")
        rank = len(parts[0].tensor.shape)
        axis = int(_attrs(node)["axis"]) % rank
        if parts[0].layout == "nhwc":
            axis = NCHW_TO_NHWC.index(axis)
        result = self.keras.layers.Concatenate(axis=axis, name=self._name(node))([p.tensor for p in parts])
        self._set(node, _Value(result, parts[0].layout))


def translate_onnx_to_keras(model: Any) -> KerasTranslation:
    """The Keras model (NHWC, batch 1) computing what `model` computes; UnsupportedModelError otherwise."""
    return _Translator(model).translate()


class OnnxToKeras:
    """Build the Keras twin of the ONNX model and check it against onnxruntime on calibration samples."""

    name = "translate onnx to keras (nhwc)"
    check_samples = 8

    def run(self, ctx: ConversionContext) -> None:
        import onnxruntime as ort

        model = ctx.need(ctx.model, "the source model")
        calib = ctx.need(ctx.calib, "calibration data")
        translation = translate_onnx_to_keras(model)
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        input_names = [t.name for t in ctx.need(ctx.model_info, "model description").inputs]
        output_names = [o.name for o in session.get_outputs()]
        worst = 0.0
        for index in range(min(self.check_samples, calib.samples)):
            sample = {name: calib.inputs[name][index : index + 1] for name in input_names}
            expected = session.run(None, sample)
            feeds = [
                sample[name]
                if translation.input_perms[name] is None
                else np.transpose(sample[name], translation.input_perms[name])
                for name in input_names
            ]
            got = translation.model(feeds, training=False)
            got = got if isinstance(got, list | tuple) else [got]
            for name, want, have in zip(output_names, expected, got, strict=True):
                have = np.asarray(have)
                perm = translation.output_perms[name]
                if perm is not None:
                    have = np.transpose(have, np.argsort(perm))
                scale = max(float(np.abs(want).max()), 1e-6)
                worst = max(worst, float(np.abs(have - want).max()) / scale)
        if worst > MAX_RELATIVE_DEVIATION:
            raise ConversionError(
                f"the Keras translation of {ctx.request.model} deviates from onnxruntime by {worst:.2e} "
                "(relative); this is a converter bug - please report it with the model"
            )
        ctx.keras_model = translation
