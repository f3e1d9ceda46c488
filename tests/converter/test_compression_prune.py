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

    from edgefleet.converter.compression.prune import output_layers, prune_channels

    example = (torch.zeros(1, 1, 8, 8),)
    cnn = digits_cnn()
    assert output_layers(cnn, example) == [cnn.classifier[3]]  # the last Linear
    fcn = fully_convolutional()
    assert output_layers(fcn, example) == [fcn[3]]  # the 1x1 conv to classes, behind BN, pooling, flatten
    for model in (cnn, fcn):
        pruned = prune_channels(model, example, 0.5)
        with torch.no_grad():
            assert pruned(*example).shape == (1, 10)


def test_pruning_removes_channels_physically(tmp_path: Path) -> None:
    import onnx
    import torch
    from tiny_torch_models import digits_cnn

    from edgefleet.converter.compression.prune import count_params, prune_channels
    from edgefleet.converter.compression.stats import count_macs
    from edgefleet.converter.compression.stats import count_params as onnx_params
    from edgefleet.converter.inputs.pytorch import export_module

    model = digits_cnn()
    pruned = prune_channels(model, (torch.zeros(1, 1, 8, 8),), 0.5)
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


def test_prune_needs_a_pytorch_model(make_request: Callable[..., ConversionRequest]) -> None:
    with pytest.raises(ConversionError, match="channel pruning needs the PyTorch model"):
        convert(make_request("jetson-nano", prune=0.5))
