"""Small, structurally faithful PyTorch versions of deployed architectures (MobileNetV3, EfficientNet-lite,
YOLOv8, DBNet, ViT, audio CRNN/TCN) and access to the corpus make_corpus.py builds from them."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

# The corpus API (re-exported; it lives in the torch-free corpus_data.py).
from edgefleet.reference_models.corpus_data import (  # noqa: F401
    CorpusFiles,
    corpus_data,
    corpus_dir,
    corpus_files,
)

# Each network keeps the operators and graph patterns of its full-size original (what a converter has to
# handle) at a width that keeps its ONNX file small. `corpus_data(name)` generates the calibration and
# evaluation arrays (corpus_data.py, torch-free); `corpus_files(name)` gives the paths of the ONNX model, its
# reference outputs and its data as .npz (written to a cache folder on first access).

# --------------------------------------------------------------------------------------------------------
# Shared pieces


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round a scaled channel count as the MobileNet/EfficientNet reference code does (never down by more
    than 10%), so scaled-down widths keep the originals' channel ratios."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def conv_bn(
    c_in: int, c_out: int, kernel: int, stride: int = 1, groups: int = 1, act: nn.Module | None = None
) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(c_out),
    ]
    if act is not None:
        layers.append(act)
    return nn.Sequential(*layers)


# --------------------------------------------------------------------------------------------------------
# MobileNetV3-Small (Howard et al. 2019, table 2), width 0.5, 10 classes


class SqueezeExcite(nn.Module):
    """MobileNetV3's SE: global pool, 1x1 reduce + ReLU, 1x1 expand + HardSigmoid, channel-wise Mul."""

    def __init__(self, channels: int, squeeze: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = F.adaptive_avg_pool2d(x, 1)
        scale = F.hardsigmoid(self.fc2(F.relu(self.fc1(scale))))
        return x * scale


class InvertedResidual(nn.Module):
    """Expand, depthwise, project (`layers`), with the input added back when shapes allow: the block
    MobileNetV3 and EfficientNet-lite share."""

    def __init__(self, layers: list[nn.Module], c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        return x + y if self.residual else y


class InvertedResidualV3(InvertedResidual):
    def __init__(
        self, c_in: int, kernel: int, expanded: int, c_out: int, use_se: bool, hswish: bool, stride: int
    ) -> None:
        act: Callable[[], nn.Module] = nn.Hardswish if hswish else nn.ReLU
        layers: list[nn.Module] = []
        if expanded != c_in:
            layers.append(conv_bn(c_in, expanded, 1, act=act()))
        layers.append(conv_bn(expanded, expanded, kernel, stride, groups=expanded, act=act()))
        if use_se:
            layers.append(SqueezeExcite(expanded, make_divisible(expanded / 4)))
        layers.append(conv_bn(expanded, c_out, 1))  # linear bottleneck: no activation
        super().__init__(layers, c_in, c_out, stride)


# (kernel, expanded, out, SE, hard-swish, stride) as in the paper's MobileNetV3-Small table.
MOBILENETV3_SMALL_CONFIG = (
    (3, 16, 16, True, False, 2),
    (3, 72, 24, False, False, 2),
    (3, 88, 24, False, False, 1),
    (5, 96, 40, True, True, 2),
    (5, 240, 40, True, True, 1),
    (5, 240, 40, True, True, 1),
    (5, 120, 48, True, True, 1),
    (5, 144, 48, True, True, 1),
    (5, 288, 96, True, True, 2),
    (5, 576, 96, True, True, 1),
    (5, 576, 96, True, True, 1),
)


class MobileNetV3Small(nn.Module):
    def __init__(self, num_classes: int = 10, width: float = 0.5, last_channels: int = 256) -> None:
        super().__init__()
        stem = make_divisible(16 * width)
        layers: list[nn.Module] = [conv_bn(3, stem, 3, 2, act=nn.Hardswish())]
        c_in = stem
        for kernel, expanded, c_out, use_se, hswish, stride in MOBILENETV3_SMALL_CONFIG:
            c_exp, c_next = make_divisible(expanded * width), make_divisible(c_out * width)
            layers.append(InvertedResidualV3(c_in, kernel, c_exp, c_next, use_se, hswish, stride))
            c_in = c_next
        head = make_divisible(576 * width)
        layers.append(conv_bn(c_in, head, 1, act=nn.Hardswish()))
        self.features = nn.Sequential(*layers)
        # The paper's 1024-wide pre-logits layer, narrowed: it holds most of the parameters otherwise.
        self.classifier = nn.Sequential(
            nn.Linear(head, last_channels),
            nn.Hardswish(),
            nn.Dropout(0.2),
            nn.Linear(last_channels, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.adaptive_avg_pool2d(self.features(x), 1).flatten(1)
        return self.classifier(x)


# --------------------------------------------------------------------------------------------------------
# EfficientNet-lite0 (TensorFlow's efficientnet-lite: ReLU6, no squeeze-excite, fixed stem and head)


class MBConvLite(InvertedResidual):
    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, expand: int) -> None:
        hidden = c_in * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(conv_bn(c_in, hidden, 1, act=nn.ReLU6()))
        layers.append(conv_bn(hidden, hidden, kernel, stride, groups=hidden, act=nn.ReLU6()))
        layers.append(conv_bn(hidden, c_out, 1))
        super().__init__(layers, c_in, c_out, stride)


# (expand, kernel, stride, out channels, repeats): EfficientNet-B0's stages, which lite0 keeps.
EFFICIENTNET_B0_STAGES = (
    (1, 3, 1, 16, 1),
    (6, 3, 2, 24, 2),
    (6, 5, 2, 40, 2),
    (6, 3, 2, 80, 3),
    (6, 5, 1, 112, 3),
    (6, 5, 2, 192, 4),
    (6, 3, 1, 320, 1),
)


class EfficientNetLite(nn.Module):
    def __init__(
        self, num_classes: int = 10, width: float = 0.35, depth: float = 0.5, head_channels: int = 320
    ) -> None:
        super().__init__()
        stem = 32  # lite variants keep the stem at 32 channels whatever the width
        layers: list[nn.Module] = [conv_bn(3, stem, 3, 2, act=nn.ReLU6())]
        c_in = stem
        for expand, kernel, stride, c_out, repeats in EFFICIENTNET_B0_STAGES:
            c_next = make_divisible(c_out * width)
            for index in range(max(1, math.ceil(repeats * depth))):
                layers.append(MBConvLite(c_in, c_next, kernel, stride if index == 0 else 1, expand))
                c_in = c_next
        # lite0 fixes the head at 1280; narrowed here to keep the model small, still a 1x1 conv + ReLU6.
        layers.append(conv_bn(c_in, head_channels, 1, act=nn.ReLU6()))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(head_channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(F.adaptive_avg_pool2d(self.features(x), 1).flatten(1))


# --------------------------------------------------------------------------------------------------------
# YOLOv8-style detector (Ultralytics' modules and export-mode Detect head), width 0.125, depth 0.33


class YoloConv(nn.Module):
    """Ultralytics `Conv`: Conv2d without bias, BatchNorm (eps 1e-3, momentum 0.03), SiLU."""

    def __init__(self, c_in: int, c_out: int, kernel: int = 1, stride: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, bias=False)
        self.bn = nn.BatchNorm2d(c_out, eps=1e-3, momentum=0.03)
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class Bottleneck(nn.Module):
    def __init__(self, c_in: int, c_out: int, shortcut: bool) -> None:
        super().__init__()
        self.cv1 = YoloConv(c_in, c_out, 3)
        self.cv2 = YoloConv(c_out, c_out, 3)
        self.add = shortcut and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class C2f(nn.Module):
    """CSP bottleneck with two convolutions, the channel split as Ultralytics' `forward_split` does it: sizes
    given explicitly export as one Split with constant sizes (`chunk` becomes shape-computed Slices)."""

    def __init__(self, c_in: int, c_out: int, n: int = 1, shortcut: bool = False) -> None:
        super().__init__()
        self.c = c_out // 2
        self.cv1 = YoloConv(c_in, 2 * self.c, 1)
        self.cv2 = YoloConv((2 + n) * self.c, c_out, 1)
        self.m = nn.ModuleList(Bottleneck(self.c, self.c, shortcut) for _ in range(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = list(self.cv1(x).split((self.c, self.c), 1))
        y.extend(m(y[-1]) for m in self.m)
        return self.cv2(torch.cat(y, 1))


class SPPF(nn.Module):
    def __init__(self, c_in: int, c_out: int, kernel: int = 5) -> None:
        super().__init__()
        hidden = c_in // 2
        self.cv1 = YoloConv(c_in, hidden, 1)
        self.cv2 = YoloConv(hidden * 4, c_out, 1)
        self.m = nn.MaxPool2d(kernel, 1, kernel // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = [self.cv1(x)]
        y.extend(self.m(y[-1]) for _ in range(3))
        return self.cv2(torch.cat(y, 1))


class DFL(nn.Module):
    """Distribution focal loss integral: Softmax over the 16 bins, then a fixed 1x1 conv weighting 0..15."""

    def __init__(self, bins: int = 16) -> None:
        super().__init__()
        self.bins = bins
        self.conv = nn.Conv2d(bins, 1, 1, bias=False).requires_grad_(False)
        self.conv.weight.data[:] = torch.arange(bins, dtype=torch.float).view(1, bins, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, a = x.shape
        return self.conv(x.view(b, 4, self.bins, a).transpose(2, 1).softmax(1)).view(b, 4, a)


class Detect(nn.Module):
    """YOLOv8's decoupled head as Ultralytics exports it: per level a box branch (4 x 16 DFL bins) and a class
    branch, concatenated over levels to [N, 64 + nc, anchors], decoded to [N, 4 + nc, anchors] (cx, cy, w,
    h in input pixels, then sigmoid class scores)."""

    anchors: torch.Tensor  # registered buffers (typed here: nn.Module's attribute lookup is untyped)
    strides: torch.Tensor

    def __init__(self, nc: int, channels: tuple[int, ...], strides: tuple[int, ...], image_size: int) -> None:
        super().__init__()
        self.nc, self.reg_max = nc, 16
        self.no = nc + 4 * self.reg_max
        c2 = max(16, channels[0] // 4, 4 * self.reg_max)
        c3 = max(channels[0], min(nc, 100))
        self.cv2 = nn.ModuleList(
            nn.Sequential(YoloConv(c, c2, 3), YoloConv(c2, c2, 3), nn.Conv2d(c2, 4 * self.reg_max, 1))
            for c in channels
        )
        self.cv3 = nn.ModuleList(
            nn.Sequential(YoloConv(c, c3, 3), YoloConv(c3, c3, 3), nn.Conv2d(c3, nc, 1)) for c in channels
        )
        self.dfl = DFL(self.reg_max)
        # Anchors for the fixed input size, as in a static-shape Ultralytics export (constants in the graph).
        points, stride_list = [], []
        for stride in strides:
            cells = image_size // stride
            coords = torch.arange(cells, dtype=torch.float) + 0.5
            sy, sx = torch.meshgrid(coords, coords, indexing="ij")
            points.append(torch.stack((sx, sy), -1).view(-1, 2))
            stride_list.append(torch.full((cells * cells, 1), float(stride)))
        self.register_buffer("anchors", torch.cat(points).transpose(0, 1).contiguous(), persistent=False)
        self.register_buffer("strides", torch.cat(stride_list).transpose(0, 1).contiguous(), persistent=False)
        for box_branch, cls_branch, stride in zip(self.cv2, self.cv3, strides, strict=True):
            # Ultralytics' bias_init: box logits start flat, class logits at a ~5-objects-per-image prior.
            box_bias = cast(nn.Conv2d, cast(nn.Sequential, box_branch)[-1]).bias
            cls_bias = cast(nn.Conv2d, cast(nn.Sequential, cls_branch)[-1]).bias
            assert box_bias is not None and cls_bias is not None
            box_bias.data[:] = 1.0
            cls_bias.data[:] = math.log(5 / nc / (image_size / stride) ** 2)

    def raw(self, xs: list[torch.Tensor]) -> torch.Tensor:
        """[N, 64 + nc, anchors]: DFL logits then class logits (what the training loss needs)."""
        maps = [torch.cat((b(x), c(x)), 1) for x, b, c in zip(xs, self.cv2, self.cv3, strict=True)]
        shape = maps[0].shape
        return torch.cat([m.view(shape[0], self.no, -1) for m in maps], 2)

    def forward(self, xs: list[torch.Tensor]) -> torch.Tensor:
        x_cat = self.raw(xs)
        box, cls = x_cat.split((4 * self.reg_max, self.nc), 1)
        distance = self.dfl(box)
        lt, rb = distance.split((2, 2), 1)
        anchors = self.anchors.unsqueeze(0)
        x1y1, x2y2 = anchors - lt, anchors + rb
        dbox = torch.cat(((x1y1 + x2y2) / 2, x2y2 - x1y1), 1) * self.strides
        return torch.cat((dbox, cls.sigmoid()), 1)


class YoloStyleDetector(nn.Module):
    """yolov8.yaml's backbone and PAN neck (layers 0-21): n-scale depth, 1/8 width, P5 capped at 80."""

    STRIDES = (8, 16, 32)
    MAX_CHANNELS = 80

    def __init__(self, nc: int = 3, image_size: int = 160) -> None:
        super().__init__()
        # 64, 128, 256, 512, 1024 x 0.125, the last capped as Ultralytics caps each scale (max_channels)
        c = (8, 16, 32, 64, min(128, self.MAX_CHANNELS))
        self.b0, self.b1 = YoloConv(3, c[0], 3, 2), YoloConv(c[0], c[1], 3, 2)
        self.b2 = C2f(c[1], c[1], 1, True)
        self.b3, self.b4 = YoloConv(c[1], c[2], 3, 2), C2f(c[2], c[2], 2, True)
        self.b5, self.b6 = YoloConv(c[2], c[3], 3, 2), C2f(c[3], c[3], 2, True)
        self.b7, self.b8 = YoloConv(c[3], c[4], 3, 2), C2f(c[4], c[4], 1, True)
        self.b9 = SPPF(c[4], c[4], 5)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.h12 = C2f(c[4] + c[3], c[3], 1)
        self.h15 = C2f(c[3] + c[2], c[2], 1)
        self.h16, self.h18 = YoloConv(c[2], c[2], 3, 2), C2f(c[2] + c[3], c[3], 1)
        self.h19, self.h21 = YoloConv(c[3], c[3], 3, 2), C2f(c[3] + c[4], c[4], 1)
        self.detect = Detect(nc, (c[2], c[3], c[4]), self.STRIDES, image_size)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        p3 = self.b4(self.b3(self.b2(self.b1(self.b0(x)))))
        p4 = self.b6(self.b5(p3))
        p5 = self.b9(self.b8(self.b7(p4)))
        n4 = self.h12(torch.cat((self.up(p5), p4), 1))
        n3 = self.h15(torch.cat((self.up(n4), p3), 1))
        n4 = self.h18(torch.cat((self.h16(n3), n4), 1))
        n5 = self.h21(torch.cat((self.h19(n4), p5), 1))
        return [n3, n4, n5]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.detect(self.features(x))


# --------------------------------------------------------------------------------------------------------
# DBNet-style segmenter (Liao et al. 2020): ResNet-like backbone, FPN, ConvTranspose probability head


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = conv_bn(c_in, c_out, 3, stride, act=nn.ReLU())
        self.conv2 = conv_bn(c_out, c_out, 3)
        self.down = None if stride == 1 and c_in == c_out else conv_bn(c_in, c_out, 1, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.down is None else self.down(x)
        return F.relu(self.conv2(self.conv1(x)) + identity)


class DBNetSeg(nn.Module):
    def __init__(self, channels: tuple[int, ...] = (16, 24, 48, 64), inner: int = 48) -> None:
        super().__init__()
        self.stem = nn.Sequential(conv_bn(3, 16, 3, 2, act=nn.ReLU()), conv_bn(16, 16, 3, 1, act=nn.ReLU()))
        stages, c_in = [], 16
        for index, c_out in enumerate(channels):  # strides 4, 8, 16, 32 as ResNet's C2..C5
            stages.append(nn.Sequential(BasicBlock(c_in, c_out, 2), BasicBlock(c_out, c_out, 1)))
            c_in = c_out
            del index
        self.stages = nn.ModuleList(stages)
        self.lateral = nn.ModuleList(nn.Conv2d(c, inner, 1, bias=False) for c in channels)
        self.smooth = nn.ModuleList(nn.Conv2d(inner, inner // 4, 3, padding=1, bias=False) for _ in channels)
        quarter = inner // 4
        self.head = nn.Sequential(
            conv_bn(inner, quarter, 3, act=nn.ReLU()),
            nn.ConvTranspose2d(quarter, quarter, 2, 2),
            nn.BatchNorm2d(quarter),
            nn.ReLU(),
            nn.ConvTranspose2d(quarter, 1, 2, 2),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats, y = [], self.stem(x)
        for stage in self.stages:
            y = stage(y)
            feats.append(y)
        laterals = [conv(f) for conv, f in zip(self.lateral, feats, strict=True)]
        for level in range(len(laterals) - 1, 0, -1):  # top-down pathway
            laterals[level - 1] = laterals[level - 1] + F.interpolate(
                laterals[level], scale_factor=2.0, mode="bilinear", align_corners=False
            )
        outs = [
            F.interpolate(conv(lat), scale_factor=float(2**level), mode="bilinear", align_corners=False)
            if level
            else conv(lat)
            for level, (conv, lat) in enumerate(zip(self.smooth, laterals, strict=True))
        ]
        return torch.sigmoid(self.head(torch.cat(outs, 1)))


# --------------------------------------------------------------------------------------------------------
# Tiny ViT (Dosovitskiy et al. 2021; timm's VisionTransformer layout): patch 8, dim 96, depth 4, 3 heads


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads, self.scale = heads, (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        attn = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)  # MatMul of two activations
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


class TransformerBlock(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim, eps=1e-6), Attention(dim, heads)
        hidden = int(dim * mlp_ratio)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))  # GELU -> Erf

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TinyViT(nn.Module):
    def __init__(
        self,
        num_classes: int = 10,
        image_size: int = 96,
        patch: int = 8,
        dim: int = 96,
        depth: int = 4,
        heads: int = 3,
        mlp_ratio: float = 2.0,
    ) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(3, dim, patch, patch)
        tokens = (image_size // patch) ** 2
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, tokens + 1, dim) * 0.02)
        self.blocks = nn.Sequential(*(TransformerBlock(dim, heads, mlp_ratio) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), 1) + self.pos_embed
        x = self.norm(self.blocks(x))
        return self.head(x[:, 0])


# --------------------------------------------------------------------------------------------------------
# Audio: frame-wise sound-event detection on log-mel [N, 40 mels, 100 frames] -> [N, 50 frames, 3 events]


def audio_frontend(n_mels: int, channels: int) -> nn.Sequential:
    """Both audio models' 1-D conv front end over [batch, mels, frames]: conv, then a stride-2 conv."""
    return nn.Sequential(
        nn.Conv1d(n_mels, channels, 3, padding=1, bias=False),
        nn.BatchNorm1d(channels),
        nn.ReLU(),
        nn.Conv1d(channels, channels, 3, stride=2, padding=1, bias=False),
        nn.BatchNorm1d(channels),
        nn.ReLU(),
    )


class AudioGRU(nn.Module):
    """CRNN as in sound-event detection baselines: 1-D conv front end (one stride-2 layer), a GRU, and a
    per-frame sigmoid classifier."""

    def __init__(self, n_mels: int = 40, channels: int = 64, hidden: int = 64, events: int = 3) -> None:
        super().__init__()
        self.frontend = audio_frontend(n_mels, channels)
        self.gru = nn.GRU(channels, hidden, batch_first=True)
        self.classifier = nn.Linear(hidden, events)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, _ = self.gru(self.frontend(x).transpose(1, 2))
        return torch.sigmoid(self.classifier(y))


class TemporalBlock(nn.Module):
    def __init__(self, channels: int, dilation: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv1d(channels, channels, 3, padding=dilation, dilation=dilation, bias=False),
            nn.BatchNorm1d(channels),
            nn.ReLU(),
            nn.Conv1d(channels, channels, 1, bias=False),
            nn.BatchNorm1d(channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.conv(x))


class AudioConv1d(nn.Module):
    """The same task with 1-D convolutions only (a TCN: dilated residual blocks instead of the GRU), for
    targets whose converters have no recurrent ops."""

    def __init__(self, n_mels: int = 40, channels: int = 64, events: int = 3) -> None:
        super().__init__()
        self.frontend = audio_frontend(n_mels, channels)
        self.blocks = nn.Sequential(*(TemporalBlock(channels, d) for d in (1, 2, 4, 8)))
        self.classifier = nn.Conv1d(channels, events, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.classifier(self.blocks(self.frontend(x)))).transpose(1, 2)


# --------------------------------------------------------------------------------------------------------
# The corpus


@dataclass(frozen=True)
class Architecture:
    name: str
    build: Callable[[], nn.Module]
    input_name: str
    input_shape: tuple[int, ...]  # one sample, batch axis first (dynamic in the ONNX export)
    output_name: str
    task: str  # classification | detection | segmentation | frame-events
    preprocessing: str


IMAGE_CLASSES = 10  # scikit-image sample photos, one class per photo (corpus_data.CLASS_PHOTOS)
DETECTION_CLASSES = ("rectangle", "ellipse", "triangle")
AUDIO_EVENTS = ("voice", "whistle", "knock")

ARCHITECTURES: dict[str, Architecture] = {
    arch.name: arch
    for arch in (
        Architecture(
            "mobilenetv3_small",
            MobileNetV3Small,
            "image",
            (1, 3, 128, 128),
            "logits",
            "classification",
            "RGB in [0, 1], ImageNet mean/std",
        ),
        Architecture(
            "efficientnet_lite0",
            EfficientNetLite,
            "image",
            (1, 3, 128, 128),
            "logits",
            "classification",
            "RGB in [0, 1], mean 0.5, std 0.5 (efficientnet-lite's (x - 127) / 128)",
        ),
        Architecture(
            "yolo_style_det",
            lambda: YoloStyleDetector(nc=len(DETECTION_CLASSES), image_size=160),
            "images",
            (1, 3, 160, 160),
            "output0",
            "detection",
            "RGB in [0, 1] (Ultralytics' /255, no mean/std); output [N, 4 + 3, 525]: cx, cy, w, h, scores",
        ),
        Architecture(
            "dbnet_seg",
            DBNetSeg,
            "image",
            (1, 3, 128, 128),
            "prob_map",
            "segmentation",
            "RGB in [0, 1], ImageNet mean/std; output [N, 1, 128, 128] edge probability",
        ),
        Architecture(
            "tiny_vit",
            TinyViT,
            "pixel_values",
            (1, 3, 96, 96),
            "logits",
            "classification",
            "RGB in [0, 1], mean 0.5, std 0.5 (timm's ViT default)",
        ),
        Architecture(
            "audio_gru",
            AudioGRU,
            "log_mel",
            (1, 40, 100),
            "event_probs",
            "frame-events",
            "16 kHz, 25 ms window, 10 ms hop, 40 mel bands, (log(mel + 1e-6) + 2) / 2.5; output [N, 50, 3]",
        ),
        Architecture(
            "audio_conv1d",
            AudioConv1d,
            "log_mel",
            (1, 40, 100),
            "event_probs",
            "frame-events",
            "16 kHz, 25 ms window, 10 ms hop, 40 mel bands, (log(mel + 1e-6) + 2) / 2.5; output [N, 50, 3]",
        ),
    )
}


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
