"""Structured channel pruning criteria and schedules side by side at one pruning ratio, on the
MobileNetV2-style digits model (96x96): held-out top-1 after the same distillation budget, parameters and
MACs (of the exported ONNX) against the unpruned model.

Rows: every criterion one-shot with uniform allocation (l2 = torch-pruning's default, l1, taylor,
bn-scale, activation, entropy); l2 and the best one-shot data criterion (taylor, activation or entropy) in
--steps equal steps with the distillation epochs shared out between them (the converter's --prune-steps,
same total epochs); l2 with global allocation (at most 0.9 of a layer). Every row distils --distill-epochs
epochs in total from the unpruned model, unlabeled unless --labels, on the upscaled training split (which is
also what the data criteria score channels on). Seeds fixed; torch on 2 threads.

The unpruned model is trained once with reference_models.mobilenet_digits' recipe (as bench_pruning.py
does) and cached under --cache (reused when the recipe and torch version match; --retrain ignores it).
Budget on this 2-core machine: ~85 s of training plus ~80 s per row at 15 distillation epochs, nine rows:
about 14 minutes (the iterative rows distil a wider model in their first steps, so a little more).

    .venv/bin/python bench/bench_prune_criteria.py [--ratio 0.5] [--distill-epochs 15] [--steps 3] [--labels]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

# Idle OpenMP threads sleep instead of spinning (see bench_pruning.py); read when torch loads its OpenMP
# runtime, so set before any import of torch.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np

from edgefleet.converter.compression.distill import DistillConfig, distill
from edgefleet.converter.compression.prune import (
    DATA_CRITERIA,
    Criterion,
    PruneOptions,
    channel_counts,
    prune_channels,
)
from edgefleet.converter.compression.stats import ModelStats, measure
from edgefleet.converter.inputs.pytorch import example_inputs, export_module
from edgefleet.converter.steps.calibration import TensorSet
from edgefleet.reference_models import mobilenet_digits as md
from edgefleet.reference_models.train_digits_cnn import load_splits

ONE_SHOT: tuple[Criterion, ...] = ("l2", "l1", "taylor", "bn-scale", "activation", "entropy")
SEED = 0
BEATS_BY_POINTS = 0.5
SAME_MACS = 1.001  # "same MACs": within 0.1% of l2 one-shot's


@dataclass(frozen=True)
class Variant:
    criterion: Criterion
    global_allocation: bool = False
    steps: int = 1

    @property
    def allocation(self) -> str:
        return "global" if self.global_allocation else "uniform"


@dataclass
class Row:
    variant: Variant
    stats: ModelStats | None
    seconds: float
    channels: dict[str, int]
    error: str = ""


def top1(row: Row) -> float:
    return row.stats.accuracy or 0.0 if row.stats is not None else -1.0


def cached_teacher(cache: Path, retrain: bool, x_train: np.ndarray, y_train: np.ndarray) -> tuple[Any, str]:
    """The unpruned model, trained with mobilenet_digits' recipe, or loaded from a cache keyed by it."""
    import torch

    recipe = repr(
        (md.BLOCKS, md.STEM_CHANNELS, md.HEAD_CHANNELS, md.EPOCHS, md.BATCH, md.SEED, md.TRAIN_SIZE)
    )
    key = hashlib.sha256(f"{recipe} {torch.__version__} {len(x_train)}".encode()).hexdigest()[:16]
    path = cache / f"mobilenet_digits_{md.TRAIN_SIZE}_{key}.pt"
    if path.exists() and not retrain:
        model = md.build_model()
        model.load_state_dict(torch.load(path, weights_only=True))
        return model.eval(), f"loaded from {path}"
    start = time.perf_counter()
    model = md.train(x_train, y_train)
    cache.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return model.eval(), f"trained in {time.perf_counter() - start:.0f} s, cached at {path}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--ratio", type=float, default=0.5, help="share of channels to remove (0.5)")
    parser.add_argument("--distill-epochs", type=int, default=15, help="recovery epochs per row (15)")
    parser.add_argument("--steps", type=int, default=3, help="steps of the iterative rows (3)")
    parser.add_argument("--labels", action="store_true", help="mix the training labels into distillation")
    parser.add_argument(
        "--cache",
        type=Path,
        default=Path(tempfile.gettempdir()) / "edgefleet-bench-cache",
        help="where the trained unpruned model is kept between runs",
    )
    parser.add_argument("--retrain", action="store_true", help="train the unpruned model even if cached")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(2)
    run_start = time.perf_counter()
    x_train8, x_test8, y_train, y_test = load_splits()
    x_train, x_test = md.upscale_digits(x_train8, md.TRAIN_SIZE), md.upscale_digits(x_test8, md.TRAIN_SIZE)
    labels = y_train if args.labels else None
    teacher, origin = cached_teacher(args.cache, args.retrain, x_train, y_train)
    print(f"unpruned model {origin}", flush=True)

    shapes = {md.INPUT_NAME: [1, 3, md.TRAIN_SIZE, md.TRAIN_SIZE]}
    config = DistillConfig(epochs=args.distill_epochs)
    before_channels = channel_counts(teacher)

    with tempfile.TemporaryDirectory() as work:
        data = TensorSet(path=Path(work), inputs={md.INPUT_NAME: x_test}, labels=y_test)
        full = Path(work) / "full.onnx"
        export_module(teacher, shapes, full)
        base, _ = measure(full, data)

        def run(variant: Variant) -> Row:
            options = PruneOptions(
                ratio=args.ratio, criterion=variant.criterion, global_allocation=variant.global_allocation
            )
            per_step = replace(config, epochs=config.epochs // variant.steps)
            last = replace(config, epochs=config.epochs - per_step.epochs * (variant.steps - 1))

            def between_steps(model: Any, _step: int) -> None:
                distill(model, teacher, [x_train], labels, per_step)

            torch.manual_seed(SEED)
            start = time.perf_counter()
            try:
                student = prune_channels(
                    teacher,
                    example_inputs(shapes),
                    options,
                    [x_train],
                    labels,
                    variant.steps,
                    between_steps,
                )
            except ValueError as exc:
                return Row(variant, None, time.perf_counter() - start, {}, str(exc))
            distill(student, teacher, [x_train], labels, last)
            seconds = time.perf_counter() - start
            path = Path(work) / f"{variant.criterion}_{variant.allocation}_{variant.steps}.onnx"
            export_module(student, shapes, path)
            stats, _ = measure(path, data)
            row = Row(variant, stats, seconds, channel_counts(student))
            print(
                f"{variant.criterion} {variant.allocation} {variant.steps} step(s): "
                f"top-1 {stats.accuracy:.2f}, MACs {stats.macs}, {seconds:.0f} s",
                flush=True,
            )
            return row

        rows = [run(Variant(criterion)) for criterion in ONE_SHOT]
        scored = [r for r in rows if r.stats is not None and r.variant.criterion in DATA_CRITERIA]
        best_data = max(scored, key=top1).variant.criterion if scored else "taylor"
        rows.append(run(Variant("l2", steps=args.steps)))
        rows.append(run(Variant(best_data, steps=args.steps)))
        rows.append(run(Variant("l2", global_allocation=True)))

    assert base.macs is not None and base.accuracy is not None
    print()
    print(
        f"MobileNetV2-style digits {md.TRAIN_SIZE}x{md.TRAIN_SIZE}, unpruned: {base.params} params, "
        f"{base.macs / 1e6:.2f} M MACs, top-1 {base.accuracy:.2f}; pruning ratio {args.ratio:g}, "
        f"distillation {config.epochs} epochs in total per row (T={config.temperature:g}, mixup, "
        f"{'with labels' if args.labels else 'unlabeled'}, {len(x_train)} training samples); "
        f"held-out top-1 on {len(y_test)} samples"
    )
    print("| criterion | allocation | steps | MACs ratio | params ratio | top-1 % | drop (points) | s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        v = r.variant
        if r.stats is None:
            print(f"| {v.criterion} | {v.allocation} | {v.steps} | - | - | - | error: {r.error} | - |")
            continue
        s = r.stats
        assert s.macs is not None and s.accuracy is not None
        print(
            f"| {v.criterion} | {v.allocation} | {v.steps} | {s.macs / base.macs:.3f} "
            f"| {s.params / base.params:.3f} | {s.accuracy:.2f} | {base.accuracy - s.accuracy:+.2f} "
            f"| {r.seconds:.0f} |"
        )

    for r in rows:
        if r.stats is not None and r.channels == before_channels:
            print(f"note: {r.variant.criterion} {r.variant.allocation} pruned no channel")
    for r in rows:
        if r.stats is not None and r.variant.global_allocation:
            kept = {
                name: r.channels.get(name, 0) / count
                for name, count in before_channels.items()
                if r.channels.get(name, 0) != count
            }
            if kept:
                low, high = min(kept, key=kept.__getitem__), max(kept, key=kept.__getitem__)
                print(
                    f"global allocation: {len(kept)}/{len(before_channels)} layers pruned, kept share "
                    f"{kept[low]:.2f} ({low}) to {kept[high]:.2f} ({high})"
                )

    reference = rows[0]
    if reference.stats is None or reference.stats.macs is None or reference.stats.accuracy is None:
        print("l2 one-shot failed: no comparison")
    else:
        ref_macs, ref_top1 = reference.stats.macs, reference.stats.accuracy
        rivals = [
            r
            for r in rows[1:]
            if r.stats is not None and r.stats.macs is not None and r.stats.macs <= ref_macs * SAME_MACS
        ]
        if not rivals:
            print("no other row at l2 one-shot's MACs or fewer")
        else:
            best = max(rivals, key=top1)  # first row wins ties
            assert best.stats is not None and best.stats.accuracy is not None
            gain = best.stats.accuracy - ref_top1
            v = best.variant
            verdict = "beats it" if gain >= BEATS_BY_POINTS else "does not beat it"
            print(
                f"best at <= l2 one-shot's MACs: {v.criterion} {v.allocation} {v.steps} step(s), top-1 "
                f"{best.stats.accuracy:.2f} vs l2 one-shot {ref_top1:.2f} ({gain:+.2f} points; {verdict} by "
                f">= {BEATS_BY_POINTS} points); one test sample = {100 / len(y_test):.2f} points"
            )
    print(f"wall time {time.perf_counter() - run_start:.0f} s")


if __name__ == "__main__":
    main()
