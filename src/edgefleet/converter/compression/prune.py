"""Structured channel pruning of a PyTorch model with torch-pruning: whole output channels (and the inputs
that consume them) are removed, so the pruned model is physically smaller and cheaper after export.

How channels are ranked (`PruneOptions.criterion`):
- `l1`, `l2`: the norm of each channel's weights across its dependency group (torch-pruning's
  GroupMagnitudeImportance; l2 is the default, as before the criteria existed);
- `taylor`: first-order Taylor expansion of the loss (weight x gradient), with gradients from the recovery
  data (cross-entropy on the labels, else on the unpruned model's own top-1);
- `bn-scale`: the |gamma| of the BatchNorm after each channel (network slimming);
- `activation`: the mean |output| of each channel on the recovery data;
- `entropy`: the entropy of each channel's global-average-pooled activation over the recovery data (a
  channel that says the same thing for every input carries little information).
Allocation is uniform (every layer loses `ratio`) or global (channels compete across layers, no layer
losing more than `max_layer_ratio`). The layers whose output channels are the model's outputs (a
classifier's classes) are never pruned, nor are the layers the user protects by module name.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, get_args

import numpy as np

from edgefleet.converter.context import PruneCriterion

Criterion = PruneCriterion
CRITERIA: tuple[Criterion, ...] = get_args(PruneCriterion)
DATA_CRITERIA = frozenset({"taylor", "activation", "entropy"})  # need the recovery data
SCORE_BATCH = 32
SCORE_SAMPLES = 256  # recovery samples a data criterion looks at (enough to rank channels)
ENTROPY_BINS = 32


@dataclass(frozen=True)
class PruneOptions:
    ratio: float
    criterion: Criterion = "l2"
    global_allocation: bool = False
    max_layer_ratio: float = 0.9  # with global allocation: no layer loses more than this share
    protected: tuple[str, ...] = ()  # module names (as in named_modules) never pruned


def output_layers(module: Any, example_inputs: tuple[Any, ...]) -> list[Any]:
    """The Conv/Linear layers that produce the model's output channels: walking back through the autograd
    graph from every output, the first Conv/Linear met on each path (through BN, pooling, reshapes, adds)."""
    import torch
    from torch import nn

    prunable = (nn.modules.conv._ConvNd, nn.Linear)
    owners: dict[Any, Any] = {}

    def record(layer: Any, _inputs: Any, output: Any) -> None:
        if isinstance(output, torch.Tensor) and output.grad_fn is not None:
            owners[output.grad_fn] = layer

    hooks = [m.register_forward_hook(record) for m in module.modules() if isinstance(m, prunable)]
    try:
        with torch.enable_grad():
            outputs = module(*example_inputs)
    finally:
        for hook in hooks:
            hook.remove()
    flat = (
        [outputs]
        if isinstance(outputs, torch.Tensor)
        else [o for o in outputs if isinstance(o, torch.Tensor)]
    )
    found: list[Any] = []
    seen: set[Any] = set()
    stack = [o.grad_fn for o in flat if o.grad_fn is not None]
    while stack:
        fn = stack.pop()
        if fn in seen:
            continue
        seen.add(fn)
        if fn in owners:
            if owners[fn] not in found:
                found.append(owners[fn])
            continue
        stack.extend(next_fn for next_fn, _ in fn.next_functions if next_fn is not None)
    return found


def count_params(module: Any) -> int:
    return sum(int(p.numel()) for p in module.parameters())


def channel_counts(module: Any) -> dict[str, int]:
    """Output channels (or features) of every Conv/Linear layer, by module name."""
    from torch import nn

    return {
        name: int(layer.out_channels if isinstance(layer, nn.modules.conv._ConvNd) else layer.out_features)
        for name, layer in module.named_modules()
        if isinstance(layer, (nn.modules.conv._ConvNd, nn.Linear))
    }


def _first_output(outputs: Any) -> Any:
    return outputs if not isinstance(outputs, (tuple, list)) else outputs[0]


def _batches(data: list[np.ndarray]) -> Iterator[tuple[Any, ...]]:
    import torch

    samples = min(len(data[0]), SCORE_SAMPLES)
    for start in range(0, samples, SCORE_BATCH):
        yield tuple(
            torch.from_numpy(np.ascontiguousarray(x[start : start + SCORE_BATCH], dtype=np.float32))
            for x in data
        )


def _taylor_gradients(model: Any, data: list[np.ndarray], labels: np.ndarray | None) -> None:
    """Accumulate the loss gradients the Taylor criterion multiplies with the weights."""
    import torch
    import torch.nn.functional as F

    model.zero_grad()
    model.eval()  # BatchNorm statistics stay as trained
    start = 0
    for batch in _batches(data):
        with torch.enable_grad():
            logits = _first_output(model(*batch)).reshape(len(batch[0]), -1)
            if labels is not None:
                target = torch.from_numpy(labels[start : start + len(batch[0])].astype(np.int64))
            else:
                target = logits.detach().argmax(dim=1)  # the model's own answer: pseudo-labels
            F.cross_entropy(logits, target).backward()
        start += len(batch[0])


def _output_channel_scores(model: Any, data: list[np.ndarray], kind: str) -> dict[Any, Any]:
    """Per Conv/Linear layer, a score for each of its output channels from its outputs on `data`: the mean
    |activation| (`activation`) or the entropy of the channel's pooled value (`entropy`)."""
    import torch
    from torch import nn

    pooled: dict[Any, list[Any]] = {}

    def hook(layer: Any, _inputs: Any, output: Any) -> None:
        y = output.detach()
        y = y.abs() if kind == "activation" else y  # entropy: of the signed pooled value
        per_sample = y.mean(dim=tuple(range(2, y.dim()))) if y.dim() > 2 else y
        pooled.setdefault(layer, []).append(per_sample.reshape(len(y), -1))

    layers = [m for m in model.modules() if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))]
    hooks = [layer.register_forward_hook(hook) for layer in layers]
    try:
        model.eval()
        with torch.no_grad():
            for batch in _batches(data):
                model(*batch)
    finally:
        for handle in hooks:
            handle.remove()
    scores = {}
    for layer, parts in pooled.items():
        values = torch.cat(parts).numpy()
        per_channel = values.mean(axis=0) if kind == "activation" else _entropy(values)
        scores[layer] = torch.from_numpy(per_channel.astype(np.float32))
    return scores


class _OutputChannelImportance:
    """torch-pruning importance from per-output-channel scores of each group's root layer (a group is one
    layer's output channels and everything that consumes them)."""

    def __init__(self) -> None:
        self.scores: dict[Any, Any] = {}

    def __call__(self, group: Any) -> Any:
        dep, idxs = group[0]
        scores = self.scores.get(dep.target.module)
        return None if scores is None else scores[sorted(idxs)]


def _entropy(values: np.ndarray) -> np.ndarray:
    """Per column: the entropy (nats) of its values' histogram over ENTROPY_BINS equal bins."""
    scores = np.zeros(values.shape[1])
    for channel in range(values.shape[1]):
        counts, _ = np.histogram(values[:, channel], bins=ENTROPY_BINS)
        p = counts[counts > 0] / counts.sum()
        scores[channel] = float(-(p * np.log(p)).sum())
    return scores


def _importance(criterion: Criterion) -> Any:
    import torch_pruning as tp

    return {
        "l1": lambda: tp.importance.GroupMagnitudeImportance(p=1),
        "l2": lambda: tp.importance.GroupMagnitudeImportance(p=2),
        "taylor": lambda: tp.importance.GroupTaylorImportance(),
        "bn-scale": lambda: tp.importance.BNScaleImportance(),
        "activation": _OutputChannelImportance,
        "entropy": _OutputChannelImportance,
    }[criterion]()


@contextmanager
def _scored(
    model: Any, importance: Any, criterion: Criterion, data: list[np.ndarray], labels: np.ndarray | None
) -> Iterator[None]:
    """What the criterion needs in place while the pruner ranks channels (fresh for every step)."""
    if criterion == "taylor":
        _taylor_gradients(model, data, labels)
        yield
        model.zero_grad()
    elif isinstance(importance, _OutputChannelImportance):
        importance.scores = _output_channel_scores(model, data, criterion)
        yield
        importance.scores = {}
    else:
        yield


def prune_channels(
    module: Any,
    example_inputs: tuple[Any, ...],
    options: PruneOptions,
    data: list[np.ndarray] | None = None,
    labels: np.ndarray | None = None,
    steps: int = 1,
    between_steps: Callable[[Any, int], None] | None = None,
) -> Any:
    """A pruned copy of `module` (which is not changed): `options.ratio` of the prunable output channels
    removed, ranked by `options.criterion` (the data criteria score on `data`, one array per input), in
    `steps` equal steps with `between_steps(model, step)` (recovery training) after each but the last."""
    import torch
    import torch_pruning as tp

    if not 0 < options.ratio < 1:
        raise ValueError(f"pruning ratio {options.ratio} must be in (0, 1)")
    if options.criterion in DATA_CRITERIA and data is None:
        raise ValueError(f"criterion {options.criterion} ranks channels on data; none was given")
    pruned = copy.deepcopy(module).eval()
    for parameter in pruned.parameters():
        parameter.requires_grad_(True)  # torch-pruning traces the autograd graph
    by_name = dict(pruned.named_modules())
    unknown = [name for name in options.protected if name not in by_name]
    if unknown:
        known = [n for n, m in by_name.items() if n and not list(m.children())][:12]
        raise ValueError(f"protected layers {unknown} are not modules of the model (e.g. {', '.join(known)})")
    keep = output_layers(pruned, example_inputs) + [by_name[name] for name in options.protected]
    importance = _importance(options.criterion)
    before = channel_counts(pruned)
    pruner = tp.pruner.BasePruner(
        pruned,
        example_inputs,
        importance=importance,
        global_pruning=options.global_allocation,
        pruning_ratio=options.ratio,
        max_pruning_ratio=options.max_layer_ratio,
        iterative_steps=steps,
        ignored_layers=keep,
    )
    for step in range(steps):
        with _scored(pruned, importance, options.criterion, data or [], labels):
            pruner.step()
        with torch.no_grad():
            pruned(*example_inputs)  # fails here, not later, if a dependency was missed
        if step == 0 and channel_counts(pruned) == before:
            why = (
                " (it needs BatchNorm layers after the convolutions)"
                if options.criterion == "bn-scale"
                else ""
            )
            raise ValueError(f"criterion {options.criterion} found no channel it could rank{why}")
        if between_steps is not None and step < steps - 1:
            between_steps(pruned, step + 1)
            pruned.eval()
    return pruned


SMALL_SCALE = 1e-2  # a channel whose scale (BatchNorm |gamma|, or filter norm) is below this does little


def sparsity_penalty(model: Any, strength: float) -> tuple[Callable[[Any], None], Callable[[Any], float]]:
    """L1 sparsity training before pruning (network slimming, Liu et al. 2017), as a proximal step: after
    every optimizer step each BatchNorm |gamma| (without BatchNorm: each Conv/Linear output channel's
    weight norm, group lasso) shrinks by `strength`, stopping at 0. Channels the loss needs grow back; the
    others reach 0. (A penalty term in the loss would not do it under Adam, which rescales its gradient
    and shrinks every scale alike.) Returns the shrink step and a measure of its effect: the share of
    channel scales below SMALL_SCALE."""
    import torch
    from torch import nn

    has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())

    def owners(module: Any) -> list[Any]:
        kinds = (nn.modules.batchnorm._BatchNorm,) if has_bn else (nn.modules.conv._ConvNd, nn.Linear)
        return [m for m in module.modules() if isinstance(m, kinds)]

    def scales(layer: Any) -> Any:
        weight = layer.weight.detach()
        return weight.abs() if has_bn else weight.reshape(weight.shape[0], -1).norm(dim=1)

    @torch.no_grad()
    def shrink(module: Any) -> None:
        for layer in owners(module):
            scale = scales(layer)
            factor = (1 - strength / scale.clamp_min(1e-12)).clamp_min(0)
            layer.weight.mul_(factor.reshape(-1, *[1] * (layer.weight.dim() - 1)))

    def small_share(module: Any) -> float:
        values = torch.cat([scales(layer).reshape(-1) for layer in owners(module)])
        return float((values < SMALL_SCALE).float().mean())

    return shrink, small_share


def penalized_scales(model: Any) -> str:
    """What sparsity_penalty penalizes on this model, in words."""
    from torch import nn

    has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    return "BatchNorm scales" if has_bn else "channel weight norms (no BatchNorm)"
