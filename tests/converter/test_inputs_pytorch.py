"""PyTorch sources: `package.module:factory` on the command line and an nn.Module through the Python API,
exported to ONNX at an explicit opset and converted like any ONNX model (real torch, real onnxruntime)."""

from __future__ import annotations

import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from edgefleet.contract.bundle import read_manifest_unverified
from edgefleet.converter.context import ConversionRequest
from edgefleet.converter.errors import ModelError
from edgefleet.converter.pipeline import convert

# torch_test_setup (conftest) puts tiny_torch_models on the path and runs torch on one thread
pytestmark = pytest.mark.usefixtures("torch_test_setup")


def _torch_top1(module: object, images: np.ndarray, labels: np.ndarray) -> float:
    import torch

    with torch.no_grad():
        predicted = module(torch.from_numpy(images)).argmax(1).numpy()  # type: ignore[operator]
    return round(float((predicted == labels).mean() * 100), 2)


def test_factory_on_the_command_line(
    convert_cli: Callable[..., int],
    tmp_path: Path,
    eval_set: tuple[np.ndarray, np.ndarray],
    capsys: pytest.CaptureFixture[str],
) -> None:
    import onnx
    from tiny_torch_models import digits_cnn

    code = convert_cli(
        "tiny_torch_models:digits_cnn", "jetson-orin-nano", tmp_path, "--input-shape", "image=1,1,8,8"
    )
    out = capsys.readouterr().out
    bundle = tmp_path / "digits_cnn-1-jetson-orin-nano.efb"  # named after the factory
    assert code == 0 and bundle.is_file()
    manifest = read_manifest_unverified(bundle)
    assert [t.name for t in manifest.inputs] == ["image"] and [t.name for t in manifest.outputs] == ["output"]
    accuracy = manifest.metrics.accuracy
    assert accuracy is not None and accuracy.fp32 == _torch_top1(digits_cnn(), *eval_set)
    assert f"fp32 {accuracy.fp32:.2f}%" in out
    with zipfile.ZipFile(bundle) as archive:
        artifact = onnx.load_model_from_string(archive.read(manifest.artifact))
    assert {o.version for o in artifact.opset_import if o.domain in ("", "ai.onnx")} == {17}
    assert {n.op_type for n in artifact.graph.node} >= {"QuantizeLinear", "DequantizeLinear", "Conv"}


def test_module_through_the_python_api(
    make_request: Callable[..., ConversionRequest], eval_set: tuple[np.ndarray, np.ndarray]
) -> None:
    from tiny_torch_models import digits_cnn

    module = digits_cnn()
    request = make_request(
        "jetson-nano", model=Path("my_cnn"), name="my_cnn", input_shapes={"image": (None, 1, 8, 8)}
    )
    result = convert(request, torch_module=module)
    assert result.metrics.accuracy is not None
    assert result.metrics.accuracy.fp32 == _torch_top1(module, *eval_set)
    # "?" for the batch keeps it dynamic, as in the exported graph
    assert result.inputs[0].float_shape == [None, 1, 8, 8]


@pytest.mark.parametrize(
    ("model", "shapes", "message"),
    [
        ("tiny_torch_models:digits_cnn", {}, "needs its input shapes; pass --input-shape NAME="),
        ("no_such_module_here:build", {"image": (1, 1, 8, 8)}, "cannot import module 'no_such_module_here'"),
        ("tiny_torch_models:missing", {"image": (1, 1, 8, 8)}, "has no callable 'missing'"),
        ("tiny_torch_models:not_a_module", {"image": (1, 1, 8, 8)}, "returned int, not a torch.nn.Module"),
        (
            "tiny_torch_models:digits_cnn",
            {"image": (1, 3, 8, 8)},
            "does not run on inputs image=[1, 3, 8, 8]",
        ),
    ],
)
def test_bad_factory_input_gets_one_clear_error(
    make_request: Callable[..., ConversionRequest], model: str, shapes: dict, message: str
) -> None:
    with pytest.raises(ModelError, match=message.replace("[", r"\[").replace("]", r"\]")):
        convert(make_request("jetson-nano", model=Path(model), name="x", input_shapes=shapes))
