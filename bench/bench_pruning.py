"""Structured channel pruning + distillation on the MobileNetV2-style digits model (96x96), side by side in
one run: parameters, MACs, ONNX file size, host latency (onnxruntime, 1 thread) and held-out top-1 of the
unpruned and the pruned model, as the converter's --prune reports them.

The unpruned model is trained here first (reference_models.mobilenet_digits' recipe, minutes on 2 cores);
recovery is distillation from it on the upscaled training split (unlabeled unless --labels).
Done when: accuracy within 1.5 points of the unpruned model at less than half its MACs.

    .venv/bin/python bench/bench_pruning.py [--ratio 0.5] [--distill-epochs 15] [--labels]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

# Idle OpenMP threads sleep instead of spinning: on two shared cores, spinning made training epochs vary
# from 14 s to 200 s. Read when torch loads its OpenMP runtime, so set before any import of torch.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from edgefleet.converter.compression.distill import DistillConfig, distill
from edgefleet.converter.compression.prune import PruneOptions, prune_channels
from edgefleet.converter.compression.stats import compare
from edgefleet.converter.inputs.pytorch import example_inputs, export_module
from edgefleet.converter.steps.calibration import TensorSet
from edgefleet.reference_models.mobilenet_digits import INPUT_NAME, TRAIN_SIZE, train, upscale_digits
from edgefleet.reference_models.train_digits_cnn import load_splits

MAX_DROP_POINTS = 1.5
MAX_MACS_RATIO = 0.5


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--ratio", type=float, default=0.5, help="share of channels to remove (0.5)")
    parser.add_argument("--distill-epochs", type=int, default=15, help="recovery epochs (15)")
    parser.add_argument("--labels", action="store_true", help="mix the training labels into distillation")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(2)
    x_train8, x_test8, y_train, y_test = load_splits()
    x_train, x_test = upscale_digits(x_train8, TRAIN_SIZE), upscale_digits(x_test8, TRAIN_SIZE)

    start = time.perf_counter()
    teacher = train(x_train, y_train)
    train_seconds = time.perf_counter() - start

    shapes = {INPUT_NAME: [1, 3, TRAIN_SIZE, TRAIN_SIZE]}
    start = time.perf_counter()
    student = prune_channels(teacher, example_inputs(shapes), PruneOptions(ratio=args.ratio))
    config = DistillConfig(epochs=args.distill_epochs)

    def on_epoch(epoch: int, epochs: int, loss: float) -> None:
        print(f"distillation epoch {epoch}/{epochs}: loss {loss:.4f}", flush=True)

    distill(student, teacher, [x_train], y_train if args.labels else None, config, on_epoch)
    recovery_seconds = time.perf_counter() - start

    with tempfile.TemporaryDirectory() as work:
        full, pruned = Path(work) / "full.onnx", Path(work) / "pruned.onnx"
        export_module(teacher, shapes, full)
        export_module(student, shapes, pruned)
        data = TensorSet(path=Path(work), inputs={INPUT_NAME: x_test}, labels=y_test)
        report = compare("channel_pruning", f"ratio {args.ratio:g}", full, pruned, data)

    b, a = report.before, report.after
    assert b.macs is not None and a.macs is not None and b.accuracy is not None and a.accuracy is not None
    print()
    print(
        f"MobileNetV2-style digits {TRAIN_SIZE}x{TRAIN_SIZE}; channel pruning {args.ratio:.0%} "
        "+ distillation "
        f"({config.epochs} epochs, T={config.temperature:g}, mixup, "
        f"{'with labels' if args.labels else 'unlabeled'}, {len(x_train)} training samples); "
        f"held-out top-1 on {len(y_test)} samples"
    )
    print("| model | params | MACs | ONNX KiB | host latency ms | top-1 % |")
    print("|---|---|---|---|---|---|")
    for name, s in (("unpruned", b), (f"pruned {args.ratio:.0%} + distilled", a)):
        print(
            f"| {name} | {s.params} | {s.macs / 1e6:.2f} M | {s.size_bytes / 1024:.1f} "
            f"| {s.host_latency_ms:.3f} | {s.accuracy:.2f} |"
        )
    macs_ratio = a.macs / b.macs
    drop = b.accuracy - a.accuracy
    done = macs_ratio < MAX_MACS_RATIO and drop <= MAX_DROP_POINTS
    print(
        f"\nMACs ratio {macs_ratio:.3f}, params ratio {a.params / b.params:.3f}, latency ratio "
        f"{a.host_latency_ms / b.host_latency_ms:.2f}, accuracy drop {drop:+.2f} points "
        f"(target: MACs ratio < {MAX_MACS_RATIO}, drop <= {MAX_DROP_POINTS}): {'MET' if done else 'NOT MET'}"
    )
    print(f"training {train_seconds:.0f} s, pruning + distillation {recovery_seconds:.0f} s")


if __name__ == "__main__":
    main()
