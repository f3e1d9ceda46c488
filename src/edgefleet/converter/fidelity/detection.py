"""Detection outputs: boxes read from the output (YOLOv8-style raw head decoded with a score threshold and
NMS in numpy, or boxes the model already decoded), matched to fp32's at IoU >= 0.5 -> F1 against fp32.

A box whose score sits next to the threshold may cross it by a rounding step; that is not a lost detection.
So a box kept at the threshold counts as found when the other side has it at the threshold minus
SCORE_MARGIN (a crushed class score falls far below that and is still caught)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgefleet.converter.errors import ConversionError

SCORE_THRESHOLD = 0.25  # Ultralytics' predict default (conf=0.25)
NMS_IOU = 0.7  # Ultralytics' predict default (iou=0.7)
MAX_DETECTIONS = 300  # Ultralytics' max_det
MATCH_IOU = 0.5  # a box of the artifact matches one of fp32 (same class) at IoU >= 0.5 (PASCAL VOC)
SCORE_MARGIN = 0.05  # how far below the threshold the other side may score a box and still have found it
MAX_DECODED_COLUMNS = 7  # x1, y1, x2, y2[, score[, class]] (+ slack for a trailing extra column)


@dataclass(frozen=True)
class Detections:
    """One sample's kept boxes: [K, 4] corners x1, y1, x2, y2, their scores and integer classes."""

    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[K, M] IoU of corner boxes a [K, 4] and b [M, 4]."""
    top_left = np.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(bottom_right - top_left, 0, None).prod(axis=2)
    area_a = np.clip(a[:, 2:] - a[:, :2], 0, None).prod(axis=1)
    area_b = np.clip(b[:, 2:] - b[:, :2], 0, None).prod(axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def nms(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, iou: float = NMS_IOU) -> np.ndarray:
    """Indices kept by per-class non-maximum suppression, best score first (at most MAX_DETECTIONS)."""
    # Offsetting each class by more than the image extent keeps boxes of different classes apart, as
    # Ultralytics and torchvision's batched_nms do.
    offset = classes[:, None] * (float(np.abs(boxes).max(initial=0)) + 1)
    shifted = boxes + offset
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    while len(order) and len(keep) < MAX_DETECTIONS:
        best, rest = order[0], order[1:]
        keep.append(int(best))
        order = rest[box_iou(shifted[best : best + 1], shifted[rest])[0] < iou]
    return np.array(keep, dtype=np.int64)


def decode_yolov8(head: np.ndarray, threshold: float = SCORE_THRESHOLD) -> Detections:
    """One sample of a YOLOv8-style raw head [4 + classes, anchors]: cx, cy, w, h then per-class scores
    (already sigmoided, as Ultralytics exports it) -> boxes scoring at least `threshold`, after NMS."""
    rows = head.T.astype(np.float64)
    class_scores = rows[:, 4:]
    classes = class_scores.argmax(axis=1)
    scores = class_scores[np.arange(len(rows)), classes]
    keep = scores >= threshold
    cx, cy, w, h = rows[keep, :4].T
    boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
    kept = nms(boxes, scores[keep], classes[keep])
    return Detections(boxes[kept], scores[keep][kept], classes[keep][kept])


def decoded_boxes(rows: np.ndarray, threshold: float = SCORE_THRESHOLD) -> Detections:
    """One sample of boxes the model decoded itself, [K, 4..7]: x1, y1, x2, y2[, score[, class]]. Rows under
    SCORE_THRESHOLD (with a score column) or of zero area (padding) are dropped; no NMS (the model's)."""
    rows = rows.astype(np.float64)
    boxes = rows[:, :4]
    scores = rows[:, 4] if rows.shape[1] > 4 else np.ones(len(rows))
    classes = np.rint(rows[:, 5]).astype(np.int64) if rows.shape[1] > 5 else np.zeros(len(rows), np.int64)
    area = np.clip(boxes[:, 2:] - boxes[:, :2], 0, None).prod(axis=1)
    keep = (area > 0) & (scores >= threshold if rows.shape[1] > 4 else True)
    return Detections(boxes[keep], scores[keep], classes[keep])


def read_detections(
    batch: np.ndarray, output: str = "output", threshold: float = SCORE_THRESHOLD
) -> list[Detections]:
    """Each sample's boxes; the form is read from the shape: [N, K, 4..7] decoded boxes, or [N, 4 + classes,
    anchors] (more anchors than channels) a YOLOv8-style raw head."""
    sample = batch
    if batch.ndim > 3:  # [N, 1, ..., R, C]: drop the size-1 axes before the last two
        sample = batch.reshape(len(batch), *[d for d in batch.shape[1:-2] if d != 1], *batch.shape[-2:])
    if sample.ndim == 3 and 4 <= sample.shape[2] <= MAX_DECODED_COLUMNS:
        return [decoded_boxes(rows, threshold) for rows in sample]
    if sample.ndim == 3 and sample.shape[1] >= 5 and sample.shape[2] > sample.shape[1]:
        return [decode_yolov8(head, threshold) for head in sample]
    raise ConversionError(
        f"output '{output}' has shape {tuple(batch.shape)}: detection reads decoded boxes [N, boxes, 4..7] "
        "(x1, y1, x2, y2[, score[, class]]) or a YOLOv8-style raw head [N, 4 + classes, anchors]; name "
        f"another kind with --output-kind {output}=tensor, or judge it with --metric"
    )


def matched(reference: Detections, candidate: Detections, iou: float = MATCH_IOU) -> int:
    """How many candidate boxes match a reference box of the same class at IoU >= `iou`; greedy, best
    candidate score first, each reference box matched once."""
    if not len(reference.boxes) or not len(candidate.boxes):
        return 0
    overlaps = box_iou(candidate.boxes, reference.boxes)
    overlaps[candidate.classes[:, None] != reference.classes[None, :]] = 0.0
    free = np.ones(len(reference.boxes), bool)
    count = 0
    for row in np.argsort(-candidate.scores, kind="stable"):
        scores = np.where(free, overlaps[row], -1.0)
        best = int(scores.argmax())
        if scores[best] >= iou:
            free[best] = False
            count += 1
    return count


def detection_f1(fp32: np.ndarray, artifact: np.ndarray, output: str = "output") -> tuple[float, str]:
    """(F1 % of the artifact's boxes against fp32's over the whole set, a one-line account): fp32 boxes the
    artifact found (recall) and artifact boxes fp32 has (precision), each side's boxes at the threshold
    looked up among the other side's at the threshold minus SCORE_MARGIN. Without any fp32 box there is
    nothing to find (an artifact whose scores were crushed would look perfect): refused."""
    loose = SCORE_THRESHOLD - SCORE_MARGIN
    reference, candidate = read_detections(fp32, output), read_detections(artifact, output)
    reference_loose = read_detections(fp32, output, loose)
    candidate_loose = read_detections(artifact, output, loose)
    n_ref = sum(len(d.boxes) for d in reference)
    n_art = sum(len(d.boxes) for d in candidate)
    found = sum(matched(r, c) for r, c in zip(reference, candidate_loose, strict=True))
    confirmed = sum(matched(r, c) for r, c in zip(reference_loose, candidate, strict=True))
    if n_ref == 0:
        raise ConversionError(
            f"output '{output}': the fp32 model finds no box scoring {SCORE_THRESHOLD} or more on the "
            "evaluation set, so detection F1 cannot judge the artifact; evaluate on images that show "
            f"objects, or judge the output with --output-kind {output}=tensor"
        )
    f1 = 100.0 * (found + confirmed) / (n_ref + n_art)
    account = (
        f"{n_ref} fp32 boxes ({found} found by the artifact), {n_art} artifact boxes ({confirmed} in fp32), "
        f"IoU >= {MATCH_IOU}, scores within {SCORE_MARGIN} of the {SCORE_THRESHOLD} threshold count"
    )
    return round(f1, 2), account
