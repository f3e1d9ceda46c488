"""Distillation: soft targets for class scores, value-by-value matching for maps, frozen BatchNorm
statistics when asked."""

from __future__ import annotations

import numpy as np
import pytest

from edgefleet.converter.compression.distill import DistillConfig, distill, distillation_loss

torch = pytest.importorskip("torch")
nn = torch.nn


def test_class_scores_are_soft_targets_and_maps_are_matched_value_by_value() -> None:
    torch.manual_seed(0)
    scores = torch.randn(4, 10)
    # a softmax does not see a constant shift of the class scores...
    assert float(distillation_loss(scores + 3.0, scores, temperature=4.0)) == pytest.approx(0.0, abs=1e-5)
    # ...but a segmentation map shifted by a constant is a different map (squared error over its variance)
    maps = torch.randn(4, 1, 8, 8)
    shifted = float(distillation_loss(maps + 3.0, maps, temperature=4.0))
    assert shifted == pytest.approx(9.0 / float(maps.var()), rel=1e-4)


def test_each_output_channel_weighs_the_same_whatever_its_scale() -> None:
    torch.manual_seed(0)
    # a YOLO-style head [N, 4 + classes, anchors]: a box coordinate in pixels and a score in [0, 1]
    head = torch.stack([64 + 30 * torch.randn(8, 100), torch.rand(8, 100)], dim=1)
    box_off, score_off = head.clone(), head.clone()
    box_off[:, 0] += 0.5 * head[:, 0].std()
    score_off[:, 1] += 0.5 * head[:, 1].std()
    box_loss = float(distillation_loss(box_off, head, temperature=4.0))
    score_loss = float(distillation_loss(score_off, head, temperature=4.0))
    assert box_loss == pytest.approx(score_loss, rel=0.05) and score_loss > 0.1


def _segmenter() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 1, 1))


def test_a_segmenter_student_learns_the_teachers_map_not_only_its_shape() -> None:
    torch.manual_seed(0)
    teacher = _segmenter().eval()
    student = _segmenter()
    student.load_state_dict(teacher.state_dict())
    with torch.no_grad():
        student[3].bias += 2.0  # the same map everywhere 2 higher: a softmax over pixels cannot see it
    images = np.random.default_rng(0).normal(size=(64, 1, 8, 8)).astype(np.float32)
    x = torch.from_numpy(images)

    def error() -> float:
        with torch.no_grad():
            return float((student.eval()(x) - teacher(x)).abs().mean())

    before = error()
    distill(
        student, teacher, [images], None, DistillConfig(epochs=30, mixup=False, learning_rate=0.05, batch=8)
    )
    assert before > 1.9 and error() < 0.2 * before


def test_frozen_batchnorm_keeps_its_running_statistics() -> None:
    torch.manual_seed(0)
    teacher = _segmenter().eval()
    images = (5.0 + np.random.default_rng(1).normal(size=(32, 1, 8, 8))).astype(np.float32)
    for frozen in (True, False):
        student = _segmenter()
        student.load_state_dict(teacher.state_dict())
        distill(student, teacher, [images], None, DistillConfig(epochs=2, freeze_batchnorm=frozen))
        kept = torch.equal(student[1].running_mean, teacher[1].running_mean)
        assert kept is frozen
