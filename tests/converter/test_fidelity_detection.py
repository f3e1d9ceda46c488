"""Detection fidelity: YOLOv8-style raw heads decoded with a score threshold and NMS, decoded-box outputs,
and the F1 of the artifact's boxes against fp32's at IoU >= 0.5."""

from __future__ import annotations

import numpy as np
import pytest

from edgefleet.converter.errors import ConversionError
from edgefleet.converter.fidelity.detection import (
    box_iou,
    decode_yolov8,
    detection_f1,
    read_detections,
)

CLASSES = 2
ANCHORS = 32


def yolo_head(boxes: list[tuple[float, float, float, float, int, float]]) -> np.ndarray:
    """[4 + CLASSES, ANCHORS] with one anchor per (cx, cy, w, h, class, score); the rest score 0.01."""
    head = np.zeros((4 + CLASSES, ANCHORS), np.float32)
    head[:4] = 10.0
    head[4:] = 0.01
    for anchor, (cx, cy, w, h, cls, score) in enumerate(boxes):
        head[:4, anchor] = cx, cy, w, h
        head[4 + cls, anchor] = score
    return head


SCENE = [(20, 20, 10, 10, 0, 0.9), (60, 60, 20, 10, 1, 0.8), (100, 30, 16, 16, 0, 0.7)]


def test_iou_of_corner_boxes() -> None:
    a = np.array([[0, 0, 10, 10]], np.float64)
    b = np.array([[5, 0, 15, 10], [20, 20, 30, 30]], np.float64)
    np.testing.assert_allclose(box_iou(a, b), [[50 / 150, 0.0]])


def test_yolov8_decode_keeps_scores_over_threshold_and_suppresses_duplicates() -> None:
    duplicate = (21, 20, 10, 10, 0, 0.6)  # same object, lower score: NMS drops it
    other_class = (21, 20, 10, 10, 1, 0.5)  # same place, other class: NMS keeps it (per-class)
    low = (80, 80, 10, 10, 0, 0.1)  # under the 0.25 score threshold
    detections = decode_yolov8(yolo_head([*SCENE, duplicate, other_class, low]))
    assert len(detections.boxes) == 4
    np.testing.assert_allclose(detections.boxes[0], [15, 15, 25, 25])  # cx, cy, w, h -> corners
    assert detections.classes.tolist() == [0, 1, 0, 1] and detections.scores[0] == pytest.approx(0.9)


def test_f1_is_full_for_the_same_boxes_and_for_small_jitter() -> None:
    fp32 = yolo_head(SCENE)[None]
    jitter = yolo_head([(cx + 1, cy - 1, w, h, c, s - 0.05) for cx, cy, w, h, c, s in SCENE])[None]
    assert detection_f1(fp32, fp32)[0] == 100.0
    f1, detail = detection_f1(fp32, jitter)
    assert f1 == 100.0 and "3 fp32 boxes (3 found by the artifact), 3 artifact boxes (3 in fp32)" in detail


def test_f1_drops_when_a_box_moves_or_changes_class_or_vanishes() -> None:
    fp32 = yolo_head(SCENE)[None]
    moved = yolo_head([SCENE[0], SCENE[1], (130, 30, 16, 16, 0, 0.7)])[None]  # IoU 0 with where it was
    assert detection_f1(fp32, moved)[0] == pytest.approx(200 * 2 / 6, abs=0.01)
    relabelled = yolo_head([SCENE[0], SCENE[1], (100, 30, 16, 16, 1, 0.7)])[None]
    assert detection_f1(fp32, relabelled)[0] == pytest.approx(200 * 2 / 6, abs=0.01)
    # The failure of the real YOLOv8 int8 artifact: every class score crushed to 0 -> no box at all.
    crushed = fp32.copy()
    crushed[:, 4:] = 0.0
    assert detection_f1(fp32, crushed)[0] == 0.0


def test_a_score_crossing_the_threshold_by_a_rounding_step_is_not_a_lost_box() -> None:
    fp32 = yolo_head([(20, 20, 10, 10, 0, 0.26)])[None]
    just_under = yolo_head([(20, 20, 10, 10, 0, 0.24)])[None]
    assert detection_f1(fp32, just_under)[0] == 100.0
    far_under = yolo_head([(20, 20, 10, 10, 0, 0.15)])[None]  # a real loss: well below the margin
    assert detection_f1(fp32, far_under)[0] == 0.0


def test_f1_sums_over_samples_and_an_eval_set_without_fp32_boxes_is_refused() -> None:
    fp32 = np.stack([yolo_head(SCENE), yolo_head([])])
    artifact = np.stack([yolo_head(SCENE[:2]), yolo_head([])])
    assert detection_f1(fp32, artifact)[0] == pytest.approx(200 * 2 / 5, abs=0.01)
    empty = yolo_head([])[None]
    with pytest.raises(ConversionError, match=r"finds no box .* --output-kind output=tensor"):
        detection_f1(empty, empty)  # nothing to find: a crushed artifact would look perfect


def test_decoded_boxes_drop_padding_and_low_scores() -> None:
    rows = np.zeros((2, 5, 6), np.float32)  # [N, K, x1 y1 x2 y2 score class], zero rows are padding
    rows[0, 0] = [10, 10, 20, 20, 0.9, 3]
    rows[0, 1] = [30, 30, 50, 40, 0.1, 1]  # under the score threshold
    rows[1, 0] = [0, 0, 8, 8, 0.5, 0]
    detections = read_detections(rows)
    assert [len(d.boxes) for d in detections] == [1, 1] and detections[0].classes.tolist() == [3]
    shifted = rows.copy()
    shifted[0, 0, [0, 2]] += 8  # IoU 2/18 with the fp32 box: no longer a match
    assert detection_f1(rows, shifted)[0] == 50.0
    corners = rows[..., :4]  # no score column: every box of non-zero area counts (3 here)
    assert sum(len(d.boxes) for d in read_detections(corners)) == 3
    assert detection_f1(corners, shifted[..., :4])[0] == pytest.approx(200 * 2 / 6, abs=0.01)


def test_an_output_that_is_no_detection_layout_is_refused_with_what_to_do() -> None:
    with pytest.raises(ConversionError, match=r"output 'logits'.*--output-kind logits=tensor"):
        read_detections(np.zeros((4, 10), np.float32), "logits")
