"""Structured channel pruning of a PyTorch model with torch-pruning: whole output channels (and the inputs
that consume them) are removed, so the pruned model is physically smaller and cheaper after export.

The layers whose output channels are the model's outputs (a classifier's classes) are never pruned.
"""

from __future__ import annotations

import copy
from typing import Any


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


def prune_channels(module: Any, example_inputs: tuple[Any, ...], ratio: float) -> Any:
    """A pruned copy of `module`: `ratio` of the output channels of every prunable layer group removed by
    L2 magnitude (torch-pruning's group importance), output layers kept whole. `module` is not changed."""
    import torch
    import torch_pruning as tp

    if not 0 < ratio < 1:
        raise ValueError(f"pruning ratio {ratio} must be in (0, 1)")
    pruned = copy.deepcopy(module).eval()
    for parameter in pruned.parameters():
        parameter.requires_grad_(True)  # torch-pruning traces the autograd graph
    keep = output_layers(pruned, example_inputs)
    pruner = tp.pruner.BasePruner(
        pruned,
        example_inputs,
        importance=tp.importance.GroupMagnitudeImportance(p=2),
        pruning_ratio=ratio,
        ignored_layers=keep,
    )
    pruner.step()
    with torch.no_grad():
        pruned(*example_inputs)  # fails here, not later, if a dependency was missed
    return pruned
