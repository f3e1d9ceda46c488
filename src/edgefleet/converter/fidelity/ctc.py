"""CTC sequence outputs (text recognisers): greedy decoding and the share of samples whose decoded string
is the fp32 model's."""

from __future__ import annotations

import numpy as np

from edgefleet.converter.errors import ConversionError

BLANK = 0  # the CTC blank class (PaddleOCR, PyTorch's CTCLoss default)


def greedy_decode(scores: np.ndarray, output: str = "output") -> list[tuple[int, ...]]:
    """Per sample: argmax over the class axis (the last), repeats collapsed, blanks removed. `scores` is
    [N, T, C] ([N, ..., T, C] with size-1 axes between is accepted)."""
    if scores.ndim < 3:
        raise ConversionError(
            f"output '{output}' has shape {tuple(scores.shape)}: CTC decoding needs [samples, time, classes] "
            f"scores; name another kind with --output-kind {output}=tensor"
        )
    steps = scores.reshape(len(scores), -1, scores.shape[-1]).argmax(axis=2)
    decoded = []
    for path in steps:
        keep = np.ones(len(path), bool)
        keep[1:] = path[1:] != path[:-1]
        decoded.append(tuple(int(c) for c in path[keep] if c != BLANK))
    return decoded


def string_equality(fp32: np.ndarray, artifact: np.ndarray, output: str = "output") -> tuple[float, int]:
    """(percent of samples decoding to the same string as fp32, number of samples that differ)."""
    ours, theirs = greedy_decode(fp32, output), greedy_decode(artifact, output)
    differ = sum(a != b for a, b in zip(ours, theirs, strict=True))
    return (round(100 * (1 - differ / len(ours)), 2) if ours else 100.0), differ
