"""PyTorch model factories for the converter tests, named on the command line as `tiny_torch_models:NAME`
(the tests put this folder on sys.path). The digits CNN is trained once per test session (~2 s)."""

from __future__ import annotations

import copy
import functools
from typing import Any

TRAIN_EPOCHS = 6


@functools.cache
def _trained_digits_cnn() -> Any:
    from edgefleet.reference_models.train_digits_cnn import load_splits, train

    x_train, _, y_train, _ = load_splits()
    return train(x_train, y_train, TRAIN_EPOCHS)


def digits_cnn() -> Any:
    """The reference digits CNN architecture, trained on the digits training split (a fresh copy)."""
    return copy.deepcopy(_trained_digits_cnn())


def fully_convolutional() -> Any:
    """Conv -> BN -> ReLU -> 1x1 conv to 10 classes -> global average pool: the classes come out of a Conv."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Conv2d(16, 10, 1),
        nn.BatchNorm2d(10),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    ).eval()


def not_a_module() -> int:
    return 42
