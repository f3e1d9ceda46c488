"""The MobileNetV2-style reference model: sklearn's 8x8 digits upscaled to 96x96x3, trained with PyTorch and
exported to ONNX at 96x96 (accuracy: 99.72% on the held-out digits) and, with the same weights, at 224x224
for latency and conversion-time measurements only (trained at 96x96, it scores ~27% on 224x224 digits).

Inverted residual blocks (1x1 expand, 3x3 depthwise, 1x1 linear projection), ReLU6, residual Adds, global
average pooling and a linear classifier, with a small width so it trains in minutes on two CPU cores.
The 96x96 calibration/evaluation arrays are not committed: `upscaled_digits_sets` makes them from the shipped
8x8 calib.npz/eval.npz, deterministically, with `upscale_digits` (numpy only, no torch needed).

    python -m edgefleet.reference_models.mobilenet_digits # needs the `train` extra (torch, scikit-learn)
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
SEED = 0
INPUT_NAME = "image"
OUTPUT_NAME = "logits"
TRAIN_SIZE = 96
LATENCY_SIZE = 224
MODEL_FILES = {TRAIN_SIZE: "mobilenet_digits_96.onnx", LATENCY_SIZE: "mobilenet_digits_224.onnx"}
# (expansion t, output channels c, repeats n, first stride s), as in the MobileNetV2 paper's table 2,
# with channels scaled down (~0.35 width) and one stage fewer for 96x96 inputs.
BLOCKS = ((1, 8, 1, 1), (6, 16, 2, 2), (6, 24, 3, 2), (6, 32, 3, 2), (6, 48, 2, 1), (6, 80, 1, 2))
STEM_CHANNELS = 16
HEAD_CHANNELS = 256
EPOCHS = 12
BATCH = 64


def _interpolation_matrix(source: int, size: int) -> np.ndarray:
    """Rows of bilinear weights mapping `source` pixels to `size` (half-pixel centres, as torch's
    align_corners=False)."""
    centres = np.clip((np.arange(size) + 0.5) * source / size - 0.5, 0, source - 1)
    low = np.floor(centres).astype(int)
    high = np.minimum(low + 1, source - 1)
    frac = (centres - low).astype(np.float32)
    matrix = np.zeros((size, source), dtype=np.float32)
    matrix[np.arange(size), low] += 1 - frac
    matrix[np.arange(size), high] += frac
    return matrix


def upscale_digits(images8x8: np.ndarray, size: int) -> np.ndarray:
    """(N, 1, 8, 8) digits in [0, 1] -> (N, 3, size, size) float32: bilinear upscaling, grey replicated to
    three channels (the layout an ImageNet-style network expects). Deterministic; numpy only."""
    images = np.asarray(images8x8, dtype=np.float32)
    if images.ndim != 4 or images.shape[1] != 1:
        raise ValueError(f"expected (N, 1, H, W) grey images, got shape {images.shape}")
    rows = _interpolation_matrix(images.shape[2], size)
    cols = _interpolation_matrix(images.shape[3], size)
    grey = np.einsum("ih,nhw,jw->nij", rows, images[:, 0], cols, optimize=True)
    return np.ascontiguousarray(np.repeat(grey[:, None], 3, axis=1), dtype=np.float32)


def upscaled_digits_sets(
    dest: Path, size: int = TRAIN_SIZE, calib_samples: int | None = None
) -> tuple[Path, Path]:
    """Write calib_{size}.npz and eval_{size}.npz into `dest` from the shipped 8x8 sets; return their paths.
    calib_samples keeps only the first N calibration samples (tests use a few to stay fast)."""
    dest.mkdir(parents=True, exist_ok=True)
    with np.load(HERE / "calib.npz") as calib, np.load(HERE / "eval.npz") as evaluation:
        calib_images = calib[INPUT_NAME][:calib_samples]
        eval_images, labels = evaluation[INPUT_NAME], evaluation["y"]
    calib_path, eval_path = dest / f"calib_{size}.npz", dest / f"eval_{size}.npz"
    np.savez(calib_path, **{INPUT_NAME: upscale_digits(calib_images, size)})  # type: ignore[arg-type]
    np.savez(eval_path, **{INPUT_NAME: upscale_digits(eval_images, size), "y": labels})
    return calib_path, eval_path


def build_model() -> Any:
    """The MobileNetV2-style torch.nn.Module (torch is imported here so the data helpers above need none)."""
    from torch import nn

    def conv_bn(cin: int, cout: int, kernel: int, stride: int, groups: int, relu6: bool) -> list[nn.Module]:
        layers: list[nn.Module] = [
            nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
        ]
        return [*layers, nn.ReLU6()] if relu6 else layers

    class InvertedResidual(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int, expansion: int) -> None:
            super().__init__()
            hidden = cin * expansion
            layers = conv_bn(cin, hidden, 1, 1, 1, True) if expansion != 1 else []
            layers += conv_bn(hidden, hidden, 3, stride, hidden, True)  # depthwise
            layers += conv_bn(hidden, cout, 1, 1, 1, False)  # linear bottleneck: no activation
            self.conv = nn.Sequential(*layers)
            self.residual = stride == 1 and cin == cout

        def forward(self, x: Any) -> Any:
            return x + self.conv(x) if self.residual else self.conv(x)

    class MobileNetDigits(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            layers: list[nn.Module] = [*conv_bn(3, STEM_CHANNELS, 3, 2, 1, True)]
            cin = STEM_CHANNELS
            for expansion, cout, repeats, stride in BLOCKS:
                for index in range(repeats):
                    layers.append(InvertedResidual(cin, cout, stride if index == 0 else 1, expansion))
                    cin = cout
            layers += conv_bn(cin, HEAD_CHANNELS, 1, 1, 1, True)
            self.features = nn.Sequential(*layers)
            self.pool = nn.AdaptiveAvgPool2d(1)  # exports as GlobalAveragePool: any input size works
            self.classifier = nn.Sequential(nn.Flatten(), nn.Dropout(0.2), nn.Linear(HEAD_CHANNELS, 10))

        def forward(self, x: Any) -> Any:
            return self.classifier(self.pool(self.features(x)))

    return MobileNetDigits()


def train(x: np.ndarray, y: np.ndarray) -> Any:
    import torch
    from torch import nn

    torch.manual_seed(SEED)
    model = build_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    steps = EPOCHS * -(-len(x) // BATCH)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=steps)
    xs, ys = torch.from_numpy(x), torch.from_numpy(y)
    generator = torch.Generator().manual_seed(SEED)
    model.train()
    for epoch in range(EPOCHS):
        start, order = time.perf_counter(), torch.randperm(len(xs), generator=generator)
        for first in range(0, len(xs), BATCH):
            batch = order[first : first + BATCH]
            # A shift of up to 8 pixels keeps the network from memorising positions of the blurry digits.
            dy, dx = (int(v) for v in torch.randint(-8, 9, (2,), generator=generator))
            images = torch.roll(xs[batch], shifts=(dy, dx), dims=(2, 3))
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(model(images), ys[batch])
            loss.backward()
            optimizer.step()
            schedule.step()
        print(f"epoch {epoch + 1}/{EPOCHS}: loss {loss.item():.3f} ({time.perf_counter() - start:.1f} s)")
    return model.eval()


def accuracy(model: Any, x: np.ndarray, y: np.ndarray) -> float:
    import torch

    with torch.no_grad():
        pred = torch.cat([model(torch.from_numpy(x[i : i + 128])) for i in range(0, len(x), 128)]).argmax(1)
    return float((pred.numpy() == y).mean() * 100)


def export(model: Any, size: int, path: Path) -> None:
    from edgefleet.reference_models import train_digits_cnn

    train_digits_cnn.export(model, path, (1, 3, size, size))


def main() -> None:
    import torch

    from edgefleet.reference_models.train_digits_cnn import load_splits

    torch.set_num_threads(2)
    x_train, x_test, y_train, y_test = load_splits()
    start = time.perf_counter()
    model = train(upscale_digits(x_train, TRAIN_SIZE), y_train)
    params = sum(p.numel() for p in model.parameters())
    print(f"trained in {time.perf_counter() - start:.0f} s; {params} parameters")
    held_out = accuracy(model, upscale_digits(x_test, TRAIN_SIZE), y_test)
    print(f"held-out top-1 at {TRAIN_SIZE}x{TRAIN_SIZE}: {held_out:.2f}%")
    for size, name in MODEL_FILES.items():
        export(model, size, HERE / name)
        print(f"wrote {HERE / name}")


if __name__ == "__main__":
    main()
