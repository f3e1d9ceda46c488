"""The ONNX -> Keras translation of the ops real exported graphs use (HardSwish, squeeze-excite, YOLO heads,
attention, LayerNorm, upsampling, 1-D convolutions), each graph exported by torch and checked against
onnxruntime; and how many TRANSPOSE ops the NHWC layout costs."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from edgefleet.converter.errors import ConversionError, UnsupportedModelError
from edgefleet.converter.steps.onnx_to_keras import keras_input_order, translate_onnx_to_keras

# whole conversions or training runs: the full suite runs them, the fast lane (-m "not slow") does not
pytestmark = pytest.mark.slow

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional


def _export(module: Any, shape: tuple[int, ...], opset: int = 17) -> onnx.ModelProto:
    torch.manual_seed(0)
    module.eval()
    buffer = io.BytesIO()
    torch.onnx.export(
        module,
        (torch.randn(*shape),),
        buffer,
        input_names=["x"],
        output_names=[f"y{i}" for i in range(_outputs(module, shape))],
        opset_version=opset,
        dynamo=False,
        dynamic_axes={"x": {0: "batch"}},
    )
    return onnx.load_from_string(buffer.getvalue())


def _outputs(module: Any, shape: tuple[int, ...]) -> int:
    with torch.no_grad():
        out = module(torch.randn(*shape))
    return len(out) if isinstance(out, tuple) else 1


def _check(model: onnx.ModelProto, shape: tuple[int, ...], tolerance: float = 1e-4, **options: Any) -> Any:
    """Translate, run both on the same random input, compare every output; the translation is returned."""
    x = np.random.default_rng(1).normal(0, 1, shape).astype(np.float32)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    expected = session.run(None, {"x": x})
    translation = translate_onnx_to_keras(model, **options)
    perm = translation.input_perms["x"]
    got = translation.model([x if perm is None else np.transpose(x, perm)], training=False)
    got = got if isinstance(got, list | tuple) else [got]
    for output, want, have in zip(session.get_outputs(), expected, got, strict=True):
        have = np.asarray(have)
        out_perm = translation.output_perms[output.name]
        if out_perm is not None:
            have = np.transpose(have, np.argsort(out_perm))
        scale = max(float(np.abs(want).max()), 1e-6)
        assert have.shape == want.shape, output.name
        assert float(np.abs(have - want).max()) / scale < tolerance, output.name
    return translation


def _ops(translation: Any) -> list[str]:
    """The TFLite ops the Keras twin becomes (float conversion; the int8 one has the same graph)."""
    import tensorflow as tf
    from ai_edge_litert.interpreter import Interpreter

    flatbuffer = tf.lite.TFLiteConverter.from_keras_model(translation.model).convert()
    return [op["op_name"] for op in Interpreter(model_content=flatbuffer)._get_ops_details()]


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(channels, channels // 4, 1)
        self.expand = nn.Conv2d(channels // 4, channels, 1)

    def forward(self, x: Any) -> Any:
        scale = F.adaptive_avg_pool2d(x, 1)
        return x * F.hardsigmoid(self.expand(F.relu(self.reduce(scale))))


class MobileNetV3Block(nn.Module):
    """Stem, depthwise with HardSwish, squeeze-excite, residual, classifier: MobileNetV3's pieces."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.Hardswish())
        self.dw = nn.Sequential(nn.Conv2d(16, 16, 3, 1, 1, groups=16), nn.BatchNorm2d(16), nn.Hardswish())
        self.se = SqueezeExcite(16)
        self.project = nn.Sequential(nn.Conv2d(16, 16, 1), nn.BatchNorm2d(16))
        self.head = nn.Sequential(nn.Linear(16, 32), nn.Hardswish(), nn.Linear(32, 5))

    def forward(self, x: Any) -> Any:
        x = self.stem(x)
        x = x + self.project(self.se(self.dw(x)))
        return self.head(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class YoloHead(nn.Module):
    """C2f-style Split, nearest upsampling, Concat, and YOLOv8's DFL box head: Reshape, Transpose, Softmax
    over the bins, a 1x1 conv of bin indices, Sigmoid scores, one [1, 4+classes, anchors] output."""

    def __init__(self, classes: int = 3, bins: int = 4) -> None:
        super().__init__()
        self.bins = bins
        self.c1 = nn.Conv2d(3, 8, 3, 2, 1)
        self.c2 = nn.Conv2d(8, 8, 3, 2, 1)
        self.fuse = nn.Conv2d(12, 8, 1)
        self.box = nn.Conv2d(8, 4 * bins, 1)
        self.cls = nn.Conv2d(8, classes, 1)
        self.dfl = nn.Conv2d(bins, 1, 1, bias=False)
        self.dfl.weight.data[:] = torch.arange(bins, dtype=torch.float32).view(1, bins, 1, 1)
        self.pool = nn.MaxPool2d(5, 1, 2)

    def forward(self, x: Any) -> Any:
        p3 = F.silu(self.c1(x))
        a, b = p3.split(4, 1)
        p4 = self.pool(F.silu(self.c2(p3)))
        up = F.interpolate(p4, scale_factor=2.0, mode="nearest")
        feat = F.silu(self.fuse(torch.cat([a, b * 0.5, up[:, :4]], 1)))
        n, _, h, w = feat.shape
        box = self.box(feat).view(n, 4, self.bins, h * w).transpose(2, 1).softmax(1)
        box = self.dfl(box).view(n, 4, h * w)
        return torch.cat([box, self.cls(feat).view(n, -1, h * w).sigmoid()], 1)


class Attention(nn.Module):
    """Patch embedding, LayerNorm, multi-head attention (MatMul of two tensors, Softmax), GELU MLP."""

    def __init__(self, dim: int = 16, heads: int = 2) -> None:
        super().__init__()
        self.heads = heads
        self.embed = nn.Conv2d(3, dim, 4, 4)
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 32), nn.GELU(), nn.Linear(32, dim))
        self.cls = nn.Linear(dim, 4)

    def forward(self, x: Any) -> Any:
        x = self.embed(x).flatten(2).transpose(1, 2)
        n, t, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).reshape(n, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        weights = (q @ k.transpose(-2, -1) * (d // self.heads) ** -0.5).softmax(-1)
        x = x + self.proj((weights @ v).transpose(1, 2).reshape(n, t, d))
        x = x + self.mlp(self.norm2(x))
        return self.cls(x.mean(1))


class Segmenter(nn.Module):
    """Down, bilinear upsampling (half-pixel), ConvTranspose, PReLU, Pad, Slice: a DBNet/U-Net-style head."""

    def __init__(self) -> None:
        super().__init__()
        self.down = nn.Conv2d(3, 8, 3, 2, 1)
        self.act = nn.PReLU(8)
        self.deep = nn.Conv2d(8, 8, 3, 2, 1)
        self.up = nn.ConvTranspose2d(8, 4, 3, 1, 1)
        self.head = nn.ConvTranspose2d(12, 1, 4, 2, 1)

    def forward(self, x: Any) -> Any:
        d = self.act(self.down(x))
        deep = F.interpolate(self.deep(d), scale_factor=2.0, mode="bilinear", align_corners=False)
        u = self.up(F.relu(deep))
        merged = torch.cat([d, F.pad(u, (1, 1, 1, 1))[:, :, 1:-1, 1:-1]], 1)
        return torch.sigmoid(self.head(merged))


class AudioConv(nn.Module):
    """1-D convolutions over [batch, mels, frames] (strided, dilated, depthwise), pooling, a frame head."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv1d(8, 16, 5, 2, 2)
        self.c2 = nn.Conv1d(16, 16, 3, 1, 2, dilation=2, groups=16)
        self.pool = nn.MaxPool1d(2)
        self.out = nn.Conv1d(16, 2, 1)

    def forward(self, x: Any) -> Any:
        x = self.pool(F.relu(self.c2(F.relu(self.c1(x)))))
        return self.out(x).softmax(1)


def test_mobilenetv3_block_translates_with_hardswish_and_squeeze_excite() -> None:
    translation = _check(_export(MobileNetV3Block(), (1, 3, 32, 32)), (1, 3, 32, 32))
    ops = _ops(translation)
    assert "HARD_SWISH" in ops and "TRANSPOSE" not in ops


def test_hard_swish_stays_out_of_the_hard_swish_op_for_the_edge_tpu() -> None:
    model = _export(MobileNetV3Block(), (1, 3, 32, 32))
    ops = _ops(_check(model, (1, 3, 32, 32), fuse_hard_swish=False))
    assert "HARD_SWISH" not in ops and "MUL" in ops


def test_yolo_head_translates_split_resize_dfl_and_decode() -> None:
    translation = _check(_export(YoloHead(), (1, 3, 32, 32)), (1, 3, 32, 32))
    ops = _ops(translation)
    assert {"RESIZE_NEAREST_NEIGHBOR", "SOFTMAX", "CONCATENATION"} <= set(ops)
    assert ops.count("TRANSPOSE") <= 4  # the head's reshapes of NHWC maps, not one per op


def test_attention_block_translates_layernorm_matmul_and_gelu() -> None:
    translation = _check(_export(Attention(), (1, 3, 16, 16)), (1, 3, 16, 16))
    ops = _ops(translation)
    assert "GELU" in ops and "BATCH_MATMUL" in ops  # torch's Erf-form GELU became TFLite's builtin


def test_segmenter_translates_resize_conv_transpose_prelu_pad_and_slice() -> None:
    translation = _check(_export(Segmenter(), (1, 3, 32, 32)), (1, 3, 32, 32))
    assert translation.output_perms["y0"] == [0, 2, 3, 1]  # the mask stays NHWC: no transpose at the end
    assert {"TRANSPOSE_CONV", "RESIZE_BILINEAR", "PRELU"} <= set(_ops(translation))


def test_one_d_convolutions_translate() -> None:
    translation = _check(_export(AudioConv(), (1, 8, 64)), (1, 8, 64))
    convs = [layer for layer in translation.model.layers if hasattr(layer, "dilation_rate")]
    assert convs and all(len(set(layer.dilation_rate)) == 1 for layer in convs)  # Edge TPU: same in x, y
    assert any(layer.dilation_rate == (2, 2) for layer in convs)


def test_opset_11_export_of_the_yolo_head() -> None:
    _check(_export(YoloHead(), (1, 3, 32, 32), opset=11), (1, 3, 32, 32))


def test_an_op_without_a_translation_names_node_and_what_to_do() -> None:
    class Cumulative(nn.Module):
        def forward(self, x: Any) -> Any:
            return torch.cumsum(x, 1)

    with pytest.raises(UnsupportedModelError, match=r"\(CumSum\): op type is not supported; .*ONNX profile"):
        translate_onnx_to_keras(_export(Cumulative(), (1, 3, 4, 4)))


def test_resize_whose_scales_come_from_a_constant_node() -> None:
    """nn.Upsample exports its scales as a Constant node, which onnx shape inference does not follow."""
    from onnx import TensorProto, helper

    scales = helper.make_node(
        "Constant", [], ["scales"], value=helper.make_tensor("s", TensorProto.FLOAT, [4], [1, 1, 2, 2])
    )
    resize = helper.make_node("Resize", ["x", "", "scales"], ["y"], mode="nearest")
    graph = helper.make_graph(
        [scales, resize],
        "resize",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    _check(model, (1, 2, 4, 4))


def _graph(nodes: list[Any], shape: list[Any], inits: list[Any] = (), opset: int = 13) -> onnx.ModelProto:
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        list(inits),
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def test_a_nearest_resize_tflite_cannot_reproduce_is_refused_up_front() -> None:
    from onnx import helper, numpy_helper

    scales = numpy_helper.from_array(np.array([1, 1, 3, 3], np.float32), "scales")
    resize = helper.make_node(  # x3 with round_prefer_floor: ONNX rounds 2/3 up, TFLite floors it
        "Resize", ["x", "", "scales"], ["y"], mode="nearest", coordinate_transformation_mode="asymmetric"
    )
    with pytest.raises(UnsupportedModelError, match="no exact TFLite form"):
        translate_onnx_to_keras(_graph([resize], [1, 2, 4, 4], [scales]))
    floor = helper.make_node("Resize", ["x", "", "scales"], ["y"], mode="nearest", nearest_mode="floor")
    floor.attribute.append(helper.make_attribute("coordinate_transformation_mode", "asymmetric"))
    _check(_graph([floor], [1, 2, 4, 4], [scales]), (1, 2, 4, 4))


def test_an_add_broadcast_over_rows_is_not_fused_as_a_matmul_bias() -> None:
    from onnx import helper, numpy_helper

    weight = numpy_helper.from_array(np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32), "w")
    rows = numpy_helper.from_array(np.arange(4, dtype=np.float32).reshape(4, 1), "rows")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Add", ["m", "rows"], ["y"])]
    _check(_graph(nodes, [1, 4, 5], [weight, rows]), (1, 4, 5))


def test_an_if_on_a_constant_inlines_a_branch_with_padded_pooling() -> None:
    from onnx import TensorProto, helper, numpy_helper

    pool = helper.make_node("MaxPool", ["x"], ["p"], kernel_shape=[3, 3], pads=[0, 0, 2, 2])
    then = helper.make_graph(
        [pool], "then", [], [helper.make_tensor_value_info("p", TensorProto.FLOAT, None)]
    )
    other = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["r"])],
        "else",
        [],
        [helper.make_tensor_value_info("r", TensorProto.FLOAT, None)],
    )
    condition = numpy_helper.from_array(np.array(True), "cond")
    branch = helper.make_node("If", ["cond"], ["y"], then_branch=then, else_branch=other)
    _check(_graph([branch], [1, 2, 6, 6], [condition]), (1, 2, 6, 6))


class Recurrent(nn.Module):
    """A frame encoder, then a recurrent layer over the frames as torch exports it ([frames, batch, ...])."""

    def __init__(self, kind: str, bidirectional: bool) -> None:
        super().__init__()
        self.conv = nn.Conv1d(8, 12, 3, 1, 1)
        cell = nn.GRU if kind == "GRU" else nn.LSTM
        self.rnn = cell(12, 16, batch_first=True, bidirectional=bidirectional)
        self.head = nn.Linear(32 if bidirectional else 16, 3)

    def forward(self, x: Any) -> Any:
        frames = F.relu(self.conv(x)).transpose(1, 2)
        return torch.sigmoid(self.head(self.rnn(frames)[0]))


@pytest.mark.parametrize(
    ("kind", "bidirectional"), [("GRU", False), ("GRU", True), ("LSTM", False), ("LSTM", True)]
)
def test_recurrent_layers_unroll_into_ops_int8_and_the_edge_tpu_take(kind: str, bidirectional: bool) -> None:
    translation = _check(_export(Recurrent(kind, bidirectional), (1, 8, 10)), (1, 8, 10))
    ops = set(_ops(translation))
    assert {"FULLY_CONNECTED", "LOGISTIC", "TANH", "CONV_2D"} <= ops
    assert not {op for op in ops if "SEQUENCE" in op or op == "WHILE"}  # no fused or looping sequence op


def test_tflite_inputs_are_matched_to_the_source_inputs_by_name_not_position() -> None:
    # the TFLite converter sorts inputs by name: 'c', 'h', 'input' for a model declaring input, h, c
    assert keras_input_order(["c", "h", "input"], ["input", "h", "c"]) == [2, 1, 0]
    assert keras_input_order(["serving_default_x_1:0"], ["x.1"]) == [0]
    with pytest.raises(ConversionError, match="not named after"):
        keras_input_order(["a", "b"], ["a", "c"])
