"""Small PyTorch graphs with the structures real models have and hand-made test CNNs lack, exported to ONNX
for the INT8/FP16 precision tests: a YOLOv8-style detector head, a transformer block with LayerNorm written
op by op, and nets whose BatchNorm variance or activations exceed float16's range."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from target_graphs import checked_model

SEED = 0


def export(module: Any, example: Any, path: Path, opset: int = 17) -> Path:
    """`module` exported with the converter's settings (dynamo=False, input 'x', output 'output', dynamic
    batch)."""
    import torch

    buffer = io.BytesIO()
    torch.onnx.export(
        module.eval(),
        (example,),
        buffer,
        input_names=["x"],
        output_names=["output"],
        dynamic_axes={"x": {0: "batch"}, "output": {0: "batch"}},
        opset_version=opset,
        dynamo=False,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buffer.getvalue())
    return path


def yolo_head(classes: int = 3, reg_max: int = 16) -> Any:
    """Conv backbone, a Resize + Concat neck, and YOLOv8's decode: DFL Softmax over `reg_max` bins, a fixed
    1x1 conv, anchors and stride, boxes (pixels) and Sigmoid scores concatenated into [N, 4+classes, 64]."""
    import torch
    from torch import nn

    torch.manual_seed(SEED)

    def conv(cin: int, cout: int, stride: int) -> nn.Module:
        return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.SiLU())

    class Detector(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c1, self.c2, self.c3 = conv(3, 16, 2), conv(16, 32, 2), conv(32, 32, 2)
            self.up = nn.Upsample(scale_factor=2, mode="nearest")
            self.neck = conv(64, 32, 1)
            self.box = nn.Conv2d(32, 4 * reg_max, 1)
            self.cls = nn.Conv2d(32, classes, 1)
            self.dfl = nn.Conv2d(reg_max, 1, 1, bias=False).requires_grad_(False)
            self.dfl.weight.data[:] = torch.arange(reg_max, dtype=torch.float32).view(1, reg_max, 1, 1)
            ys, xs = torch.meshgrid(torch.arange(8.0), torch.arange(8.0), indexing="ij")
            self.register_buffer("anchors", torch.stack([xs.flatten(), ys.flatten()]) + 0.5)  # [2, 64]
            self.stride = 4.0

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            p2 = self.c2(self.c1(x))
            features = self.neck(torch.cat([self.up(self.c3(p2)), p2], 1))
            batch = x.shape[0]
            box = self.box(features).view(batch, 4, reg_max, 64).transpose(2, 1).softmax(1)
            dist = self.dfl(box).view(batch, 4, 64)
            left_top, right_bottom = dist.chunk(2, 1)
            top_left, bottom_right = self.anchors - left_top, self.anchors + right_bottom
            boxes = torch.cat([(top_left + bottom_right) / 2, bottom_right - top_left], 1) * self.stride
            scores = self.cls(features).view(batch, classes, 64).sigmoid()
            return torch.cat([boxes, scores], 1)

    return Detector().eval()


def layernorm_block(dim: int = 32, classes: int = 10) -> Any:
    """Linear -> LayerNorm written op by op (ReduceMean, Sub, Pow, ReduceMean, Add eps, Sqrt, Div, Mul, Add)
    -> GELU -> Linear + residual -> LayerNorm -> Linear, over [N, 16 tokens, dim]."""
    import torch
    from torch import nn

    torch.manual_seed(SEED)

    class OpByOpLayerNorm(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = nn.Parameter(1 + 0.1 * torch.randn(dim))
            self.bias = nn.Parameter(0.1 * torch.randn(dim))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            mean = x.mean(-1, keepdim=True)
            variance = (x - mean).pow(2).mean(-1, keepdim=True)
            return self.weight * ((x - mean) / torch.sqrt(variance + 1e-5)) + self.bias

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inp, self.norm1, self.norm2 = nn.Linear(dim, dim), OpByOpLayerNorm(), OpByOpLayerNorm()
            self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
            self.out = nn.Linear(dim, classes)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.inp(x)
            h = h + self.mlp(self.norm1(h))
            return self.out(self.norm2(h))

    return Block().eval()


def token_data(samples: int, dim: int = 32) -> np.ndarray:
    """Tokens whose scale varies over two decades, as activations entering a LayerNorm do."""
    rng = np.random.default_rng(SEED)
    scale = 10 ** rng.uniform(-1, 1, (samples, 16, 1))
    return (rng.normal(0, 1, (samples, 16, dim)) * scale).astype(np.float32)


def bn_overflow(variance: float = 1e8) -> onnx.ModelProto:
    """Conv -> BatchNormalization with running variance `variance` (the conv's output is as large as its
    square root: past 65504) -> ReLU -> Conv -> ReLU -> pool -> Gemm, as Paddle exports it (BatchNorm kept
    as a node; torch's exporter would fold it)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(SEED)

    def const(name: str, array: np.ndarray) -> onnx.TensorProto:
        return numpy_helper.from_array(np.asarray(array, np.float32), name)

    std = variance**0.5
    inits = [
        const("c1.w", rng.normal(0, 0.3, (8, 3, 3, 3)) * std),
        const("c1.b", rng.normal(0, 0.1, 8) * std),
        const("bn.scale", 1 + 0.2 * rng.normal(size=8)),
        const("bn.bias", 0.2 * rng.normal(size=8)),
        const("bn.mean", np.zeros(8)),
        const("bn.var", np.full(8, variance)),
        const("c2.w", rng.normal(0, 0.3, (8, 8, 3, 3))),
        const("c2.b", np.zeros(8)),
        const("fc.w", rng.normal(0, 0.5, (10, 8))),
        const("fc.b", np.zeros(10)),
    ]
    conv = {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}
    nodes = [
        helper.make_node("Conv", ["x", "c1.w", "c1.b"], ["c1"], name="/c1/Conv", **conv),
        helper.make_node(
            "BatchNormalization",
            ["c1", "bn.scale", "bn.bias", "bn.mean", "bn.var"],
            ["bn"],
            name="/bn/BatchNormalization",
        ),
        helper.make_node("Relu", ["bn"], ["r1"], name="/r1/Relu"),
        helper.make_node("Conv", ["r1", "c2.w", "c2.b"], ["c2"], name="/c2/Conv", **conv),
        helper.make_node("Relu", ["c2"], ["r2"], name="/r2/Relu"),
        helper.make_node("GlobalAveragePool", ["r2"], ["pool"], name="/pool/GlobalAveragePool"),
        helper.make_node("Flatten", ["pool"], ["flat"], name="/flatten/Flatten"),
        helper.make_node("Gemm", ["flat", "fc.w", "fc.b"], ["output"], name="/fc/Gemm", transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "bn-overflow",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 16, 16])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 10])],
        inits,
    )
    return checked_model(graph, 17)


def activation_overflow(gain: float = 1e5) -> Any:
    """Conv whose output reaches `gain` (ReLU) followed by a Conv scaled back by 1/gain: the function is
    ordinary, the intermediate tensor is beyond float16's 65504 and no folding removes it."""
    import torch
    from torch import nn

    torch.manual_seed(SEED)
    first, second = nn.Conv2d(3, 8, 3, 1, 1), nn.Conv2d(8, 8, 3, 1, 1)
    first.weight.data *= gain
    first.bias.data *= gain
    second.weight.data /= gain
    return nn.Sequential(
        first, nn.ReLU(), second, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10)
    ).eval()


def image_data(samples: int, size: int = 32) -> np.ndarray:
    return np.random.default_rng(SEED).random((samples, 3, size, size), dtype=np.float32)


def save_sets(directory: Path, calib: np.ndarray, evaluation: np.ndarray) -> tuple[Path, Path]:
    """calib.npz and eval.npz (input 'x', no labels: scored against fp32) in `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    np.savez(directory / "calib.npz", x=calib)
    np.savez(directory / "eval.npz", x=evaluation)
    return directory / "calib.npz", directory / "eval.npz"
