"""Translate an fp32 ONNX graph into an equivalent Keras functional model in NHWC layout, batch fixed to 1.

The TFLite converter needs a TensorFlow model; building it here (instead of with onnx2tf) keeps the
toolchain to tensorflow + onnx and puts every layout decision in one place.
"""

from __future__ import annotations

import itertools
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from edgefleet.converter.context import ConversionContext
from edgefleet.converter.errors import ConversionError, UnsupportedModelError
from edgefleet.converter.shared_work import model_key
from edgefleet.converter.steps.recurrent_cells import recurrent_spec, run_recurrent

NCHW_TO_NHWC = [0, 2, 3, 1]
SUPPORTED_OPS = (
    "1D/2D Conv (grouped, depthwise), ConvTranspose, pooling, BatchNormalization, LayerNormalization, "
    "Gemm, MatMul (also of two tensors), elementwise arithmetic and activations (incl. HardSwish, "
    "HardSigmoid, PRelu, Gelu and its Erf form), Softmax, Reduce*, Reshape, Transpose, Squeeze, Unsqueeze, "
    "Flatten, Concat, Split, Slice, Gather, Pad, Resize, Expand, LSTM and GRU (unrolled), If on a constant, "
    "and shape arithmetic on constants"
)
# Max |keras - onnx| relative to the output range above which the translation is considered wrong.
MAX_RELATIVE_DEVIATION = 1e-3

Layout = Literal["same", "nhwc", "flat_nhwc"]


@dataclass(frozen=True)
class _Value:
    """A translated tensor. layout 'same': ONNX layout; 'nhwc': an N-C-spatial tensor held channels-last
    (NCHW as NHWC, NCW as NWC); 'flat_nhwc': a [batch, C*H*W] tensor flattened in NHWC order (chw = ONNX
    C, H, W)."""

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
    fuse_hard_swish: bool = True  # HardSwish written so that TFLite fuses it into HARD_SWISH
    # a HardSwish (or x * relu6(x + 3)) was translated: only then does fuse_hard_swish change the model
    hard_swish_seen: bool = False


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


def keras_input_order(tflite_names: list[str], source_names: list[str]) -> list[int]:
    """For each source input (ONNX order), its position among a TFLite model's inputs `tflite_names`: the
    converter names them after the Keras inputs ('h' or 'serving_default_h:0') and orders them by name, not
    in the Keras order."""
    position = {}
    for index, name in enumerate(tflite_names):
        position[name] = index
        position[name.removeprefix("serving_default_").removesuffix(":0")] = index
    order = [position.get(name, position.get(keras_safe_name(name), -1)) for name in source_names]
    if sorted(order) != list(range(len(tflite_names))):
        raise ConversionError(
            f"TFLite inputs {tflite_names} are not named after the model's inputs {source_names}"
        )
    return order


def _attrs(node: Any) -> dict[str, Any]:
    """The node's attributes, strings (and lists of strings) decoded from the protobuf's bytes."""
    import onnx

    def decoded(value: Any) -> Any:
        if isinstance(value, bytes):
            return value.decode()
        if isinstance(value, list) and value and isinstance(value[0], bytes):
            return [v.decode() for v in value]
        return value

    return {attr.name: decoded(onnx.helper.get_attribute_value(attr)) for attr in node.attribute}


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


def _channels_last(rank: int) -> list[int]:
    """tensor = transpose(onnx_tensor, perm) for an N-C-spatial tensor held channels-last."""
    return [0, *range(2, rank), 1]


# Elementwise ops that keep the layout: op type -> (tf module, attrs) -> function of one tensor.
def _unary_ops() -> dict[str, Callable[[Any, dict[str, Any]], Callable[[Any], Any]]]:
    def hard_sigmoid(tf: Any, attrs: dict[str, Any]) -> Callable[[Any], Any]:
        alpha, beta = float(attrs.get("alpha", 0.2)), float(attrs.get("beta", 0.5))
        # clip(a*x + b, 0, 1) written with RELU6, which every int8 target (the Edge TPU too) runs
        return lambda t: tf.nn.relu6(t * (6 * alpha) + 6 * beta) * (1 / 6)

    def gelu(tf: Any, attrs: dict[str, Any]) -> Callable[[Any], Any]:
        tanh = attrs.get("approximate", "none") == "tanh"
        return lambda t: tf.nn.gelu(t, approximate=tanh)

    def elu(tf: Any, attrs: dict[str, Any]) -> Callable[[Any], Any]:
        alpha = float(attrs.get("alpha", 1.0))
        return lambda t: tf.where(t > 0, t, alpha * (tf.exp(t) - 1))

    def simple(name: str) -> Callable[[Any, dict[str, Any]], Callable[[Any], Any]]:
        return lambda tf, _attrs: _resolve(tf, name)

    return {
        "Tanh": simple("math.tanh"),
        "Exp": simple("math.exp"),
        "Log": simple("math.log"),
        "Abs": simple("math.abs"),
        "Neg": simple("math.negative"),
        "Sqrt": simple("math.sqrt"),
        "Reciprocal": simple("math.reciprocal"),
        "Floor": simple("math.floor"),
        "Ceil": simple("math.ceil"),
        "Round": simple("math.round"),
        "Sin": simple("math.sin"),
        "Cos": simple("math.cos"),
        "Softplus": simple("math.softplus"),
        "Softsign": simple("math.softsign"),
        "Sign": simple("math.sign"),
        "HardSigmoid": hard_sigmoid,
        "Gelu": gelu,
        "Elu": elu,
    }


def _resolve(root: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        root = getattr(root, part)
    return root


UNARY_OPS = _unary_ops()
FLOAT_TYPES = {1, 10, 11, 16}  # onnx TensorProto FLOAT, FLOAT16, DOUBLE, BFLOAT16


class _Translator:
    def __init__(self, model: Any, fuse_hard_swish: bool = True) -> None:
        import onnx
        import tensorflow as tf

        keras = import_keras()

        self.keras = keras
        self.tf = tf
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
        for node in self.model.graph.node:  # known up front: patterns (GELU) look at constants further on
            if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
                self.consts[node.output[0]] = onnx.numpy_helper.to_array(node.attribute[0].t)
        self.values: dict[str, _Value] = {}
        self.consumers: dict[str, list[Any]] = {}
        for node in self.model.graph.node:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)
        self.graph_outputs = {v.name for v in self.model.graph.output}
        self.fused: set[int] = set()  # ids of nodes folded into an earlier layer
        self.node_index = {id(node): index for index, node in enumerate(self.model.graph.node)}
        self.layer_nodes: dict[str, list[str]] = {}
        # The TFLite converter fuses x * relu6(x + 3) / 6 into HARD_SWISH, which the Edge TPU lacks; with the
        # ReLU6 as the first factor it keeps ADD(relu6) + MUL + MUL, which it runs.
        self.fuse_hard_swish = fuse_hard_swish
        self.relu6_outputs: set[str] = set()
        self.hard_swish_seen = False
        binary = dict.fromkeys(("Add", "Sub", "Mul", "Div", "Pow", "Max", "Min"), self._binary)
        self.handlers: dict[str, Callable[[Any], None]] = {
            **dict.fromkeys(UNARY_OPS, self._unary),
            "HardSwish": self._hard_swish,
            "Erf": self._erf,
            **binary,
            "Conv": self._conv,
            "ConvTranspose": self._conv_transpose,
            "Relu": self._relu,
            "LeakyRelu": self._leaky_relu,
            "PRelu": self._prelu,
            "Clip": self._clip,
            "Sigmoid": self._sigmoid,
            "MaxPool": self._max_pool,
            "AveragePool": self._avg_pool,
            "GlobalAveragePool": self._global_pool,
            "GlobalMaxPool": self._global_pool,
            "Gemm": self._gemm,
            "MatMul": self._matmul,
            "Flatten": self._flatten,
            "Reshape": self._reshape,
            "Squeeze": self._reshape,
            "Unsqueeze": self._reshape,
            "Transpose": self._transpose,
            "BatchNormalization": self._batch_norm,
            "LayerNormalization": self._layer_norm,
            "Identity": self._identity,
            "Dropout": self._identity,
            "Cast": self._cast,
            "Softmax": self._softmax,
            "LogSoftmax": self._softmax,
            "Concat": self._concat,
            "Split": self._split,
            "Slice": self._slice,
            "Gather": self._gather,
            "Pad": self._pad,
            "Resize": self._resize,
            "Upsample": self._resize,
            "Expand": self._expand,
            "ReduceMean": self._reduce,
            "ReduceSum": self._reduce,
            "ReduceMax": self._reduce,
            "ReduceMin": self._reduce,
            "If": self._if,
            "LSTM": self._recurrent,
            "GRU": self._recurrent,
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
                        "export the model with fixed non-batch dimensions or pass --input-shape"
                    )
                dim.Clear()
                dim.dim_value = 1
        for value in fixed.graph.output:  # let shape inference recompute output shapes with batch 1
            value.type.tensor_type.ClearField("shape")
        del fixed.graph.value_info[:]  # recomputed for batch 1 too
        return fixed

    def _name(self, node: Any, *folded: Any) -> str:
        """A unique Keras layer name for `node` (recorded with the ONNX nodes the layer computes)."""
        index = self.node_index.setdefault(id(node), len(self.node_index))
        name = f"L{index}_{re.sub(r'[^a-z0-9]', '', node.op_type.lower())}"
        self.layer_nodes[name] = [node_label(n) for n in (node, *folded)]
        return name

    def _padding_name(self, node: Any) -> str:
        """The explicit padding in front of `node`: a layer of its own, reported as '<node>/pad'."""
        name = f"L{self.node_index.setdefault(id(node), len(self.node_index))}_pad"
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
            self.shapes[name] = self._onnx_shape(value)
            return
        got = self._onnx_shape(value)
        if got != list(expected):
            raise self._unsupported(
                node, f"translated shape {got} differs from the ONNX shape {expected} (padding or layout)"
            )

    # --- layouts -----------------------------------------------------------------------------------
    @staticmethod
    def _perm(value: _Value) -> list[int]:
        """tensor = transpose(onnx_tensor, perm): where each ONNX axis sits in the translated tensor."""
        rank = len(value.tensor.shape)
        return _channels_last(rank) if value.layout == "nhwc" else list(range(rank))

    def _onnx_shape(self, value: _Value) -> list[int]:
        shape = [int(d) for d in value.tensor.shape]
        if value.layout == "flat_nhwc":
            return [shape[0], int(np.prod(shape[1:]))]
        onnx_shape = [0] * len(shape)
        for position, axis in enumerate(self._perm(value)):
            onnx_shape[axis] = shape[position]
        return onnx_shape

    def _axis(self, value: _Value, axis: int) -> int:
        """Where ONNX axis `axis` (negative allowed) of `value` sits in the translated tensor."""
        rank = len(value.tensor.shape)
        return self._perm(value).index(axis % rank)

    def _unflattened(self, value: _Value) -> _Value:
        """`value`, put back in ONNX layout when it is flat_nhwc (whose axes an axis-wise op cannot name)."""
        return _Value(self._as_same(value)) if value.layout == "flat_nhwc" else value

    def _as_same(self, value: _Value) -> Any:
        """The tensor in ONNX layout. Moving only size-1 axes is a reshape, not a transpose."""
        ops = self.keras.ops
        if value.layout == "same":
            return value.tensor
        if value.layout == "flat_nhwc":
            assert value.chw is not None
            c, h, w = value.chw
            return ops.reshape(
                ops.transpose(ops.reshape(value.tensor, (1, h, w, c)), (0, 3, 1, 2)), (1, c * h * w)
            )
        perm, shape = self._perm(value), [int(d) for d in value.tensor.shape]
        moved = [axis for axis, size in zip(perm, shape, strict=True) if size > 1]
        if moved == sorted(moved):
            return ops.reshape(value.tensor, tuple(self._onnx_shape(value)))
        return ops.transpose(value.tensor, tuple(int(i) for i in np.argsort(perm)))

    def _as_channels_last(self, node: Any, value: _Value) -> _Value:
        """An N-C-spatial tensor (rank 3 or 4) held channels-last, as convolutions and pooling take it."""
        rank = len(value.tensor.shape)
        if rank not in (3, 4) or value.layout == "flat_nhwc":
            raise self._unsupported(node, f"expects an N-C-spatial tensor of rank 3 or 4, got rank {rank}")
        if value.layout == "nhwc":
            return value
        perm = _channels_last(rank)
        shape = [int(value.tensor.shape[i]) for i in perm]
        ops = self.keras.ops
        moved = [axis for axis, size in zip(perm, shape, strict=True) if size > 1]
        tensor = (
            ops.reshape(value.tensor, tuple(shape))
            if moved == sorted(moved)
            else ops.transpose(value.tensor, tuple(perm))
        )
        return _Value(tensor, "nhwc")

    def _to_layout(self, const: np.ndarray, like: _Value, node: Any) -> np.ndarray:
        """A constant operand rearranged to broadcast against a translated tensor the way ONNX would."""
        const = const.astype(np.float32)
        if like.layout == "same" or const.size == 1:
            return const.reshape(()) if const.size == 1 else const
        if like.layout == "nhwc":
            rank = len(like.tensor.shape)
            if const.ndim > rank:
                raise self._unsupported(node, f"constant operand has more than {rank} dims")
            full = const.reshape((1,) * (rank - const.ndim) + const.shape)
            return full.transpose(self._perm(like))
        assert like.chw is not None
        flat = const.reshape(-1)
        if flat.size != int(np.prod(like.chw)):
            raise self._unsupported(node, "constant operand does not match the flattened feature map")
        return flat[_flat_nhwc_index(like.chw)]

    def _apply(self, node: Any, fn: Callable[..., Any], *tensors: Any, name: str | None = None) -> Any:
        """Run `fn` on `tensors` inside a Keras layer named after `node`, so the TFLite ops it becomes carry
        the name (per-layer error and mixed precision trace them back to the ONNX node)."""
        layer = self.keras.layers.Lambda(lambda args: fn(*args), name=name or self._name(node))
        return layer(list(tensors))

    # --- run ---------------------------------------------------------------------------------------
    def translate(self) -> KerasTranslation:
        keras = self.keras
        initializers = set(self.consts)
        inputs = []
        input_perms: dict[str, list[int] | None] = {}
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
        self._translate_nodes(self.model.graph.node)
        outputs = []
        output_perms: dict[str, list[int] | None] = {}
        for value in self.model.graph.output:
            translated = self.values.get(value.name)
            if translated is None:
                raise UnsupportedModelError(f"output '{value.name}' is not computed from the inputs")
            tensor = translated.tensor
            if translated.layout == "flat_nhwc":
                tensor = self._as_same(translated)
            output_perms[value.name] = self._perm(translated) if translated.layout == "nhwc" else None
            outputs.append(tensor)
        return KerasTranslation(
            keras.Model(inputs, outputs),
            input_perms,
            output_perms,
            self.layer_nodes,
            self.fuse_hard_swish,
            self.hard_swish_seen,
        )

    def _translate_nodes(self, nodes: Any) -> None:
        for node in nodes:
            if id(node) in self.fused:
                continue
            if node.domain not in ("", "ai.onnx"):
                raise self._unsupported(node, f"custom domain '{node.domain}' is not supported")
            if node.op_type == "Constant" or (
                node.input
                and all(not n or n in self.consts for n in node.input)
                and node.op_type not in ("Dropout", "If")
            ):
                self._fold_constant(node)
                continue
            if node.op_type == "Shape":
                self._shape(node)
                continue
            if node.op_type == "Size":
                shape = self.shapes.get(node.input[0])
                if shape is None:
                    raise self._unsupported(node, "the shape of its input is not static")
                self.consts[node.output[0]] = np.asarray(int(np.prod(shape)), dtype=np.int64)
                continue
            handler = self.handlers.get(node.op_type)
            if handler is None:
                raise self._unsupported(node, "op type is not supported")
            handler(node)

    # --- constants and shapes ----------------------------------------------------------------------
    def _fold_constant(self, node: Any) -> None:
        from onnx.reference import ReferenceEvaluator

        helper = self.onnx.helper
        try:
            feeds = {name: self.consts[name] for name in node.input if name}
            graph = helper.make_graph(
                [node],
                "fold",
                [helper.make_tensor_value_info(name, 0, None) for name in feeds],
                [helper.make_tensor_value_info(name, 0, None) for name in node.output],
            )
            # a one-node model at the source's opset: ops changed their signature across opsets
            model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.opset)])
            results = ReferenceEvaluator(model).run(None, feeds)
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

    def _if(self, node: Any) -> None:
        """An If on a constant condition (shape checks in exported graphs): the taken branch, inlined."""
        condition = self._const(node, 0)
        assert condition is not None
        branch = _attrs(node)["then_branch" if bool(np.asarray(condition).reshape(-1)[0]) else "else_branch"]
        for init in branch.initializer:
            self.consts[init.name] = self.onnx.numpy_helper.to_array(init)
        self._translate_nodes(branch.node)
        for source, target in zip((v.name for v in branch.output), node.output, strict=True):
            if source in self.consts:
                self.consts[target] = self.consts[source]
            else:
                self._set(node, self._value(node, source), target)

    # --- helpers -----------------------------------------------------------------------------------
    def _spatial_padding(
        self,
        attrs: dict[str, Any],
        in_hw: list[int],
        kernel: list[int],
        strides: list[int],
        dilations: list[int],
    ) -> tuple[str, list[int]]:
        """('same'|'valid'|'explicit', pads[top, left, bottom, right]) for a 2D window op."""
        auto_pad = attrs.get("auto_pad", "NOTSET")
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

    def _window(
        self, node: Any, x: _Value, default_kernel: list[int] | None = None
    ) -> tuple[_Value, dict[str, Any], list[int], list[int], list[int], list[int]]:
        """(x channels-last as 4-D, 2-D attrs, kernel, strides, dilations, in_hw); a 1-D window op is
        computed as a 2-D one over a height of 1."""
        attrs = _attrs(node)
        x = self._as_channels_last(node, x)
        kernel = list(attrs.get("kernel_shape", default_kernel or []))
        if len(x.tensor.shape) == 3:
            if len(kernel) != 1:
                raise self._unsupported(node, "a 1D input needs a 1D kernel")
            pads = list(attrs.get("pads", [0, 0]))
            attrs |= {
                "kernel_shape": [1, kernel[0]],
                "strides": [1, *attrs.get("strides", [1])],
                # the same dilation in both dims (the Edge TPU wants that): over a height-1 kernel and
                # input, the height's dilation changes nothing
                "dilations": [*attrs.get("dilations", [1])] * 2,
                "pads": [0, pads[0], 0, pads[1]],
            }
            kernel = [1, kernel[0]]
            _, w, c = (int(d) for d in x.tensor.shape)
            x = _Value(self.keras.ops.reshape(x.tensor, (1, 1, w, c)), "nhwc")
        if len(kernel) != 2:
            raise self._unsupported(node, "only 1D and 2D kernels are supported")
        strides = list(attrs.get("strides", [1, 1]))
        dilations = list(attrs.get("dilations", [1, 1]))
        in_hw = [int(x.tensor.shape[1]), int(x.tensor.shape[2])]
        return x, attrs, kernel, strides, dilations, in_hw

    def _set_window_result(self, node: Any, result: Any, one_d: bool, output: str | None = None) -> None:
        if one_d:  # back from [1, 1, W, C] to the 1D channels-last [1, W, C]
            _, _, w, c = (int(d) for d in result.shape)
            result = self.keras.ops.reshape(result, (1, w, c))
        self._set(node, _Value(result, "nhwc"), output)

    def _padded(self, node: Any, tensor: Any, mode: str, pads: list[int]) -> tuple[Any, str]:
        if mode != "explicit":
            return tensor, mode
        layer = self.keras.layers.ZeroPadding2D(
            ((pads[0], pads[2]), (pads[1], pads[3])), name=self._padding_name(node)
        )
        return layer(tensor), "valid"

    # --- convolutions --------------------------------------------------------------------------------
    def _conv(self, node: Any) -> None:
        keras = self.keras
        source = self._value(node, node.input[0])
        weight = self._const(node, 1)
        bias = self._const(node, 2)
        assert weight is not None
        if weight.ndim not in (3, 4):
            raise self._unsupported(
                node, f"only 1D and 2D convolutions are supported (weight rank {weight.ndim})"
            )
        one_d = weight.ndim == 3
        if one_d:
            weight = weight[:, :, None, :]
        default_kernel = list(weight.shape[3:] if one_d else weight.shape[2:])
        x, attrs, kernel, strides, dilations, in_hw = self._window(node, source, default_kernel)
        if max(strides) > 1 and max(dilations) > 1:
            raise self._unsupported(node, "strides and dilations > 1 together are not supported by Keras")
        out_ch, in_per_group = int(weight.shape[0]), int(weight.shape[1])
        group = int(attrs.get("group", 1))
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
        mode, pads = self._spatial_padding(attrs, in_hw, kernel, strides, dilations)
        tensor, mode = self._padded(node, x.tensor, mode, pads)
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
        self._set_window_result(node, result, one_d, output)

    def _conv_transpose(self, node: Any) -> None:
        x = self._as_channels_last(node, self._value(node, node.input[0]))
        weight = self._const(node, 1)
        bias = self._const(node, 2)
        assert weight is not None
        attrs = _attrs(node)
        if weight.ndim != 4 or len(x.tensor.shape) != 4:
            raise self._unsupported(node, "only 2D transposed convolutions are supported")
        if int(attrs.get("group", 1)) != 1 or max(attrs.get("dilations", [1, 1])) > 1:
            raise self._unsupported(node, "grouped or dilated transposed convolutions are not supported")
        if "output_shape" in attrs or attrs.get("auto_pad", "NOTSET") != "NOTSET":
            raise self._unsupported(
                node, "output_shape/auto_pad are not supported; export with explicit pads"
            )
        kernel = [int(k) for k in weight.shape[2:]]
        strides = list(attrs.get("strides", [1, 1]))
        pads = list(attrs.get("pads", [0, 0, 0, 0]))
        extra = list(attrs.get("output_padding", [0, 0]))
        out_ch = int(weight.shape[1])
        layer = self.keras.layers.Conv2DTranspose(
            out_ch,
            tuple(kernel),
            strides=tuple(strides),
            padding="valid",
            output_padding=tuple(extra) if any(extra) else None,
            name=self._name(node),
        )
        result = layer(x.tensor)
        bias_w = np.zeros(out_ch, np.float32) if bias is None else bias.astype(np.float32)
        layer.set_weights([weight.astype(np.float32).transpose(2, 3, 1, 0), bias_w])
        in_hw = [int(d) for d in x.tensor.shape[1:3]]
        want = [
            (size - 1) * s + k + e - pads[i] - pads[i + 2]
            for i, (size, s, k, e) in enumerate(zip(in_hw, strides, kernel, extra, strict=True))
        ]
        got = [int(d) for d in result.shape[1:3]]
        crop = [(pads[i], got[i] - want[i] - pads[i]) for i in range(2)]
        if any(b < 0 or e < 0 for b, e in crop):
            raise self._unsupported(node, f"padding {pads} with output_padding {extra} is not supported")
        if any(b or e for b, e in crop):
            result = self.keras.layers.Cropping2D(tuple(crop), name=self._padding_name(node))(result)
        self._set(node, _Value(result, "nhwc"))

    def _bn_affine(self, node: Any) -> tuple[np.ndarray, np.ndarray]:
        gamma, beta, mean, var = (self.consts[n].astype(np.float32) for n in node.input[1:5])
        eps = float(_attrs(node).get("epsilon", 1e-5))
        scale = gamma / np.sqrt(var + eps)
        return scale, beta - mean * scale

    def _batch_norm(self, node: Any) -> None:
        x = self._value(node, node.input[0])
        if not all(n in self.consts for n in node.input[1:5]):
            raise self._unsupported(node, "scale, bias, mean and variance must be constants")
        x = self._unflattened(x)
        scale, shift = self._bn_affine(node)
        rank = len(x.tensor.shape)
        shape = (-1,) + (1,) * (rank - 2)  # the channel axis is ONNX axis 1
        scale_t = self._to_layout(scale.reshape(shape), x, node)
        shift_t = self._to_layout(shift.reshape(shape), x, node)
        result = self._apply(node, lambda t: t * scale_t + shift_t, x.tensor)
        self._set(node, _Value(result, x.layout))

    def _layer_norm(self, node: Any) -> None:
        x = _Value(self._as_same(self._value(node, node.input[0])))
        attrs = _attrs(node)
        rank = len(x.tensor.shape)
        axes = list(range(int(attrs.get("axis", -1)) % rank, rank))
        param_shape = tuple(int(x.tensor.shape[a]) for a in axes)
        scale = self._const(node, 1)
        bias = self._const(node, 2)
        assert scale is not None
        layer = self.keras.layers.LayerNormalization(
            axis=axes, epsilon=float(attrs.get("epsilon", 1e-5)), name=self._name(node)
        )
        result = layer(x.tensor)
        gamma = np.broadcast_to(scale.astype(np.float32), param_shape)
        beta = np.zeros(param_shape, np.float32) if bias is None else np.broadcast_to(bias, param_shape)
        layer.set_weights([np.ascontiguousarray(gamma), np.ascontiguousarray(beta, dtype=np.float32)])
        self._set(node, _Value(result))

    # --- activations -------------------------------------------------------------------------------
    def _relu(self, node: Any) -> None:
        x = self._value(node, node.input[0])
        self._set(node, _Value(self.keras.layers.ReLU(name=self._name(node))(x.tensor), x.layout, x.chw))

    def _leaky_relu(self, node: Any) -> None:
        x = self._value(node, node.input[0])
        alpha = float(_attrs(node).get("alpha", 0.01))
        layer = self.keras.layers.LeakyReLU(negative_slope=alpha, name=self._name(node))
        self._set(node, _Value(layer(x.tensor), x.layout, x.chw))

    def _prelu(self, node: Any) -> None:
        x = self._value(node, node.input[0])
        slope = self._const(node, 1)
        assert slope is not None
        rank = len(x.tensor.shape)
        aligned = self._to_layout(slope, x, node)
        aligned = aligned.reshape((1,) * (rank - aligned.ndim) + aligned.shape)
        shape = [int(d) for d in x.tensor.shape]
        shared = [axis for axis in range(1, rank) if aligned.shape[axis] == 1 and shape[axis] > 1]
        alpha_shape = [1 if axis in shared else shape[axis] for axis in range(1, rank)]
        alpha = np.broadcast_to(aligned, [1, *alpha_shape])[0]
        layer = self.keras.layers.PReLU(shared_axes=shared or None, name=self._name(node))
        result = layer(x.tensor)
        layer.set_weights([np.ascontiguousarray(alpha, dtype=np.float32)])
        self._set(node, _Value(result, x.layout, x.chw))

    def _sigmoid(self, node: Any) -> None:
        x = self._value(node, node.input[0])
        layer = self.keras.layers.Activation("sigmoid", name=self._name(node))
        self._set(node, _Value(layer(x.tensor), x.layout, x.chw))

    def _unary(self, node: Any) -> None:
        x = self._value(node, node.input[0])
        fn = UNARY_OPS[node.op_type](self.tf, _attrs(node))
        self._set(node, _Value(self._apply(node, fn, x.tensor), x.layout, x.chw))

    def _hard_swish(self, node: Any) -> None:
        self.hard_swish_seen = True
        x = self._value(node, node.input[0])
        tf = self.tf
        if self.fuse_hard_swish:
            result = self._apply(node, lambda t: t * tf.nn.relu6(t + 3.0) * (1 / 6), x.tensor)
        else:
            result = self._apply(node, lambda t: tf.nn.relu6(t + 3.0) * t * (1 / 6), x.tensor)
        self._set(node, _Value(result, x.layout, x.chw))

    def _cast(self, node: Any) -> None:
        if int(_attrs(node)["to"]) not in FLOAT_TYPES:
            raise self._unsupported(node, "casting a computed tensor to an integer type has no int8 form")
        self._identity(node)

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
            if high == 6.0:
                self.relu6_outputs.add(node.output[0])
        else:
            tf = self.tf
            lo = -np.inf if low is None else low
            hi = np.inf if high is None else high
            result = self._apply(node, lambda t: tf.minimum(tf.maximum(t, lo), hi), x.tensor)
        self._set(node, _Value(result, x.layout, x.chw))

    # --- pooling -----------------------------------------------------------------------------------
    def _max_pool(self, node: Any) -> None:
        source = self._value(node, node.input[0])
        one_d = len(source.tensor.shape) == 3
        x, attrs, kernel, strides, dilations, in_hw = self._window(node, source)
        if max(dilations) > 1:
            raise self._unsupported(node, "dilated pooling is not supported")
        if int(attrs.get("ceil_mode", 0)):
            raise self._unsupported(node, "ceil_mode=1 is not supported")
        mode, pads = self._spatial_padding(attrs, in_hw, kernel, strides, dilations)
        tensor = x.tensor
        if mode == "explicit":  # pad with the lowest value, so the padding never wins the max
            tf = self.tf
            paddings = [[0, 0], [pads[0], pads[2]], [pads[1], pads[3]], [0, 0]]
            tensor = self._apply(
                node,
                lambda t: tf.pad(t, paddings, constant_values=-3.0e38),
                tensor,
                name=self._padding_name(node),
            )
            mode = "valid"
        layer = self.keras.layers.MaxPooling2D(
            tuple(kernel), tuple(strides), padding=mode, name=self._name(node)
        )
        self._set_window_result(node, layer(tensor), one_d)

    def _avg_pool(self, node: Any) -> None:
        keras = self.keras
        source = self._value(node, node.input[0])
        one_d = len(source.tensor.shape) == 3
        x, attrs, kernel, strides, dilations, in_hw = self._window(node, source)
        if int(attrs.get("ceil_mode", 0)):
            raise self._unsupported(node, "ceil_mode=1 is not supported")
        mode, pads = self._spatial_padding(attrs, in_hw, kernel, strides, dilations)
        include_pad = bool(attrs.get("count_include_pad", 0))
        tensor = x.tensor
        if mode == "explicit" or (mode == "same" and include_pad):
            if not include_pad:
                raise self._unsupported(node, "explicit padding with count_include_pad=0 is not supported")
            tensor, mode = self._padded(node, tensor, "explicit", pads)
        layer = keras.layers.AveragePooling2D(
            tuple(kernel), tuple(strides), padding=mode, name=self._name(node)
        )
        self._set_window_result(node, layer(tensor), one_d)

    def _global_pool(self, node: Any) -> None:
        x = self._as_channels_last(node, self._value(node, node.input[0]))
        tf = self.tf
        reduce = tf.reduce_mean if node.op_type == "GlobalAveragePool" else tf.reduce_max
        axes = list(range(1, len(x.tensor.shape) - 1))
        result = self._apply(node, lambda t: reduce(t, axis=axes, keepdims=True), x.tensor)
        self._set(node, _Value(result, "nhwc"))

    # --- elementwise arithmetic --------------------------------------------------------------------
    def _binary(self, node: Any) -> None:
        tf = self.tf
        if self._gelu(node):
            return
        if len(node.input) != 2:
            raise self._unsupported(node, "only two operands are supported")
        fns: dict[str, Callable[[Any, Any], Any]] = {
            "Add": tf.add,
            "Sub": tf.subtract,
            "Mul": tf.multiply,
            "Div": tf.divide,
            "Pow": tf.pow,
            "Max": tf.maximum,
            "Min": tf.minimum,
        }
        op = fns[node.op_type]
        a_const, b_const = (node.input[i] in self.consts for i in (0, 1))
        if a_const or b_const:
            x = self._value(node, node.input[1 if a_const else 0])
            const = self._to_layout(self.consts[node.input[0 if a_const else 1]], x, node)
            if b_const and node.op_type == "Div":  # an int8 MUL by the reciprocal, not a DIV
                result = self._apply(node, lambda t: t * (1 / const), x.tensor)
            elif b_const and node.op_type == "Pow":
                result = self._apply(node, self._power(float(const.reshape(-1)[0]), const), x.tensor)
            else:
                result = self._apply(
                    node, (lambda t: op(const, t)) if a_const else (lambda t: op(t, const)), x.tensor
                )
            self._set(node, _Value(result, x.layout, x.chw))
            return
        a, b = self._value(node, node.input[0]), self._value(node, node.input[1])
        same_layout = (a.layout, a.chw) == (b.layout, b.chw) and len(a.tensor.shape) == len(b.tensor.shape)
        if same_layout:
            layout, chw, ta, tb = a.layout, a.chw, a.tensor, b.tensor
        else:
            layout, chw, ta, tb = "same", None, self._as_same(a), self._as_same(b)
        if node.op_type == "Mul" and self.relu6_outputs & set(node.input):
            self.hard_swish_seen = True  # maybe x * relu6(x + 3): TFLite fuses it into HARD_SWISH
            if not self.fuse_hard_swish and node.input[1] in self.relu6_outputs:
                ta, tb = tb, ta  # x * relu6(x + 3) written relu6-first: see fuse_hard_swish
        self._set(node, _Value(self._apply(node, op, ta, tb), layout, chw))

    def _gelu(self, node: Any) -> bool:
        """GELU written with Erf, as torch exports nn.GELU: x * (erf(x / sqrt 2) + 1) * 0.5 becomes one
        GELU op (TFLite has no ERF builtin; GELU has an int8 kernel)."""
        if node.op_type not in ("Div", "Mul") or node.input[1] not in self.consts:
            return False
        scale = self.consts[node.input[1]].astype(np.float64).reshape(-1)
        want = np.sqrt(2.0) if node.op_type == "Div" else 1 / np.sqrt(2.0)
        if scale.size != 1 or not np.isclose(scale[0], want, rtol=1e-3):
            return False
        x_name = node.input[0]
        erf = self._sole_consumer(node.output[0], "Erf")
        add = erf and self._sole_consumer(erf.output[0], "Add")
        mul = add and self._sole_consumer(add.output[0], "Mul")
        half = mul and self._sole_consumer(mul.output[0], "Mul")
        if not (erf and add and mul and half) or x_name not in mul.input:
            return False
        one = next((self.consts.get(n) for n in add.input if n in self.consts), None)
        half_c = next((self.consts.get(n) for n in half.input if n in self.consts), None)
        if one is None or half_c is None or one.size != 1 or half_c.size != 1:
            return False
        if not (np.isclose(float(one.reshape(-1)[0]), 1.0) and np.isclose(float(half_c.reshape(-1)[0]), 0.5)):
            return False
        x = self._value(node, x_name)
        tf = self.tf
        fused = (erf, add, mul, half)
        self.fused.update(id(n) for n in fused)
        result = self._apply(
            node, lambda t: tf.nn.gelu(t, approximate=False), x.tensor, name=self._name(node, *fused)
        )
        self._set(node, _Value(result, x.layout, x.chw), half.output[0])
        return True

    def _erf(self, node: Any) -> None:
        raise self._unsupported(
            node,
            "TFLite has no ERF op; only GELU written with Erf (x * (erf(x / sqrt(2)) + 1) * 0.5) translates",
        )

    def _power(self, exponent: float, const: np.ndarray) -> Callable[[Any], Any]:
        tf = self.tf
        if const.size == 1 and exponent == 2.0:
            return lambda t: t * t
        if const.size == 1 and exponent == 0.5:
            return tf.math.sqrt
        if const.size == 1 and exponent == 1.0:
            return lambda t: t
        return lambda t: tf.pow(t, const)

    # --- matrix products ---------------------------------------------------------------------------
    def _dense(
        self,
        node: Any,
        x: _Value,
        kernel: np.ndarray,
        bias: np.ndarray | None,
        output: str,
        folded: tuple[Any, ...] = (),
    ) -> None:
        """Dense layer over the last axis; rows of `kernel` (in, out) follow ONNX order."""
        if x.layout == "flat_nhwc":
            # The features arrive flattened in NHWC order; reordering the weight rows avoids a TRANSPOSE.
            assert x.chw is not None
            kernel = kernel[_flat_nhwc_index(x.chw)]
            tensor = x.tensor
        else:
            tensor = self._as_same(x)
        keras, name = self.keras, self._name(node, *folded)
        shape = [int(d) for d in tensor.shape]
        if len(shape) < 3:
            layer = keras.layers.Dense(kernel.shape[1], use_bias=bias is not None, name=name)
            result = layer(tensor)
            layer.set_weights([kernel] if bias is None else [kernel, bias])
            self._set(node, _Value(result), output)
            return
        # Over a sequence or map, a 1x1 convolution: FULLY_CONNECTED would keep the leading dims, which the
        # Edge TPU refuses (1-D outputs only), and a convolution's weights are quantized per channel.
        rows = int(np.prod(shape[:-1]))
        layer = keras.layers.Conv2D(kernel.shape[1], 1, use_bias=bias is not None, name=name)
        result = layer(tensor if len(shape) == 4 else keras.ops.reshape(tensor, (1, rows, 1, shape[-1])))
        weight = kernel.reshape(1, 1, *kernel.shape)
        layer.set_weights([weight] if bias is None else [weight, bias])
        if len(shape) != 4:
            result = keras.ops.reshape(result, (*shape[:-1], kernel.shape[1]))
        self._set(node, _Value(result), output)

    def _gemm(self, node: Any) -> None:
        x = self._value(node, node.input[0])
        attrs = _attrs(node)
        if attrs.get("transA", 0) or len(self._onnx_shape(x)) != 2:
            raise self._unsupported(node, "only [batch, in] inputs without transA are supported")
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
        a_name, b_name = node.input[0], node.input[1]
        if a_name in self.consts or b_name not in self.consts:
            self._matmul_activations(node)
            return
        x = self._value(node, a_name)
        kernel = self.consts[b_name]
        if kernel.ndim != 2:
            raise self._unsupported(node, "a constant weight must be 2-D")
        kernel = kernel.astype(np.float32)
        bias, output = None, node.output[0]
        folded: tuple[Any, ...] = ()
        add = self._sole_consumer(output, "Add")
        if add is not None:
            other = add.input[1] if add.input[0] == output else add.input[0]
            candidate = self.consts.get(other)
            # a bias over the output columns only ([out] or [1, ..., out]), not one broadcast over rows
            if (
                candidate is not None
                and candidate.shape[-1:] == (kernel.shape[1],)
                and candidate.size == kernel.shape[1]
            ):
                bias, output = candidate.astype(np.float32).reshape(-1), add.output[0]
                self.fused.add(id(add))
                folded = (add,)
        self._dense(node, x, kernel, bias, output, folded)

    def _matmul_activations(self, node: Any) -> None:
        """MatMul with a computed right operand (attention scores, value mixing): a batched MATMUL."""
        tf = self.tf
        operands = []
        for name in node.input[:2]:
            if name in self.consts:
                operands.append(self.consts[name].astype(np.float32))
            else:
                operands.append(self._as_same(self._value(node, name)))
        a, b = operands
        if isinstance(a, np.ndarray):
            result = self._apply(node, lambda t: tf.matmul(a, t), b)
        else:
            result = self._apply(node, tf.matmul, a, b)
        self._set(node, _Value(result))

    def _recurrent(self, node: Any) -> None:
        """LSTM/GRU unrolled over the static sequence (converter/steps/recurrent_cells.py)."""
        w, r = self._const(node, 1), self._const(node, 2)
        assert w is not None and r is not None
        peepholes = self._const(node, 7) if node.op_type == "LSTM" else None
        try:
            spec = recurrent_spec(node.op_type, _attrs(node), w, r, self._const(node, 3), peepholes)
        except ValueError as exc:
            raise self._unsupported(node, str(exc)) from exc
        x = self._as_same(self._value(node, node.input[0]))
        steps, batch = int(x.shape[0]), int(x.shape[1])
        lengths = self._const(node, 4)
        if lengths is not None and not np.all(lengths == steps):
            raise self._unsupported(node, "sequence_lens shorter than the sequence are not supported")
        tensors = [x]
        states: list[np.ndarray | int | None] = []  # an initial state: none, a constant or an input
        for index in (5, 6):
            name = node.input[index] if index < len(node.input) else ""
            if not name:
                states.append(None)
            elif name in self.consts:
                states.append(np.broadcast_to(self.consts[name], (len(spec.directions), batch, spec.hidden)))
            else:
                states.append(len(tensors))  # position among the layer's inputs
                tensors.append(self._as_same(self._value(node, name)))
        tf = self.tf

        def unrolled(*args: Any) -> list[Any]:
            h, c = (args[s] if isinstance(s, int) else s for s in states)
            return run_recurrent(tf, spec, args[0], h, c)

        results = self._apply(node, unrolled, *tensors)
        for name, tensor in zip(node.output, results, strict=False):
            if name:
                self._set(node, _Value(tensor), name)

    # --- shape and layout ops ----------------------------------------------------------------------
    def _flatten(self, node: Any) -> None:
        x = self._value(node, node.input[0])
        shape = self._onnx_shape(x)
        axis = int(_attrs(node).get("axis", 1)) % max(len(shape), 1)
        target = [int(np.prod(shape[:axis])), int(np.prod(shape[axis:]))]
        if axis == 1:
            self._flatten_to_2d(node, x)
        else:
            self._reshape_to(node, x, target)

    def _flatten_to_2d(self, node: Any, x: _Value) -> None:
        shape = [int(d) for d in x.tensor.shape]
        if x.layout == "nhwc" and len(shape) == 4:
            h, w, c = shape[1:]
            flat = self.keras.layers.Flatten(name=self._name(node))(x.tensor)
            # With H = W = 1 the NHWC and NCHW flattening orders coincide.
            self._set(node, _Value(flat, "same") if h == w == 1 else _Value(flat, "flat_nhwc", (c, h, w)))
        elif len(shape) == 2:
            self._set(node, x)
        else:
            tensor = self._as_same(x)
            self._set(node, _Value(self.keras.layers.Flatten(name=self._name(node))(tensor), "same"))

    def _reshape(self, node: Any) -> None:
        """Reshape, Squeeze and Unsqueeze: to the static shape ONNX infers (or ONNX semantics on it)."""
        x = self._value(node, node.input[0])
        target = self.shapes.get(node.output[0]) or self._target_shape(node, x)
        source = self._onnx_shape(x)
        if len(target) == 2 and target[0] == 1 and len(source) >= 2 and target[1] == int(np.prod(source[1:])):
            self._flatten_to_2d(node, x)
        else:
            self._reshape_to(node, x, list(target))

    def _reshape_to(self, node: Any, x: _Value, target: list[int]) -> None:
        if target == self._onnx_shape(x) and x.layout != "flat_nhwc":
            self._set(node, x)
            return
        tensor = self._as_same(x)
        tf = self.tf
        self._set(node, _Value(self._apply(node, lambda t: tf.reshape(t, target), tensor)))

    def _target_shape(self, node: Any, x: _Value) -> list[int]:
        """ONNX Reshape/Squeeze/Unsqueeze semantics on static shapes (0 copies a dim, -1 is inferred)."""
        shape = self._onnx_shape(x)
        attrs = _attrs(node)
        if node.op_type == "Reshape":
            requested = self._const(node, 1)
            if requested is None:
                raise self._unsupported(node, "the target shape is not static")
            dims = [
                shape[i] if d == 0 and not attrs.get("allowzero", 0) else int(d)
                for i, d in enumerate(requested)
            ]
            target = list(np.empty(shape, dtype=np.int8).reshape(dims).shape)
        else:
            axes_c = self._const(node, 1) if len(node.input) > 1 else None
            axes = [int(a) for a in (axes_c if axes_c is not None else attrs.get("axes", []))]
            if node.op_type == "Squeeze":
                rank = len(shape)
                drop = {a % rank for a in axes} if axes else {i for i, d in enumerate(shape) if d == 1}
                target = [d for i, d in enumerate(shape) if i not in drop]
            else:
                rank = len(shape) + len(axes)
                target = list(shape)
                for axis in sorted(a % rank for a in axes):
                    target.insert(axis, 1)
        self.shapes[node.output[0]] = target
        return target

    def _transpose(self, node: Any) -> None:
        x = self._unflattened(self._value(node, node.input[0]))
        rank = len(x.tensor.shape)
        wanted = [int(p) for p in _attrs(node).get("perm", list(reversed(range(rank))))]
        # onnx_out = onnx_in.transpose(wanted) and tensor = onnx_in.transpose(perm), so
        # onnx_out = tensor.transpose(inverse(perm)[wanted]).
        inverse = list(np.argsort(self._perm(x)))
        relative = [int(inverse[w]) for w in wanted]
        if relative == list(range(rank)):  # e.g. an NCHW->NHWC transpose of a map already held NHWC
            self._set(node, _Value(x.tensor))
            return
        if rank in (3, 4) and relative == [int(i) for i in np.argsort(_channels_last(rank))]:
            self._set(node, _Value(x.tensor, "nhwc"))  # the result, held channels-last: no op at all
            return
        tf = self.tf
        self._set(node, _Value(self._apply(node, lambda t: tf.transpose(t, relative), x.tensor)))

    def _concat(self, node: Any) -> None:
        tensors = [n for n in node.input if n not in self.consts]
        if not tensors:
            raise self._unsupported(node, "needs at least one computed input")
        parts = [self._value(node, name) for name in tensors]
        first = parts[0]
        shared = all(
            (p.layout, len(p.tensor.shape)) == (first.layout, len(first.tensor.shape)) for p in parts
        )
        if not shared or first.layout == "flat_nhwc":
            parts = [_Value(self._as_same(p)) for p in parts]
            first = parts[0]
        rank = len(first.tensor.shape)
        onnx_axis = int(_attrs(node)["axis"]) % rank
        axis = self._axis(first, onnx_axis)
        by_name = dict(zip(tensors, parts, strict=True))
        operands: list[Any] = []
        for name in node.input:
            if name in by_name:
                operands.append(by_name[name].tensor)
            else:
                operands.append(np.transpose(self.consts[name].astype(np.float32), self._perm(first)))
        computed = [o for o in operands if not isinstance(o, np.ndarray)]
        tf = self.tf

        def concat(*args: Any) -> Any:
            supplied = iter(args)
            items = [o if isinstance(o, np.ndarray) else next(supplied) for o in operands]
            return tf.concat(items, axis=axis)

        self._set(node, _Value(self._apply(node, concat, *computed), first.layout))

    def _split(self, node: Any) -> None:
        x = self._unflattened(self._value(node, node.input[0]))
        attrs = _attrs(node)
        shape = self._onnx_shape(x)
        onnx_axis = int(attrs.get("axis", 0)) % len(shape)
        sizes_c = self._const(node, 1) if len(node.input) > 1 else None
        count = len(node.output)
        if sizes_c is not None:
            sizes = [int(s) for s in sizes_c]
        elif "split" in attrs:
            sizes = [int(s) for s in attrs["split"]]
        else:
            step = -(-shape[onnx_axis] // count)
            sizes = [min(step, shape[onnx_axis] - i * step) for i in range(count)]
        axis = self._axis(x, onnx_axis)
        tf = self.tf
        if len(set(sizes)) == 1:
            results = self._apply(node, lambda t: tf.split(t, len(sizes), axis=axis), x.tensor)
        else:  # strided slices, not SPLIT_V (which the Edge TPU lacks)
            bounds = np.cumsum([0, *sizes]).tolist()

            def pieces(t: Any) -> list[Any]:
                rank = len(t.shape)
                return [
                    t[tuple(slice(b, e) if i == axis else slice(None) for i in range(rank))]
                    for b, e in itertools.pairwise(bounds)
                ]

            results = self._apply(node, pieces, x.tensor)
        for output, result in zip(node.output, results, strict=True):
            self._set(node, _Value(result, x.layout), output)

    def _slice(self, node: Any) -> None:
        x = self._unflattened(self._value(node, node.input[0]))
        shape = self._onnx_shape(x)
        if self.opset < 10:
            attrs = _attrs(node)
            starts, ends = list(attrs["starts"]), list(attrs["ends"])
            axes = list(attrs.get("axes", range(len(starts))))
            steps = [1] * len(starts)
        else:
            starts_c, ends_c = self._const(node, 1), self._const(node, 2)
            assert starts_c is not None and ends_c is not None
            starts, ends = [int(s) for s in starts_c], [int(e) for e in ends_c]
            axes_c = self._const(node, 3)
            steps_c = self._const(node, 4)
            axes = [int(a) for a in axes_c] if axes_c is not None else list(range(len(starts)))
            steps = [int(s) for s in steps_c] if steps_c is not None else [1] * len(starts)
        slices = [slice(None)] * len(shape)
        for start, end, axis, step in zip(starts, ends, axes, steps, strict=True):
            size = shape[axis % len(shape)]
            stop: int | None = end
            if step < 0 and end < -size:
                stop = None  # "to the front", written as INT64_MIN by exporters
            elif end > size:
                stop = size
            slices[self._axis(x, axis)] = slice(max(min(start, size), -size), stop, step)
        key = tuple(slices)
        self._set(node, _Value(self._apply(node, lambda t: t[key], x.tensor), x.layout))

    def _gather(self, node: Any) -> None:
        x = self._value(node, node.input[0])
        indices = self._const(node, 1)
        assert indices is not None
        axis_onnx = int(_attrs(node).get("axis", 0))
        if x.layout == "flat_nhwc" or (x.layout == "nhwc" and indices.ndim != 1):
            x = _Value(self._as_same(x))  # the gathered axis disappears or splits: back to ONNX layout
        size = self._onnx_shape(x)[axis_onnx]
        index = np.where(indices < 0, indices + size, indices).astype(np.int32)
        axis = self._axis(x, axis_onnx)
        tf = self.tf
        self._set(
            node, _Value(self._apply(node, lambda t: tf.gather(t, index, axis=axis), x.tensor), x.layout)
        )

    def _pad(self, node: Any) -> None:
        x = self._unflattened(self._value(node, node.input[0]))
        attrs = _attrs(node)
        rank = len(x.tensor.shape)
        if self.opset < 11:
            pads, value = list(attrs["pads"]), float(attrs.get("value", 0.0))
            axes = list(range(rank))
        else:
            pads_c = self._const(node, 1)
            assert pads_c is not None
            pads = [int(p) for p in pads_c]
            value_c = self._const(node, 2) if len(node.input) > 2 else None
            value = 0.0 if value_c is None else float(value_c.reshape(-1)[0])
            axes_c = self._const(node, 3) if len(node.input) > 3 else None
            axes = [int(a) % rank for a in axes_c] if axes_c is not None else list(range(rank))
        if min(pads) < 0:
            raise self._unsupported(node, "negative pads (cropping) are not supported")
        mode = attrs.get("mode", "constant")
        if mode not in ("constant", "reflect"):
            raise self._unsupported(node, f"pad mode '{mode}' is not supported (constant, reflect)")
        paddings = [[0, 0] for _ in range(rank)]
        for i, axis in enumerate(axes):
            paddings[self._axis(x, axis)] = [pads[i], pads[i + len(axes)]]
        tf = self.tf
        tf_mode = mode.upper()
        result = self._apply(
            node, lambda t: tf.pad(t, paddings, mode=tf_mode, constant_values=value), x.tensor
        )
        self._set(node, _Value(result, x.layout))

    def _expand(self, node: Any) -> None:
        x = self._value(node, node.input[0])
        target = self.shapes.get(node.output[0])
        if target is None:
            raise self._unsupported(node, "the expanded shape is not static")
        tensor = self._as_same(x)
        tf = self.tf
        self._set(node, _Value(self._apply(node, lambda t: tf.broadcast_to(t, target), tensor)))

    def _resize(self, node: Any) -> None:
        """Resize/Upsample of a 4-D map: nearest or bilinear, in TFLite's RESIZE_* coordinate modes."""
        x = self._as_channels_last(node, self._value(node, node.input[0]))
        if len(x.tensor.shape) != 4:
            raise self._unsupported(node, "only 2D (NCHW) maps can be resized")
        attrs = _attrs(node)
        shape = self._onnx_shape(x)
        target = self.shapes.get(node.output[0]) or self._resized_shape(node, shape)
        if target[:2] != shape[:2]:
            raise self._unsupported(node, "only the spatial dims may be resized")
        size = [int(target[2]), int(target[3])]
        mode = attrs.get("mode", "nearest")
        default_ctm = "asymmetric" if node.op_type == "Upsample" or self.opset < 11 else "half_pixel"
        ctm = attrs.get("coordinate_transformation_mode", default_ctm)
        if ctm == "pytorch_half_pixel":
            ctm = "half_pixel"  # the same for every output size above 1
        if ctm not in ("asymmetric", "half_pixel", "align_corners"):
            raise self._unsupported(node, f"coordinate_transformation_mode '{ctm}' is not supported")
        align, half = ctm == "align_corners", ctm == "half_pixel"
        image = self.tf.compat.v1.image
        if mode == "nearest":
            nearest = attrs.get("nearest_mode", "round_prefer_floor")
            factors = [o // i if o % i == 0 else 0 for o, i in zip(size, shape[2:], strict=True)]
            # The combinations where TFLite's RESIZE_NEAREST_NEIGHBOR picks the same source pixel as ONNX:
            # asymmetric+floor always; rounding modes only where no position falls on a tie.
            exact = (
                (ctm == "asymmetric" and nearest == "floor")
                or (ctm == "asymmetric" and nearest == "round_prefer_floor" and set(factors) <= {1, 2})
                or (ctm == "half_pixel" and nearest.startswith("round_prefer") and 0 not in factors)
            )
            if not exact:
                raise self._unsupported(
                    node,
                    f"nearest resize with coordinate mode '{ctm}' and nearest_mode '{nearest}' "
                    f"from {shape[2:]} to {size} has no exact TFLite form (supported: asymmetric+floor, or "
                    "integer upscales)",
                )

            def resize(t: Any) -> Any:
                return image.resize_nearest_neighbor(t, size, align_corners=align, half_pixel_centers=half)
        elif mode == "linear":

            def resize(t: Any) -> Any:
                return image.resize_bilinear(t, size, align_corners=align, half_pixel_centers=half)
        else:
            raise self._unsupported(node, f"mode '{mode}' is not supported (nearest, linear)")
        self._set(node, _Value(self._apply(node, resize, x.tensor), "nhwc"))

    def _resized_shape(self, node: Any, shape: list[int]) -> list[int]:
        """The output shape from constant sizes or scales (shape inference cannot always follow them)."""
        scales_at = 1 if node.op_type == "Upsample" or self.opset < 11 else 2
        sizes = self._const(node, 3) if len(node.input) > 3 else None
        if sizes is not None and sizes.size:
            return [int(d) for d in sizes]
        scales = self._const(node, scales_at) if len(node.input) > scales_at else None
        if scales is None or not scales.size:
            scales_attr = _attrs(node).get("scales")
            if scales_attr is None:
                raise self._unsupported(node, "the output size is not static")
            scales = np.asarray(scales_attr)
        return [int(np.floor(d * float(f))) for d, f in zip(shape, scales.reshape(-1), strict=True)]

    def _reduce(self, node: Any) -> None:
        x = self._unflattened(self._value(node, node.input[0]))
        attrs = _attrs(node)
        rank = len(x.tensor.shape)
        axes_c = self._const(node, 1) if len(node.input) > 1 else None
        axes = [int(a) % rank for a in (axes_c if axes_c is not None else attrs.get("axes", []))]
        if not axes:
            if attrs.get("noop_with_empty_axes", 0):
                self._identity(node)
                return
            axes = list(range(rank))
        keep = bool(attrs.get("keepdims", 1))
        mapped = [self._axis(x, a) for a in axes]
        if not keep and x.layout == "nhwc":
            remaining = [p for j, p in enumerate(self._perm(x)) if j not in mapped]
            if remaining != sorted(remaining):  # the result would not be in ONNX order
                x = _Value(self._as_same(x))
                mapped = axes
        layout = x.layout if keep else "same"
        tf = self.tf
        reduce = {
            "ReduceMean": tf.reduce_mean,
            "ReduceSum": tf.reduce_sum,
            "ReduceMax": tf.reduce_max,
            "ReduceMin": tf.reduce_min,
        }[node.op_type]
        result = self._apply(node, lambda t: reduce(t, axis=mapped, keepdims=keep), x.tensor)
        self._set(node, _Value(result, layout))

    def _identity(self, node: Any) -> None:
        self._set(node, self._value(node, node.input[0]))

    def _softmax(self, node: Any) -> None:
        x = self._value(node, node.input[0])
        tf = self.tf
        fn = tf.nn.log_softmax if node.op_type == "LogSoftmax" else tf.nn.softmax
        rank = len(self._onnx_shape(x))
        axis = int(_attrs(node).get("axis", -1 if self.opset >= 13 else 1)) % rank
        shape = self._onnx_shape(x)
        if self.opset < 13 and axis != rank - 1 and int(np.prod(shape[axis + 1 :])) != 1:
            # before opset 13, softmax ran over all axes from `axis` on, as one flattened axis
            tensor = self._as_same(x)
            flat = [int(np.prod(shape[:axis])), int(np.prod(shape[axis:]))]
            result = self._apply(node, lambda t: tf.reshape(fn(tf.reshape(t, flat), axis=-1), shape), tensor)
            self._set(node, _Value(result))
            return
        x = self._unflattened(x)
        mapped = self._axis(x, axis)
        if node.op_type == "Softmax":
            result = self.keras.layers.Softmax(axis=mapped, name=self._name(node))(x.tensor)
        else:
            result = self._apply(node, lambda t: fn(t, axis=mapped), x.tensor)
        self._set(node, _Value(result, x.layout))


def translate_onnx_to_keras(model: Any, fuse_hard_swish: bool = True) -> KerasTranslation:
    """The Keras model (NHWC, batch 1) computing what `model` computes; UnsupportedModelError otherwise.
    fuse_hard_swish=False keeps HardSwish out of TFLite's HARD_SWISH op (for the Edge TPU)."""
    return _Translator(model, fuse_hard_swish).translate()


class OnnxToKeras:
    """Build the Keras twin of the ONNX model and check it against onnxruntime on calibration samples."""

    name = "translate onnx to keras (nhwc)"
    check_samples = 8

    def run(self, ctx: ConversionContext) -> None:
        fuse = "edgetpu" not in ctx.profile.runtime.delegates  # the Edge TPU has no HARD_SWISH
        # Profiles converting the same model share the translation; the Edge TPU's form differs only for
        # a model with HardSwish.
        key = f"keras:{model_key(ctx)}"
        first: KerasTranslation = ctx.shared.once(key, lambda: self.checked_translation(ctx, fuse))
        if first.hard_swish_seen and first.fuse_hard_swish != fuse:
            first = ctx.shared.once(f"{key}:fuse={fuse}", lambda: self.checked_translation(ctx, fuse))
        ctx.keras_model = first

    def checked_translation(self, ctx: ConversionContext, fuse: bool) -> KerasTranslation:
        import onnxruntime as ort

        model = ctx.need(ctx.model, "the source model")
        calib = ctx.need(ctx.calib, "calibration data")
        translation = translate_onnx_to_keras(model, fuse_hard_swish=fuse)
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        input_names = [t.name for t in ctx.need(ctx.model_info, "model description").inputs]
        output_names = [o.name for o in session.get_outputs()]
        # Per output: the largest |keras - onnx| over the check samples, relative to the output's range over
        # all of them (a sample whose output is all near 0, a page without text, has no range of its own).
        deviation = dict.fromkeys(output_names, 0.0)
        extent = dict.fromkeys(output_names, 1e-6)
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
                extent[name] = max(extent[name], float(np.abs(want).max()))
                deviation[name] = max(deviation[name], float(np.abs(have - want).max()))
        worst_name = max(output_names, key=lambda name: deviation[name] / extent[name])
        worst = deviation[worst_name] / extent[worst_name]
        if worst > MAX_RELATIVE_DEVIATION:
            raise ConversionError(
                f"the Keras translation of {ctx.request.model} deviates from onnxruntime on output "
                f"'{worst_name}' by {worst:.2e} of its range; this is a converter bug - please report it "
                "with the model, and choose an ONNX profile (jetson-*) meanwhile"
            )
        return translation
