"""FP16 that holds: BatchNorms folded into their Convs before casting, and nodes whose weights or calibrated
values exceed float16's range kept in float32 by name (the summary names them).

Measured here (jetson-nano): Conv + BatchNorm with running variance 1e8: output SQNR -29.5 dB with a plain
float16 cast -> ~70 dB; a ReLU activation reaching ~1e6 (weights 1e6, clipped too): 31 dB -> 100 dB (capped).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
import real_graphs
import torch
from onnxruntime.transformers.float16 import convert_float_to_float16
from test_precision_int8 import build_artifact

from edgefleet.converter.context import ConversionRequest
from edgefleet.converter.steps.fp16_onnx import fold_batchnorm
from edgefleet.converter.steps.layer_error import sqnr_db
from edgefleet.converter.steps.runners import OnnxRunner
from edgefleet.reference_models import reference_model_dir


def _plain_fp16_sqnr(model: onnx.ModelProto, data: np.ndarray) -> float:
    cast = convert_float_to_float16(model, keep_io_types=True)
    reference = OnnxRunner(model.SerializeToString()).run([data])[0]
    return sqnr_db(reference, OnnxRunner(cast.SerializeToString()).run([data])[0])


def _convert(
    make_request: Callable[..., ConversionRequest], model: Path, data: np.ndarray, tmp_path: Path
) -> tuple[float, list[str]]:
    calib, evaluation = real_graphs.save_sets(tmp_path / "data", data[:32], data[32:])
    request = make_request("jetson-nano", model=model, calib=calib, eval=evaluation, out=tmp_path / "out")
    ctx = build_artifact(request, tmp_path / "work")
    artifact = OnnxRunner(ctx.need(ctx.artifact_path, "artifact")).run([data[32:]])[0]
    return sqnr_db(OnnxRunner(model).run([data[32:]])[0], artifact), ctx.notes


def test_batchnorm_variance_beyond_fp16_is_folded_into_the_conv(
    make_request: Callable[..., ConversionRequest], tmp_path: Path
) -> None:
    data = real_graphs.image_data(64, 16)
    model = real_graphs.bn_overflow(variance=1e8)
    path = tmp_path / "bn.onnx"
    onnx.save(model, str(path))
    assert _plain_fp16_sqnr(model, data[32:]) < 0  # the variance clips to 65504: garbage
    folded, names = fold_batchnorm(model)
    assert names == ["/bn/BatchNormalization"]
    assert [n.op_type for n in folded.graph.node][:2] == ["Conv", "Relu"]
    sqnr, notes = _convert(make_request, path, data, tmp_path)
    print(f"BatchNorm variance 1e8: fp16 output SQNR -> {sqnr:.1f} dB")
    assert sqnr > 40
    assert any("folded 1 BatchNormalization" in note for note in notes)


def test_activations_beyond_fp16_stay_float32_and_are_named(
    make_request: Callable[..., ConversionRequest], tmp_path: Path
) -> None:
    data = real_graphs.image_data(64, 16)
    path = real_graphs.export(
        real_graphs.activation_overflow(gain=1e6), torch.from_numpy(data[:1]), tmp_path / "act.onnx"
    )
    plain = _plain_fp16_sqnr(onnx.load(str(path)), data[32:])
    sqnr, notes = _convert(make_request, path, data, tmp_path)
    print(f"activations past 65504: fp16 output SQNR {plain:.1f} -> {sqnr:.1f} dB")
    assert sqnr > max(40, plain + 20)
    kept = next(note for note in notes if "exceed float16's range" in note)
    assert "/0/Conv" in kept and "/2/Conv" in kept  # the producer and the consumer of the large tensor


def test_a_gru_whose_fp16_form_crashes_onnxruntime_keeps_its_neighbourhood_float32(
    make_request: Callable[..., ConversionRequest], tmp_path: Path
) -> None:
    """onnxruntime 1.31 segfaults opening the plain float16 form of the corpus' audio GRU (a crash that would
    take the converter, and on a device the agent, down): the converter probes the load in a child process
    and keeps the GRU and the nodes around it in float32 until it loads."""
    from edgefleet.converter.steps.fp16_onnx import loads_without_crashing

    model = reference_model_dir() / "corpus" / "audio_gru.onnx"
    plain = tmp_path / "plain_fp16.onnx"
    onnx.save(convert_float_to_float16(onnx.load(str(model)), keep_io_types=True), str(plain))
    if loads_without_crashing(plain):
        pytest.skip("this onnxruntime opens the plain float16 GRU: the crash this guards against is fixed")
    data = np.random.default_rng(0).normal(0, 1, (48, 40, 100)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", log_mel=data[:32])
    request = make_request(
        "jetson-nano", model=model, calib=tmp_path / "calib.npz", eval=None, out=tmp_path / "out"
    )
    ctx = build_artifact(request, tmp_path / "work")
    artifact = ctx.need(ctx.artifact_path, "artifact")
    assert loads_without_crashing(artifact)
    got = OnnxRunner(artifact).run([data[32:]])[0]
    assert sqnr_db(OnnxRunner(model).run([data[32:]])[0], got) > 40
    assert any("recurrent layers in float32" in note for note in ctx.notes)


def test_only_float32_round_trips_through_float16_are_removed() -> None:
    from onnx import TensorProto, helper

    from edgefleet.converter.steps.fp16_onnx import drop_round_trips

    def chain(source_type: int) -> onnx.ModelProto:
        nodes = [
            helper.make_node("Cast", ["x"], ["half"], to=TensorProto.FLOAT16),
            helper.make_node("Cast", ["half"], ["back"], to=TensorProto.FLOAT),
            helper.make_node("Relu", ["back"], ["y"]),
        ]
        graph = helper.make_graph(
            nodes,
            "g",
            [helper.make_tensor_value_info("x", source_type, [2])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
        )
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])

    floats = chain(TensorProto.FLOAT)
    drop_round_trips(floats)
    assert [n.op_type for n in floats.graph.node] == ["Relu"] and floats.graph.node[0].input[0] == "x"
    integers = chain(TensorProto.INT64)  # a Range's integers: the Casts are conversions, not a round trip
    drop_round_trips(integers)
    assert [n.op_type for n in integers.graph.node] == ["Cast", "Cast", "Relu"]
