"""Low-rank factorization of ONNX graphs: fewer MACs on a Gemm-heavy model at a bounded accuracy cost,
exact on a rank-deficient 1x1 conv, and layers where it would not pay are left alone (real onnxruntime)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgefleet.converter.compression.lowrank import energy_rank, low_rank_factorize
from edgefleet.converter.compression.stats import count_macs
from edgefleet.converter.context import ConversionRequest
from edgefleet.converter.pipeline import convert

# whole conversions or training runs: the full suite runs them, the fast lane (-m "not slow") does not
pytestmark = pytest.mark.slow

IR_VERSION = 8  # what onnxruntime 1.31 loads


def _run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[0]


@pytest.fixture(scope="module")
def mlp(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A 64-256-256-10 MLP trained on the digits by scikit-learn, written as an ONNX Gemm graph."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    from sklearn.neural_network import MLPClassifier

    digits = load_digits()
    x = (digits.data / 16).astype(np.float32)
    x_train, x_test, y_train, y_test = train_test_split(
        x, digits.target, test_size=0.2, random_state=0, stratify=digits.target
    )
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):  # BLAS threads fighting over 2 busy cores made this 10x slower
        classifier = MLPClassifier((256, 256), max_iter=60, random_state=0).fit(x_train, y_train)
    nodes, weights, previous = [], [], "x"
    for index, (w, b) in enumerate(zip(classifier.coefs_, classifier.intercepts_, strict=True)):
        weights += [
            numpy_helper.from_array(w.astype(np.float32), f"w{index}"),
            numpy_helper.from_array(b.astype(np.float32), f"b{index}"),
        ]
        nodes.append(
            helper.make_node("Gemm", [previous, f"w{index}", f"b{index}"], [f"fc{index}"], name=f"fc{index}")
        )
        previous = f"fc{index}"
        if index < len(classifier.coefs_) - 1:
            nodes.append(helper.make_node("Relu", [previous], [f"relu{index}"]))
            previous = f"relu{index}"
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 64])],
        [helper.make_tensor_value_info(previous, TensorProto.FLOAT, ["batch", 10])],
        weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=IR_VERSION)
    out = tmp_path_factory.mktemp("mlp")
    onnx.save(model, str(out / "mlp.onnx"))
    np.savez(out / "calib.npz", x=x_train[:200])
    np.savez(out / "eval.npz", x=x_test, y=y_test)
    return {"model": out / "mlp.onnx", "calib": out / "calib.npz", "eval": out / "eval.npz"}


def test_energy_rank() -> None:
    singular = np.array([4.0, 3.0])  # energies 16/25 and 9/25
    assert energy_rank(singular, 0.5) == 1
    assert energy_rank(singular, 0.64) == 1
    assert energy_rank(singular, 0.65) == 2
    assert energy_rank(singular, 1.0) == 2


def test_gemm_heavy_model_gets_fewer_macs_at_bounded_accuracy_loss(
    make_request: Callable[..., ConversionRequest], mlp: dict[str, Path]
) -> None:
    request = make_request(
        "jetson-orin-nano", model=mlp["model"], name="mlp", calib=mlp["calib"], eval=mlp["eval"], low_rank=0.9
    )
    result = convert(request)
    (report,) = result.compression
    assert report.method == "low_rank"
    assert report.after.macs < report.before.macs and report.after.params < report.before.params
    assert report.accuracy_drop_points is not None and report.accuracy_drop_points <= 2.0
    applied = [line for line in report.layers if "skipped" not in line]
    skipped = [line for line in report.layers if "skipped" in line]
    assert applied and skipped  # the 256x10 output layer would save too little at the rank it needs
    assert all("256x10" in line for line in skipped)
    assert result.metrics.accuracy is not None and result.metrics.accuracy.fp32 == report.after.accuracy


def test_layers_that_would_not_save_macs_are_left_alone(mlp: dict[str, Path]) -> None:
    model = onnx.load(str(mlp["model"]))
    factorized, decisions = low_rank_factorize(model, 0.999)
    assert decisions and not any(d.applied for d in decisions)
    assert [n.op_type for n in factorized.graph.node] == [n.op_type for n in model.graph.node]
    assert count_macs(factorized) == count_macs(model)


def _conv_model(weight: np.ndarray, bias: np.ndarray, **attrs: object) -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w", "b"], ["y"], name="pointwise", **attrs)],
        "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, weight.shape[1], 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, weight.shape[0], "h", "w"])],
        [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=IR_VERSION)


@pytest.mark.parametrize("attrs", [{}, {"strides": [2, 2], "pads": [1, 1, 1, 1]}])
def test_rank_deficient_1x1_conv_is_factorized_exactly(attrs: dict[str, object]) -> None:
    rng = np.random.default_rng(0)
    low_rank = rng.normal(size=(48, 2)) @ rng.normal(size=(2, 32))  # [C_out, C_in] of rank 2
    weight = low_rank.astype(np.float32)[:, :, None, None]
    model = _conv_model(weight, rng.normal(size=48).astype(np.float32), kernel_shape=[1, 1], **attrs)
    factorized, (decision,) = low_rank_factorize(model, 0.99)
    assert decision.applied and decision.rank == 2
    assert count_macs(factorized) < 0.2 * count_macs(model)
    x = rng.normal(size=(1, 32, 6, 6)).astype(np.float32)
    np.testing.assert_allclose(_run(factorized, {"x": x}), _run(model, {"x": x}), atol=1e-4)


def test_3x3_and_grouped_convs_are_not_candidates() -> None:
    rng = np.random.default_rng(0)
    conv3 = _conv_model(
        rng.normal(size=(8, 8, 3, 3)).astype(np.float32), np.zeros(8, np.float32), pads=[1] * 4
    )
    grouped = _conv_model(rng.normal(size=(8, 1, 1, 1)).astype(np.float32), np.zeros(8, np.float32), group=8)
    for model in (conv3, grouped):
        _, decisions = low_rank_factorize(model, 0.5)
        assert decisions == []


@pytest.mark.parametrize("attrs", [{"pads": [1, 1, 1, 1]}, {"strides": [2, 2], "pads": [1, 1, 1, 1]}])
def test_a_low_rank_3x3_conv_gets_an_exact_tucker2_decomposition(attrs: dict[str, object]) -> None:
    """A 3x3 convolution whose weight has ranks 4 (outputs) x 3 (inputs) becomes projection, core and
    expansion convolutions with the same outputs (padding and stride kept) and fewer MACs."""
    rng = np.random.default_rng(0)
    core = rng.normal(size=(4, 3, 3, 3))
    weight = np.einsum("abrs,ka,cb->kcrs", core, rng.normal(size=(48, 4)), rng.normal(size=(32, 3)))
    model = _conv_model(
        weight.astype(np.float32), rng.normal(size=48).astype(np.float32), kernel_shape=[3, 3], **attrs
    )
    factorized, (decision,) = low_rank_factorize(model, 0.999, convolutions=True)
    assert decision.applied and decision.ranks == (4, 3)  # type: ignore[union-attr]
    assert [n.op_type for n in factorized.graph.node] == ["Conv", "Conv", "Conv"]
    assert count_macs(factorized) < 0.2 * count_macs(model)
    x = rng.normal(size=(1, 32, 6, 6)).astype(np.float32)
    np.testing.assert_allclose(_run(factorized, {"x": x}), _run(model, {"x": x}), rtol=1e-4, atol=1e-3)
    assert "Tucker-2 ranks 4x3, MACs per position 13824 -> " in decision.describe()


def test_a_full_rank_3x3_conv_is_left_alone_and_only_when_asked() -> None:
    rng = np.random.default_rng(0)
    model = _conv_model(
        rng.normal(size=(8, 8, 3, 3)).astype(np.float32), np.zeros(8, np.float32), pads=[1] * 4
    )
    assert low_rank_factorize(model, 0.99)[1] == []  # SVD alone: not a candidate
    factorized, (decision,) = low_rank_factorize(model, 0.99, convolutions=True)
    assert not decision.applied and "skipped, Tucker-2 ranks" in decision.describe()
    assert count_macs(factorized) == count_macs(model)


def test_low_rank_conv_through_convert(make_request: Callable[..., ConversionRequest]) -> None:
    from edgefleet.converter.errors import ConversionError

    result = convert(make_request("jetson-nano", name="tucker", low_rank=0.9, low_rank_conv=True))
    (report,) = result.compression
    assert report.setting.endswith("(SVD, Tucker-2 on KxK convolutions)")
    assert any("Tucker-2 ranks" in line for line in report.layers)  # the 3x3 convs were candidates
    with pytest.raises(ConversionError, match="--low-rank-conv extends --low-rank"):
        convert(make_request("jetson-nano", low_rank_conv=True))
