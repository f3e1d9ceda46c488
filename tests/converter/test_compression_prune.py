"""Structured channel pruning with torch-pruning and recovery by distillation: the pruned model is
physically smaller (parameters and MACs of the exported ONNX graph), still exports and quantizes, and
keeps its accuracy after distillation from the unpruned model."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from edgefleet.converter.context import ConversionRequest
from edgefleet.converter.errors import ConversionError
from edgefleet.converter.pipeline import convert

# whole conversions or training runs: the full suite runs them, the fast lane (-m "not slow") does not;
# torch_test_setup (conftest) puts tiny_torch_models on the path and runs torch on one thread
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("torch_test_setup")]


def test_output_layers_are_found_and_kept_whole() -> None:
    import torch
    from tiny_torch_models import digits_cnn, fully_convolutional

    from edgefleet.converter.compression.prune import PruneOptions, output_layers, prune_channels

    example = (torch.zeros(1, 1, 8, 8),)
    cnn = digits_cnn()
    assert output_layers(cnn, example) == [cnn.classifier[3]]  # the last Linear
    fcn = fully_convolutional()
    assert output_layers(fcn, example) == [fcn[3]]  # the 1x1 conv to classes, behind BN, pooling, flatten
    for model in (cnn, fcn):
        pruned = prune_channels(model, example, PruneOptions(ratio=0.5))
        with torch.no_grad():
            assert pruned(*example).shape == (1, 10)


def test_pruning_removes_channels_physically(tmp_path: Path) -> None:
    import onnx
    import torch
    from tiny_torch_models import digits_cnn

    from edgefleet.converter.compression.prune import PruneOptions, count_params, prune_channels
    from edgefleet.converter.compression.stats import count_macs
    from edgefleet.converter.compression.stats import count_params as onnx_params
    from edgefleet.converter.inputs.pytorch import export_module

    model = digits_cnn()
    pruned = prune_channels(model, (torch.zeros(1, 1, 8, 8),), PruneOptions(ratio=0.5))
    assert count_params(pruned) < 0.5 * count_params(model)
    convs = [m for m in pruned.modules() if isinstance(m, torch.nn.Conv2d)]
    originals = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [o.out_channels // 2 for o in originals]
    shapes = {"image": [1, 1, 8, 8]}
    export_module(model, shapes, tmp_path / "full.onnx")
    export_module(pruned, shapes, tmp_path / "pruned.onnx")
    full, small = onnx.load(str(tmp_path / "full.onnx")), onnx.load(str(tmp_path / "pruned.onnx"))
    assert count_macs(small) < 0.5 * count_macs(full)
    assert onnx_params(small)[0] == count_params(pruned)  # every parameter is in the graph, none masked
    assert (tmp_path / "pruned.onnx").stat().st_size < 0.5 * (tmp_path / "full.onnx").stat().st_size


def test_prune_and_distill_then_quantize(make_request: Callable[..., ConversionRequest]) -> None:
    from tiny_torch_models import digits_cnn

    request = make_request(  # the reference calibration set: 200 samples, no labels
        "jetson-orin-nano",
        model=Path("digits_cnn"),
        name="pruned",
        input_shapes={"image": (None, 1, 8, 8)},
        prune=0.5,
        distill_epochs=30,
    )
    result = convert(request, torch_module=digits_cnn())
    (report,) = result.compression
    before, after = report.before, report.after
    assert report.method == "channel_pruning" and report.accuracy_metric == "top1"
    assert after.params < 0.5 * before.params and after.macs < 0.5 * before.macs
    assert after.size_bytes < 0.5 * before.size_bytes
    assert "unlabeled (soft targets only)" in report.notes[0]
    # distillation from the unpruned model on 200 unlabeled samples recovers most of the accuracy
    assert report.accuracy_drop_points is not None and report.accuracy_drop_points <= 3.0
    # the artifact is the pruned model, quantized: its fp32 reference is the pruned graph
    assert result.metrics.size_bytes_fp32 == after.size_bytes
    assert result.metrics.accuracy is not None and result.metrics.accuracy.fp32 == after.accuracy


def test_prune_uses_labels_of_the_training_set(
    make_request: Callable[..., ConversionRequest], reference_dir: Path
) -> None:
    from tiny_torch_models import digits_cnn

    request = make_request(
        "jetson-nano",
        model=Path("digits_cnn"),
        name="pruned",
        train=reference_dir / "eval.npz",  # labelled (any labelled set works here; this one is small)
        input_shapes={"image": (1, 1, 8, 8)},
        prune=0.25,
        distill_epochs=2,
    )
    (report,) = convert(request, torch_module=digits_cnn()).compression
    assert "360 samples from --train, with its labels" in report.notes[0]
    assert report.after.params < report.before.params
    assert "ratio 0.25 by l2, uniform, 1 step(s)" in report.setting
    assert "features.0: 16 -> 12 channels" in report.layers  # the report lists kept channels per layer


def test_prune_criterion_steps_and_protection_through_convert(
    make_request: Callable[..., ConversionRequest], torch_request: Callable[..., ConversionRequest]
) -> None:
    from tiny_torch_models import digits_cnn

    request = torch_request(
        "jetson-nano",
        "pruned",
        prune=0.5,
        prune_criterion="taylor",
        prune_steps=2,
        prune_protect=("features.0",),
        distill_epochs=2,
    )
    (report,) = convert(request, torch_module=digits_cnn()).compression
    assert "ratio 0.5 by taylor, uniform, 2 step(s)" in report.setting
    assert (
        "features.0: 16 -> 16 channels" in report.layers and "features.2: 32 -> 16 channels" in report.layers
    )
    assert "protected: features.0" in report.notes
    with pytest.raises(ConversionError, match="--prune-criterion, --prune-steps shape --prune"):
        convert(make_request("jetson-nano", prune_criterion="taylor", prune_steps=3))


def test_prune_needs_a_pytorch_model(make_request: Callable[..., ConversionRequest]) -> None:
    with pytest.raises(ConversionError, match="channel pruning needs the PyTorch model"):
        convert(make_request("jetson-nano", prune=0.5))


def _kept_channels(model: object) -> dict[str, int]:
    from edgefleet.converter.compression.prune import channel_counts

    return channel_counts(model)


def _kept_rows(original: object, pruned: object, layer: str) -> list[int]:
    """Which output channels of `layer` survived, found by matching the pruned filters to the originals."""
    kept = dict(pruned.named_modules())[layer].weight.detach()  # type: ignore[attr-defined]
    every = dict(original.named_modules())[layer].weight.detach()  # type: ignore[attr-defined]
    rows, all_rows = kept.reshape(len(kept), -1), every.reshape(len(every), -1)
    return sorted(int((all_rows[:, : rows.shape[1]] - row).abs().sum(1).argmin()) for row in rows)


@pytest.mark.parametrize("criterion", ["l1", "l2", "taylor", "activation", "entropy"])
def test_every_criterion_prunes_and_ranks_channels_its_own_way(criterion: str, reference_dir: Path) -> None:
    """Each criterion removes half of every layer's channels and keeps a working model; the data criteria
    keep other channels than the weight norm does (one falling back to it would keep the same ones)."""
    import numpy as np
    import torch
    from tiny_torch_models import digits_cnn

    from edgefleet.converter.compression.prune import PruneOptions, prune_channels

    model = digits_cnn()
    with np.load(reference_dir / "calib.npz") as data:
        images = data["image"][:128]
    example = (torch.zeros(1, 1, 8, 8),)
    options = PruneOptions(ratio=0.5, criterion=criterion)  # type: ignore[arg-type]
    pruned = prune_channels(model, example, options, [images])
    with torch.no_grad():
        assert pruned(*example).shape == (1, 10)
    before, after = _kept_channels(model), _kept_channels(pruned)
    convs = [name for name, module in model.named_modules() if isinstance(module, torch.nn.Conv2d)]
    assert all(after[name] == before[name] // 2 for name in convs)
    by_norm = prune_channels(model, example, PruneOptions(ratio=0.5))
    same = _kept_rows(model, pruned, convs[0]) == _kept_rows(model, by_norm, convs[0])
    assert same == (criterion in ("l1", "l2"))  # l1 and l2 rank this layer alike


def test_bn_scale_keeps_the_channels_with_the_largest_batchnorm_gamma() -> None:
    import torch
    from tiny_torch_models import digits_cnn, fully_convolutional

    from edgefleet.converter.compression.prune import PruneOptions, prune_channels

    model = fully_convolutional()
    with torch.no_grad():
        model[1].weight.copy_(
            torch.linspace(-1.0, 1.0, 16)[torch.randperm(16, generator=torch.Generator().manual_seed(0))]
        )
    example = (torch.zeros(1, 1, 8, 8),)
    pruned = prune_channels(model, example, PruneOptions(ratio=0.5, criterion="bn-scale"))
    largest = sorted(torch.argsort(model[1].weight.detach().abs(), descending=True)[:8].tolist())
    assert _kept_rows(model, pruned, "0") == largest
    with pytest.raises(ValueError, match="needs BatchNorm layers"):  # the digits CNN has none
        prune_channels(digits_cnn(), example, PruneOptions(ratio=0.5, criterion="bn-scale"))


def test_global_allocation_protection_and_steps() -> None:
    """Global allocation prunes layers unevenly within the per-layer cap; a protected layer keeps every
    channel; two steps reach the same ratio with the recovery hook called between them."""
    import numpy as np
    import torch
    from tiny_torch_models import digits_cnn

    from edgefleet.converter.compression.prune import PruneOptions, prune_channels

    torch.manual_seed(0)
    model = digits_cnn()
    example = (torch.zeros(1, 1, 8, 8),)
    before = _kept_channels(model)
    convs = [name for name, module in model.named_modules() if isinstance(module, torch.nn.Conv2d)]
    uneven = _kept_channels(
        prune_channels(model, example, PruneOptions(ratio=0.5, global_allocation=True, max_layer_ratio=0.8))
    )
    shares = [uneven[name] / before[name] for name in convs]
    assert min(shares) >= 0.2 - 1e-9 and len(set(shares)) > 1  # capped, and not the same share everywhere
    protected = _kept_channels(prune_channels(model, example, PruneOptions(ratio=0.5, protected=(convs[0],))))
    assert protected[convs[0]] == before[convs[0]] and protected[convs[1]] == before[convs[1]] // 2
    calls: list[int] = []
    images = np.random.default_rng(0).random((64, 1, 8, 8), dtype=np.float32)
    stepped = prune_channels(
        model, example, PruneOptions(ratio=0.5), [images], None, steps=2,
        between_steps=lambda _model, step: calls.append(step),
    )  # fmt: skip
    assert calls == [1] and _kept_channels(stepped)[convs[1]] == before[convs[1]] // 2
    with pytest.raises(ValueError, match="not modules of the model"):
        prune_channels(model, example, PruneOptions(ratio=0.5, protected=("no.such.layer",)))


def test_sparsity_training_drives_channel_scales_to_zero(reference_dir: Path) -> None:
    """The L1 penalty on BatchNorm scales (network slimming) leaves channels near zero that bn-scale
    pruning then removes; without it the same training leaves none there."""
    import copy

    import numpy as np
    from tiny_torch_models import fully_convolutional

    from edgefleet.converter.compression.distill import DistillConfig, distill
    from edgefleet.converter.compression.prune import sparsity_penalty

    with np.load(reference_dir / "calib.npz") as data:
        images = data["image"]
    teacher = fully_convolutional()
    config = DistillConfig(epochs=15, mixup=False)
    plain, slimmed = copy.deepcopy(teacher), copy.deepcopy(teacher)
    shrink, small_share = sparsity_penalty(slimmed, 0.01)
    assert small_share(slimmed) == 0.0
    distill(plain, teacher, [images], None, config)
    distill(slimmed, teacher, [images], None, config, after_step=shrink)
    assert small_share(slimmed) > 0.2 and small_share(plain) == 0.0


def test_sparsity_reg_through_convert_reports_its_effect(
    make_request: Callable[..., ConversionRequest], torch_request: Callable[..., ConversionRequest]
) -> None:
    from tiny_torch_models import digits_cnn

    request = torch_request(
        "jetson-nano",
        "slimmed",
        prune=0.5,
        sparsity_reg=0.01,
        sparsity_epochs=2,
        distill_epochs=2,
    )
    (report,) = convert(request, torch_module=digits_cnn()).compression
    (note,) = [n for n in report.notes if n.startswith("sparsity training")]
    assert "L1 shrink 0.01 per step on channel weight norms (no BatchNorm) for 2 epochs; scales below" in note
    with pytest.raises(ConversionError, match="--sparsity-reg shape --prune"):
        convert(make_request("jetson-nano", sparsity_reg=0.01))


def test_feature_distillation_aligns_pruned_layers_through_adapters(
    make_request: Callable[..., ConversionRequest],
) -> None:
    """--distill-features auto: the student also learns the teacher's intermediate outputs, through 1x1
    adapters where pruning halved the widths; the alignment MSE falls over the training."""
    import re

    import torch
    from tiny_torch_models import digits_cnn

    from edgefleet.converter.compression.distill import FeatureAlignment, feature_layers
    from edgefleet.converter.compression.prune import PruneOptions, prune_channels

    teacher = digits_cnn()
    layers = feature_layers(("auto",), teacher, {"classifier.3"})
    assert "classifier.3" not in layers and 0 < len(layers) <= 4
    student = prune_channels(teacher, (torch.zeros(1, 1, 8, 8),), PruneOptions(ratio=0.5))
    alignment = FeatureAlignment(student, teacher, ("features.2",), [torch.zeros(2, 1, 8, 8)])
    ((_, adapter),) = alignment.pairs
    assert isinstance(adapter, torch.nn.Conv2d) and (adapter.in_channels, adapter.out_channels) == (16, 32)
    alignment.close()
    with pytest.raises(ValueError, match="not modules of both models"):
        FeatureAlignment(student, teacher, ("no.such",), [torch.zeros(2, 1, 8, 8)])

    request = make_request(
        "jetson-nano", model=Path("digits_cnn"), name="featured", input_shapes={"image": (1, 1, 8, 8)},
        prune=0.5, distill_features=("auto",), distill_epochs=6,
    )  # fmt: skip
    (report,) = convert(request, torch_module=digits_cnn()).compression
    assert f"features of {', '.join(layers)}" in report.setting
    (note,) = [n for n in report.notes if n.startswith("feature alignment MSE")]
    first, last = (float(v) for v in re.findall(r"([0-9.e+-]+) in the (?:first|last)", note))
    assert last < first
    with pytest.raises(ConversionError, match="--distill-features shapes the recovery training"):
        convert(make_request("jetson-nano", distill_features=("auto",)))
