"""Train the reference digits CNN (sklearn's 8x8 digits, shipped with scikit-learn) and export it to ONNX.

Writes, next to this script: digits_cnn_v1.onnx and digits_cnn_v2.onnx (the same architecture trained
for fewer and for more epochs, so a v1 -> v2 deploy changes something measurable), calib.npz (200
unlabeled training samples for calibration) and eval.npz (the held-out test split with labels `y`).
Run with the `train` extra installed:  python -m edgefleet.reference_models.train_digits_cnn
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

HERE = Path(__file__).resolve().parent
SEED = 0
INPUT_NAME = "image"
OUTPUT_NAME = "logits"


class DigitsCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(64 * 2 * 2, 64), nn.ReLU(), nn.Linear(64, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def load_splits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    digits = load_digits()
    x = (digits.images.astype(np.float32) / 16.0)[:, None, :, :]  # N,1,8,8 in [0, 1]
    y = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.2, random_state=SEED, stratify=y)
    return x_train, x_test, y_train, y_test


def train(x: np.ndarray, y: np.ndarray, epochs: int) -> DigitsCNN:
    torch.manual_seed(SEED)
    model = DigitsCNN()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    xs, ys = torch.from_numpy(x), torch.from_numpy(y)
    for _ in range(epochs):
        order = torch.randperm(len(xs))
        for start in range(0, len(xs), 32):
            idx = order[start : start + 32]
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(model(xs[idx]), ys[idx])
            loss.backward()
            optimizer.step()
    return model.eval()


def accuracy(model: DigitsCNN, x: np.ndarray, y: np.ndarray) -> float:
    with torch.no_grad():
        pred = model(torch.from_numpy(x)).argmax(1).numpy()
    return float((pred == y).mean() * 100)


def export(model: nn.Module, path: Path, example_shape: tuple[int, ...] = (1, 1, 8, 8)) -> None:
    """The model as ONNX (opset 17) with one input `image` and one output `logits`, dynamic batch; the
    MobileNet digits model exports through this too."""
    torch.onnx.export(
        model,
        (torch.zeros(*example_shape),),
        str(path),
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
        opset_version=17,
        dynamo=False,  # the dynamo exporter ignores the requested opset (see toolchain notes)
    )


def main() -> None:
    x_train, x_test, y_train, y_test = load_splits()
    for version, epochs in (("v1", 4), ("v2", 20)):
        model = train(x_train, y_train, epochs)
        export(model, HERE / f"digits_cnn_{version}.onnx")
        print(f"{version}: {epochs} epochs, held-out top-1 {accuracy(model, x_test, y_test):.2f}%")
    rng = np.random.default_rng(SEED)
    calib_idx = rng.choice(len(x_train), size=200, replace=False)
    np.savez_compressed(HERE / "calib.npz", **{INPUT_NAME: x_train[calib_idx]})  # type: ignore[arg-type]
    np.savez_compressed(HERE / "eval.npz", **{INPUT_NAME: x_test, "y": y_test})  # type: ignore[arg-type]
    print(f"calib: {len(calib_idx)} samples, eval: {len(x_test)} samples")


if __name__ == "__main__":
    main()
