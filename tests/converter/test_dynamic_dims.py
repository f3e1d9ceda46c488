"""Models with dynamic dimensions: the profile fixes the batch, `--input-shape` fixes the rest, and a target
that needs static shapes refuses whatever is left with the input, the axis and the flag to pass."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from target_graphs import classifier, save_with_data

from edgefleet.cli import main
from edgefleet.contract.bundle import verify_bundle
from edgefleet.contract.signing import load_public_key
from edgefleet.converter.context import ConversionRequest
from edgefleet.converter.errors import ConversionError, UnsupportedModelError
from edgefleet.converter.pipeline import convert
from edgefleet.converter.steps.input_shapes import parse_input_shape

CHEAP_STEPS = {"load model", "load calibration data", "load evaluation data", "load signing key"}


@pytest.fixture(scope="module")
def dynamic_hw(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A classifier whose batch, height and width are all dynamic, and 8x8 samples for it."""
    model = classifier(input_shape=["batch", 1, "height", "width"])
    return save_with_data(model, tmp_path_factory.mktemp("dynamic"), (24, 1, 8, 8))


@pytest.fixture
def request_for(
    dynamic_hw: tuple[Path, Path], make_request: Callable[..., ConversionRequest], tmp_path: Path
) -> Callable[..., ConversionRequest]:
    def build(profile: str, **overrides: object) -> ConversionRequest:
        model, data = dynamic_hw
        fields = {"model": model, "calib": data, "eval": None, "out": tmp_path / "out", "name": "dyn"}
        return make_request(profile, **(fields | overrides))

    return build


def test_static_target_names_each_dynamic_dim_and_the_flag(
    request_for: Callable[..., ConversionRequest],
) -> None:
    ran: list[str] = []
    request = request_for("rpi4")
    with pytest.raises(UnsupportedModelError) as info:
        convert(request, progress=lambda i, n, name, s: ran.append(name))
    message = str(info.value)
    assert "input 'x' axis 2 ('height'); input 'x' axis 3 ('width') is dynamic" in message
    assert "profile 'rpi4' builds a tflite artifact, which needs static shapes" in message
    assert "--input-shape x=1,1,HEIGHT,WIDTH" in message
    assert "\n" not in message and set(ran) <= CHEAP_STEPS
    assert not list(request.out.glob("*.efb"))


def test_input_shape_fixes_the_dims_and_the_profile_fixes_the_batch(
    dynamic_hw: tuple[Path, Path],
    key_pair: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    model, data = dynamic_hw
    code = main(
        [
            "convert",
            str(model),
            "--profile",
            "coral-usb",
            "--calib",
            str(data),
            "--out",
            str(tmp_path),
            "--name",
            "dyn",
            "--key",
            str(key_pair[0]),
            "--input-shape",
            "x=?,1,8,8",  # the batch stays dynamic in the float form; the profile fixes it to 1
        ]
    )
    assert code == 0, capsys.readouterr().err
    manifest = verify_bundle(tmp_path / "dyn-1-coral-usb.efb", load_public_key(key_pair[1]))
    (spec,) = manifest.inputs
    assert (spec.shape, spec.float_shape, spec.dtype) == ([1, 8, 8, 1], [None, 1, 8, 8], "uint8")
    assert manifest.target_checks is not None and manifest.target_checks.passed  # static shapes, all mapped


def test_onnx_target_keeps_dynamic_dims(request_for: Callable[..., ConversionRequest]) -> None:
    result = convert(request_for("jetson-nano"))
    (spec,) = result.inputs
    assert spec.shape == [None, 1, None, None] and spec.float_shape == [None, 1, None, None]


def test_fixed_batch_reaches_onnx_quantization(request_for: Callable[..., ConversionRequest]) -> None:
    """A static batch of 1 (from --input-shape) must not break calibration in batches."""
    result = convert(request_for("jetson-orin-nano", input_shapes={"x": (1, 1, 8, 8)}))
    (spec,) = result.inputs
    assert spec.shape == [1, 1, 8, 8] == spec.float_shape
    assert result.target_checks is not None and result.target_checks.passed


@pytest.mark.parametrize(
    ("shapes", "message"),
    [
        ({"image": (1, 1, 8, 8)}, r"--input-shape names \['image'\], but the model's inputs are \['x'\]"),
        ({"x": (1, 8, 8)}, r"input 'x' has 4 dimensions \(\?,1,\?,\?\), the flag gives 3"),
        ({"x": (1, 3, 8, 8)}, r"input 'x' axis 1 is fixed at 1 in the model \(\?,1,\?,\?\); only dynamic"),
        (
            {"x": (4, 1, 8, 8)},
            r"a fixed batch of 4 is not supported .* use 1, or \? to keep the batch dynamic",
        ),
    ],
    ids=["unknown-input", "rank", "fixed-dim", "batch"],
)
def test_bad_input_shapes_are_refused_before_any_work(
    request_for: Callable[..., ConversionRequest], shapes: dict[str, tuple[int, ...]], message: str
) -> None:
    ran: list[str] = []
    with pytest.raises(ConversionError, match=message):
        convert(request_for("rpi4", input_shapes=shapes), progress=lambda i, n, name, s: ran.append(name))
    assert set(ran) <= CHEAP_STEPS


@pytest.mark.parametrize(
    ("text", "parsed"),
    [("x=1,3,96,96", ("x", (1, 3, 96, 96))), ("input.1=?,3,-1,8", ("input.1", (None, 3, None, 8)))],
)
def test_parse_input_shape(text: str, parsed: tuple[str, tuple[int | None, ...]]) -> None:
    assert parse_input_shape(text) == parsed


@pytest.mark.parametrize("text", ["x", "x=", "=1,2", "x=1,a,3", "x=1,0,3", "x=1,,3"])
def test_parse_input_shape_refuses(text: str) -> None:
    with pytest.raises(ConversionError, match=r"NAME=D1,D2,\.\.\. with positive integers"):
        parse_input_shape(text)


def test_a_state_input_whose_batch_is_not_axis_0_is_scored_one_sample_at_a_time(
    make_request: Callable[..., ConversionRequest], tmp_path: Path
) -> None:
    """Recurrent models take their state as [layers, batch, hidden] (the Silero VAD): with --input-shape
    fixing the batch to 1, every run - the fp32 reference too - feeds one sample, not a stack of them."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper

    nodes = [
        helper.make_node("Squeeze", ["h", "zero"], ["state"]),
        helper.make_node("Add", ["x", "state"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "state",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4]),
            helper.make_tensor_value_info("h", TensorProto.FLOAT, [1, "batch", 4]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor("zero", TensorProto.INT64, [1], [0])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "state.onnx"))
    rng = np.random.default_rng(0)
    data = {
        "x": rng.normal(size=(24, 4)).astype(np.float32),
        "h": rng.normal(size=(24, 1, 4)).astype(np.float32),
    }
    np.savez(tmp_path / "data.npz", **data)
    request = make_request(
        "jetson-nano",
        model=tmp_path / "state.onnx",
        calib=tmp_path / "data.npz",
        eval=tmp_path / "data.npz",
        out=tmp_path / "out",
        name="state",
        input_shapes={"x": (1, 4), "h": (1, 1, 4)},
        output_kinds={"y": "tensor"},
    )
    result = convert(request)
    assert result.metrics.accuracy is not None and result.metrics.accuracy.sqnr_db is not None
    assert result.metrics.accuracy.sqnr_db > 40
