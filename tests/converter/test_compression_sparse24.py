"""2:4 structured sparsity: the masks, the pattern check on fp32 and QDQ ONNX, and a PyTorch model through
convert for Jetson Orin (marked for TensorRT) and for a Pi (not marked: TFLite runs the zeros densely)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from edgefleet.converter.compression.sparse24 import apply_masks, follows_2_4, mask_2_4, onnx_weights_2_4
from edgefleet.converter.context import ConversionRequest
from edgefleet.converter.errors import ConversionError
from edgefleet.converter.pipeline import convert


def test_the_mask_keeps_the_two_largest_of_every_four_input_channels() -> None:
    weight = np.random.default_rng(0).normal(size=(8, 16, 3, 3)).astype(np.float32)
    mask = mask_2_4(weight)
    assert mask is not None and mask.shape == weight.shape
    sparse = weight * mask
    assert follows_2_4(sparse) and not follows_2_4(weight)
    groups = np.abs(weight).reshape(8, 4, 4, 3, 3)  # [out, group, 4, kh, kw]
    kept = np.abs(sparse).reshape(8, 4, 4, 3, 3)
    assert np.allclose(np.sort(kept, axis=2)[:, :, 2:], np.sort(groups, axis=2)[:, :, 2:])
    assert mask_2_4(np.ones((8, 3, 3, 3), np.float32)) is None  # 3 input channels: cannot follow 2:4


def test_masks_go_on_plain_convolutions_and_linears_but_not_transposed_or_grouped_ones() -> None:
    torch = pytest.importorskip("torch")
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(8, 8, 3, padding=1),
        nn.Conv2d(8, 8, 3, padding=1, groups=2),
        nn.ConvTranspose2d(8, 8, 2, stride=2),  # weight [in, out, kh, kw]: axis 1 is not the input
        nn.Flatten(),
        nn.Linear(8 * 16 * 16, 4),
    )
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    masks, dense = apply_masks(model, skip={"4"})
    assert sorted(masks) == ["0"]
    assert follows_2_4(model[0].weight.detach().numpy())
    assert dense == ["1: dense (grouped convolution)", "2: dense (transposed convolution)"]
    for layer in ("1", "2", "4"):
        assert torch.equal(before[f"{layer}.weight"], dict(model.named_parameters())[f"{layer}.weight"])


def test_the_onnx_check_reads_float_and_quantized_weights() -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = np.random.default_rng(1).normal(size=(4, 8, 1, 1)).astype(np.float32)
    sparse = weight * mask_2_4(weight)  # type: ignore[operator]
    for w, expected in ((weight, (0, 1)), (sparse, (1, 1))):
        graph = helper.make_graph(
            [helper.make_node("Conv", ["x", "w"], ["y"])],
            "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 4, 4])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 4, 4])],
            [numpy_helper.from_array(w, "w")],
        )
        assert onnx_weights_2_4(helper.make_model(graph)) == expected
    # QDQ: int8 weights behind DequantizeLinear, zero point 0: the zeros are the zero point
    q = np.round(sparse / 0.01).astype(np.int8)
    graph = helper.make_graph(
        [
            helper.make_node("DequantizeLinear", ["wq", "scale", "zp"], ["w"]),
            helper.make_node("Conv", ["x", "w"], ["y"]),
        ],
        "qdq",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 4, 4])],
        [
            numpy_helper.from_array(q, "wq"),
            numpy_helper.from_array(np.array(0.01, np.float32), "scale"),
            numpy_helper.from_array(np.array(0, np.int8), "zp"),
        ],
    )
    assert onnx_weights_2_4(onnx.helper.make_model(graph)) == (1, 1)


@pytest.mark.slow
@pytest.mark.usefixtures("torch_test_setup")
def test_a_pytorch_model_made_2_4_sparse_for_orin_is_marked_and_for_a_pi_is_not(
    make_request: Callable[..., ConversionRequest], key_pair: tuple[Path, Path], tmp_path: Path
) -> None:
    from tiny_torch_models import digits_cnn

    from edgefleet.contract.bundle import extract_bundle
    from edgefleet.contract.signing import load_public_key

    def sparse(profile: str) -> ConversionRequest:
        return make_request(
            profile, model=Path("digits_cnn"), name=f"sparse-{profile}", input_shapes={"image": (1, 1, 8, 8)},
            sparsity_2_4=True, distill_epochs=5,
        )  # fmt: skip

    result = convert(sparse("jetson-orin-nano"), torch_module=digits_cnn())
    (report,) = result.compression
    assert report.method == "sparsity_2_4"
    assert "features.2: 2:4" in report.layers and "features.5: 2:4" in report.layers
    assert any("features.0: dense (1 input channels" in line for line in report.layers)
    assert report.notes[0].startswith("2:4 pattern verified in the exported ONNX on ")
    assert report.accuracy_drop_points is not None and report.accuracy_drop_points <= 5.0
    assert any(n.startswith("2:4 sparsity:") and "marked for TensorRT" in n for n in result.notes)
    public = load_public_key(key_pair[1])
    manifest = extract_bundle(result.bundle_path, tmp_path / "orin", public)
    assert manifest.weight_sparsity == "2:4"

    pi = convert(sparse("rpi4"), torch_module=digits_cnn())
    pi_manifest = extract_bundle(pi.bundle_path, tmp_path / "pi", public)
    assert pi_manifest.weight_sparsity is None
    assert any("multiply the zeros densely" in n for n in pi.notes)

    with pytest.raises(ConversionError, match="--sparsity-2-4 fine-tunes the model"):
        convert(make_request("jetson-orin-nano", sparsity_2_4=True))  # an ONNX source
