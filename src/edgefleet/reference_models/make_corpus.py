"""Build the in-repo architecture corpus (corpus/ here): train each model of architectures.py briefly
on corpus_data.py's data (scikit-image's bundled photos, synthetic audio), then export it to ONNX."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import nn

from edgefleet.reference_models import architectures as arch
from edgefleet.reference_models import corpus_data as data

# Per model: <name>.onnx (opset 17, dynamic batch), <name>_reference.npz (the torch model's output on the
# first two eval samples, for tests) and corpus.json (sizes, ops, training metrics). Training, batch-norm and
# evaluation data all come from corpus_data.py (torch-free), which also makes the calibration/evaluation
# sets at run time: nothing but the models is stored. Deterministic (fixed seeds, one torch thread by
# default); about five minutes on an idle CPU; no network.
#
#     python -m edgefleet.reference_models.make_corpus [--only NAME ...] [--threads N]
#     # needs the `train` extra plus scikit-image==0.26.0 (its sample photos ship inside the wheel)

HERE = Path(__file__).resolve().parent
CORPUS = HERE / "corpus"
SEED = 0
# Training steps per model, sized so the whole build stays within ~4 minutes on two cores.
STEPS = {
    "mobilenetv3_small": 200,
    "efficientnet_lite0": 100,
    "yolo_style_det": 200,
    "dbnet_seg": 150,
    "tiny_vit": 250,
    "audio_gru": 300,
    "audio_conv1d": 300,
}
BATCH = 32
DETECTION_BATCH = 16  # the detector is the costliest per image

# --------------------------------------------------------------------------------------------------------
# Tasks: batches (inputs, targets) from corpus_data.py's generator for the model, loss and score


class ClassificationTask:
    """Which of the ten photos a random crop comes from: learnable, real image statistics."""

    def __init__(self, name: str) -> None:
        self.name = name

    def batch(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        return data.labelled_batch(self.name, rng, n)  # type: ignore[return-value]

    def loss(self, model: nn.Module, x: torch.Tensor, y: np.ndarray) -> torch.Tensor:
        return F.cross_entropy(model(x), torch.from_numpy(y), label_smoothing=0.1)

    def score(self, outputs: np.ndarray, y: np.ndarray) -> dict[str, float]:
        return {"top1": float((outputs.argmax(1) == y).mean())}


class DetectionTask:
    """Rectangles, ellipses and triangles textured with photo crops, pasted onto other photo crops."""

    def __init__(self, model: arch.YoloStyleDetector) -> None:
        detect = model.detect
        self.anchor_px = (detect.anchors * detect.strides).transpose(0, 1)  # (A, 2) centres in pixels
        self.strides = detect.strides[0]  # (A,)

    def batch(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, list[np.ndarray]]:
        return data.detection_batch(rng, n)

    def assign(self, boxes: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """FCOS-style assignment (a simple stand-in for Ultralytics' task-aligned assigner): an anchor is
        positive for a box when its centre lies inside the box, within 2.5 strides of the box centre, and the
        box's size suits the anchor's level; overlaps go to the smallest box. Returns (positive mask (A,),
        class (A,), ltrb distances in strides (A, 4))."""
        gt = torch.from_numpy(boxes)
        points, stride = self.anchor_px, self.strides
        lt = points[None] - gt[:, None, :2]
        rb = gt[:, None, 2:4] - points[None]
        ltrb = torch.cat((lt, rb), 2)  # (M, A, 4)
        centre = (gt[:, None, :2] + gt[:, None, 2:4]) / 2
        near = ((points[None] - centre).abs() < 2.5 * stride[None, :, None]).all(2)
        side = ltrb.amax(2)
        low = torch.where(stride == 8, 0.0, torch.where(stride == 16, 24.0, 48.0))
        high = torch.where(stride == 8, 32.0, torch.where(stride == 16, 64.0, 1e9))
        positive = (ltrb.amin(2) > 0) & near & (side > low[None]) & (side <= high[None])
        area = ((gt[:, 2] - gt[:, 0]) * (gt[:, 3] - gt[:, 1]))[:, None].expand_as(positive)
        owner = torch.where(positive, area, torch.full_like(area, float("inf"))).argmin(0)
        anchor = torch.arange(points.shape[0])
        target = ltrb[owner, anchor] / stride[:, None]
        return positive.any(0), gt[owner, 4].long(), target.clamp(0, 14.99)

    def loss(self, model: nn.Module, x: torch.Tensor, y: list[np.ndarray]) -> torch.Tensor:
        raw = model.detect.raw(model.features(x))  # type: ignore[operator, union-attr]
        batch, anchors = raw.shape[0], raw.shape[2]
        box_logits = raw[:, :64].view(batch, 4, 16, anchors).permute(0, 3, 1, 2)  # (B, A, 4, 16)
        cls_logits = raw[:, 64:].transpose(1, 2)  # (B, A, nc)
        assigned = [self.assign(boxes) for boxes in y]
        positive = torch.stack([a[0] for a in assigned])
        classes = torch.stack([a[1] for a in assigned])
        distances = torch.stack([a[2] for a in assigned])
        cls_target = F.one_hot(classes, cls_logits.shape[2]).float() * positive[..., None]
        n_pos = max(int(positive.sum()), 1)
        cls_loss = F.binary_cross_entropy_with_logits(cls_logits, cls_target, reduction="sum") / n_pos
        logits, target = box_logits[positive], distances[positive]  # (P, 4, 16), (P, 4)
        left = target.floor().long()
        weight_right = target - left
        log_p = logits.log_softmax(-1)
        dfl = -(
            log_p.gather(-1, left[..., None])[..., 0] * (1 - weight_right)
            + log_p.gather(-1, (left + 1)[..., None])[..., 0] * weight_right
        ).mean()
        expected = (log_p.exp() * torch.arange(16.0)).sum(-1)
        return cls_loss + 1.5 * dfl + 0.2 * F.l1_loss(expected, target)

    def score(self, outputs: np.ndarray, y: list[np.ndarray]) -> dict[str, float]:
        """Recall and precision at IoU >= 0.5 for score >= 0.25 after per-class greedy NMS."""
        hits = found = total = 0
        for out, boxes in zip(outputs, y, strict=True):
            detections = decode_detections(out, 0.25)
            total += len(boxes)
            found += len(detections)
            matched: set[int] = set()
            for det in detections:
                for index, box in enumerate(boxes):
                    if index not in matched and det[5] == box[4] and iou(det[:4], box[:4]) >= 0.5:
                        matched.add(index)
                        hits += 1
                        break
        return {"recall@0.5": hits / max(total, 1), "precision@0.5": hits / max(found, 1)}


def iou(a: np.ndarray, b: np.ndarray) -> float:
    inter_w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    inter_h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = inter_w * inter_h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def decode_detections(output: np.ndarray, threshold: float) -> list[np.ndarray]:
    """[4 + nc, A] (cx, cy, w, h, scores) -> rows (x1, y1, x2, y2, score, class) after greedy NMS at 0.5."""
    scores = output[4:].max(0)
    classes = output[4:].argmax(0)
    keep = np.flatnonzero(scores >= threshold)
    keep = keep[np.argsort(-scores[keep])]
    cx, cy, w, h = output[:4]
    rows = [
        np.array(
            [cx[i] - w[i] / 2, cy[i] - h[i] / 2, cx[i] + w[i] / 2, cy[i] + h[i] / 2, scores[i], classes[i]]
        )
        for i in keep
    ]
    kept: list[np.ndarray] = []
    for row in rows:
        if all(k[5] != row[5] or iou(k[:4], row[:4]) < 0.5 for k in kept):
            kept.append(row)
    return kept


class SegmentationTask:
    """Edge maps of photo crops (including scikit-image's text and page scans): blurred Sobel magnitude,
    thresholded and dilated by one pixel, as DBNet's shrunk text masks are thin structures too."""

    def target(self, image: np.ndarray) -> np.ndarray:
        grey = ndimage.gaussian_filter(image.mean(2), 1.0)
        magnitude = np.hypot(ndimage.sobel(grey, 0), ndimage.sobel(grey, 1))
        return ndimage.binary_dilation(magnitude > 0.45).astype(np.float32)

    def batch(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        images, crops = data.segmentation_batch(rng, n)
        masks = np.stack([self.target(c) for c in crops])[:, None]
        return images, masks

    def loss(self, model: nn.Module, x: torch.Tensor, y: np.ndarray) -> torch.Tensor:
        prob = model(x).clamp(1e-6, 1 - 1e-6)
        target = torch.from_numpy(y)
        dice = 1 - (2 * (prob * target).sum() + 1) / (prob.sum() + target.sum() + 1)
        return F.binary_cross_entropy(prob, target) + dice

    def score(self, outputs: np.ndarray, y: np.ndarray) -> dict[str, float]:
        predicted, target = outputs > 0.5, y > 0.5
        return {"mask_iou": float((predicted & target).sum() / max((predicted | target).sum(), 1))}


class AudioTask:
    def batch(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        return data.audio_batch(rng, n)

    def loss(self, model: nn.Module, x: torch.Tensor, y: np.ndarray) -> torch.Tensor:
        return F.binary_cross_entropy(model(x).clamp(1e-6, 1 - 1e-6), torch.from_numpy(y))

    def score(self, outputs: np.ndarray, y: np.ndarray) -> dict[str, float]:
        predicted, target = outputs > 0.5, y > 0.5
        tp = (predicted & target).sum()
        return {"frame_f1": float(2 * tp / max(predicted.sum() + target.sum(), 1))}


Task = ClassificationTask | DetectionTask | SegmentationTask | AudioTask


def task_for(name: str, model: nn.Module) -> Task:
    kind = data.model_data(name).task
    if kind == "classification":
        return ClassificationTask(name)
    if kind == "detection":
        return DetectionTask(model)  # type: ignore[arg-type]
    if kind == "segmentation":
        return SegmentationTask()
    return AudioTask()


# --------------------------------------------------------------------------------------------------------
# Build


def batches(task: Task, seed: int, n: int, count: int) -> Iterator[tuple[np.ndarray, object]]:
    rng = np.random.default_rng(seed)
    for _ in range(count):
        yield task.batch(rng, n)


def train(name: str, model: nn.Module, task: Task, steps: int) -> float:
    """AdamW with a cosine schedule; returns the mean loss of the last 20 steps."""
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=2e-3, weight_decay=0.01
    )
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=2e-3, total_steps=steps, pct_start=0.1)
    model.train()
    losses = []
    batch = DETECTION_BATCH if isinstance(task, DetectionTask) else BATCH
    for step, (x, y) in enumerate(batches(task, SEED + 1, batch, steps)):
        loss = task.loss(model, torch.from_numpy(x), y)  # type: ignore[arg-type]
        optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        if step % 50 == 0:
            print(f"  {name} step {step:4d} loss {loss.item():.4f}", flush=True)
    return float(np.mean(losses[-20:]))


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, task: Task) -> None:
    """Running statistics as a cumulative average over 256 fresh real inputs (train-mode forward, no
    updates), so the exported, BN-folded weights see exactly the activation ranges of real data."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None
    model.train()
    for x, _ in batches(task, SEED + 2, BATCH, 8):
        model(torch.from_numpy(x))
    for norm in norms:
        norm.momentum = 0.03 if isinstance(model, arch.YoloStyleDetector) else 0.1
    model.eval()


@torch.no_grad()
def run_torch(model: nn.Module, x: np.ndarray) -> np.ndarray:
    model.eval()
    return np.concatenate([model(torch.from_numpy(x[i : i + 16])).numpy() for i in range(0, len(x), 16)])


def export(model: nn.Module, spec: arch.Architecture, path: Path) -> None:
    model.eval()
    torch.onnx.export(
        model,
        (torch.zeros(spec.input_shape),),
        str(path),
        input_names=[spec.input_name],
        output_names=[spec.output_name],
        dynamic_axes={spec.input_name: {0: "batch"}, spec.output_name: {0: "batch"}},
        opset_version=17,
        dynamo=False,  # the dynamo exporter ignores the requested opset
    )


def build(name: str) -> dict[str, object]:
    spec = arch.ARCHITECTURES[name]
    start = time.perf_counter()
    torch.manual_seed(SEED)
    model = spec.build()
    task = task_for(name, model)
    final_loss = train(name, model, task, STEPS[name])
    recalibrate_batchnorm(model, task)
    # The first eval block of corpus_data.py (what corpus_data(name) returns), with the task's targets.
    eval_x, eval_y = task.batch(np.random.default_rng(data.EVAL_SEED), data.SAMPLES)
    outputs = run_torch(model, eval_x)
    metrics = task.score(outputs, eval_y)  # type: ignore[arg-type]
    files = arch.corpus_files(name)
    CORPUS.mkdir(exist_ok=True)
    export(model, spec, files.onnx)
    np.savez_compressed(files.reference, input=eval_x[:2], output=outputs[:2])
    graph = onnx.load(str(files.onnx))
    onnx.checker.check_model(graph)
    session = ort.InferenceSession(str(files.onnx), providers=["CPUExecutionProvider"])
    ort_out = session.run(None, {spec.input_name: eval_x[:8]})[0]
    return {
        "params": arch.parameter_count(model),
        "input": [spec.input_name, list(spec.input_shape)],
        "output": [spec.output_name, [1, *outputs.shape[1:]]],
        "task": spec.task,
        "preprocessing": spec.preprocessing,
        "onnx_bytes": files.onnx.stat().st_size,
        "op_types": sorted({node.op_type for node in graph.graph.node}),
        "train_steps": STEPS[name],
        "final_train_loss": round(final_loss, 4),
        "eval": {k: round(v, 4) for k, v in metrics.items()},
        "ort_vs_torch_max_abs": float(np.abs(ort_out - outputs[:8]).max()),
        "build_seconds": round(time.perf_counter() - start, 1),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", choices=sorted(arch.ARCHITECTURES), help="build just these")
    # One thread by default: on a shared, busy machine two OpenMP threads spin on each other and run
    # several times slower; results are reproducible for a given thread count.
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    # Identical kernels from run to run: the committed files should only change when the code does.
    torch.use_deterministic_algorithms(True)
    summary_path = CORPUS / "corpus.json"
    summary: dict[str, object] = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    for name in args.only or list(arch.ARCHITECTURES):
        print(f"building {name}", flush=True)
        summary[name] = build(name)
        print(f"  {json.dumps(summary[name])}", flush=True)
    ordered = {name: summary[name] for name in arch.ARCHITECTURES if name in summary}
    summary_path.write_text(json.dumps(ordered, indent=1) + "\n")


if __name__ == "__main__":
    main()
