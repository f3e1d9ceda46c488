"""Request validation on both serving paths, on real models: OIP JSON (dtype, shape, values) and the size
limit of MQTT payloads (also for .npz files that only grow past it once unpacked)."""

from __future__ import annotations

import io
import json
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest
from support_bundles import fp32_manifest
from tiny_tflite import build_tiny_int8_model

from edgefleet.agent import oip
from edgefleet.agent.backends.litert import LiteRtBackend
from edgefleet.agent.backends.ort import OnnxRuntimeBackend
from edgefleet.agent.inference import InferenceService
from edgefleet.agent.model_slot import LoadedModel
from edgefleet.contract.errors import TensorError
from edgefleet.contract.manifest import BundleManifest, ConversionMetrics, QuantParams, TensorSpec
from edgefleet.contract.profiles import Engine, RuntimeSpec
from edgefleet.contract.tensors import encode_npy, quantize


def _manifest(inputs: list[TensorSpec], outputs: list[TensorSpec]) -> BundleManifest:
    return BundleManifest(
        name="tiny", version="3", profile="rpi4", format="tflite", precision="int8", artifact="model.tflite",
        inputs=inputs, outputs=outputs, files=[],
        metrics=ConversionMetrics(size_bytes_fp32=1, size_bytes_artifact=1, host_latency_ms_fp32=1,
                                  host_latency_ms_artifact=1, host_runtime="test"),
        converter_version="test", created_at=datetime.now(timezone.utc),
    )  # fmt: skip


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    tiny = build_tiny_int8_model(tmp_path_factory.mktemp("tflite") / "tiny.tflite")
    quant_in = QuantParams(scale=tiny.in_scale, zero_point=tiny.in_zero_point)
    quant_out = QuantParams(scale=tiny.out_scale, zero_point=tiny.out_zero_point)
    manifest = _manifest(
        [TensorSpec(name="x", dtype="int8", shape=[None, 64], float_shape=[None, 64], quantization=quant_in)],
        [
            TensorSpec(
                name="y", dtype="int8", shape=[None, 10], float_shape=[None, 10], quantization=quant_out
            )
        ],
    )
    backend = LiteRtBackend(tiny.path, RuntimeSpec(engine=Engine.LITERT, delegates=("xnnpack",)))
    return LoadedModel("1" * 64, manifest, backend)


def _request(*inputs: dict[str, object]) -> oip.InferRequest:
    return oip.parse_request(json.dumps({"inputs": list(inputs)}).encode())


def test_oip_float_and_int8_forms_give_what_the_mqtt_path_gives(
    tiny_model: LoadedModel,
) -> None:
    model = tiny_model
    x = np.random.default_rng(1).normal(0, 2, size=(3, 64)).astype(np.float32)
    spec = model.manifest.inputs[0]
    for array, datatype in ((x, "FP32"), (quantize(x, spec), "INT8")):
        request = _request(
            {"name": "x", "shape": [3, 64], "datatype": datatype, "data": array.ravel().tolist()}
        )
        arrays = oip.input_arrays(request, model.manifest.inputs)
        assert arrays["x"].dtype == array.dtype and np.array_equal(arrays["x"], array)
        outputs = InferenceService.compute_tensors(model, arrays)
        response, json_length = oip.infer_response("tiny", "3", None, outputs, ["y"])
        assert json_length is None
        body = json.loads(response)
        (out,) = body["outputs"]
        assert (out["datatype"], out["shape"]) == ("FP32" if datatype == "FP32" else "INT8", [3, 10])
        via_mqtt = InferenceService.compute(model, encode_npy(array), "application/x-npy")["y"]
        assert np.array_equal(np.asarray(out["data"], dtype=via_mqtt.dtype).reshape(3, 10), via_mqtt)
    assert oip.model_metadata(model.manifest) == {
        "name": "tiny",
        "versions": ["3"],
        "platform": "litert_tflite",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 64]}],
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 10]}],
    }


@pytest.mark.parametrize(
    ("item", "message"),
    [
        (
            {"datatype": "INT8", "data": [300] + [0] * 62 + [-200]},
            "input 'x': values -200..300 do not fit datatype INT8 (-128..127)",
        ),
        (
            {"datatype": "INT8", "data": [1.5] * 64},
            "input 'x': datatype INT8 needs integers, got float64 data",
        ),
        (
            {"datatype": "UINT8"},
            "input 'x': expected FP32 [-1,64] or INT8 [-1,64] (-1: any size); got UINT8 [1,64]",
        ),
        (
            {"shape": [1, 8, 8]},
            "input 'x': expected FP32 [-1,64] or INT8 [-1,64] (-1: any size); got FP32 [1,8,8]",
        ),
        ({"shape": [1, -64]}, "input 'x': shape [1,-64] has a negative dimension"),
        ({"data": 5}, "input 'x': data must be a JSON array of numbers"),
        ({"data": [True] * 64, "datatype": "INT8"}, "input 'x': datatype INT8 needs integers, got bool data"),
    ],
)
def test_oip_input_errors_say_what_was_wrong(
    tiny_model: LoadedModel, item: dict[str, object], message: str
) -> None:
    model = tiny_model
    good: dict[str, object] = {"name": "x", "shape": [1, 64], "datatype": "FP32", "data": [0.5] * 64}
    with pytest.raises(oip.OipError) as caught:
        oip.input_arrays(_request({**good, **item}), model.manifest.inputs)
    assert str(caught.value) == message and caught.value.status == 400


def test_oip_request_level_errors(tiny_model: LoadedModel) -> None:
    model = tiny_model
    good = {"name": "x", "shape": [1, 64], "datatype": "FP32", "data": [0.5] * 64}
    with pytest.raises(oip.OipError, match=r"input 'x' is given more than once"):
        oip.input_arrays(_request(good, good), model.manifest.inputs)
    with pytest.raises(oip.OipError, match=r"infer request: inputs\.0\.shape: Field required"):
        oip.parse_request(json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "data": []}]}).encode())
    with pytest.raises(oip.OipError) as caught:
        oip.infer_response("m", "1", "id", {"y": np.array([np.nan], np.float32)}, ["y"])
    assert caught.value.status == 500 and "NaN or infinity" in str(caught.value)


def test_mqtt_payload_limits_hold_for_raw_and_packed_payloads(reference_dir: Path) -> None:
    backend = OnnxRuntimeBackend(reference_dir / "digits_cnn_v1.onnx", RuntimeSpec(engine=Engine.ONNXRUNTIME))
    model = LoadedModel("2" * 64, fp32_manifest("test-onnx", "1"), backend)
    images = np.load(reference_dir / "eval.npz")["image"][:300]  # 300 x 64 float32 = 76800 bytes
    limit = 64 * 1024
    with pytest.raises(
        TensorError, match=rf"request payload is \d+ bytes, more than .* limit of {limit} bytes"
    ):
        InferenceService.compute(model, encode_npy(images), "application/x-npy", max_bytes=limit)
    packed = io.BytesIO()
    np.savez_compressed(packed, image=np.zeros((300, 1, 8, 8), np.float32))
    assert len(packed.getvalue()) < limit
    with pytest.raises(TensorError, match=r"the unpacked \.npz payload is \d+ bytes"):
        InferenceService.compute(model, packed.getvalue(), "application/x-npz", max_bytes=limit)
    within = InferenceService.compute(model, encode_npy(images[:200]), "application/x-npy", max_bytes=limit)
    assert within["logits"].shape == (200, 10)
    model.close()


def _binary_body(inputs: list[tuple[dict[str, object], bytes]], **fields: object) -> tuple[bytes, int]:
    head = json.dumps({"inputs": [item for item, _ in inputs], **fields}).encode()
    return head + b"".join(blob for _, blob in inputs), len(head)


def test_binary_tensor_data_in_both_directions(tiny_model: LoadedModel) -> None:
    """Triton's binary extension: raw little-endian input after the JSON, raw output on request."""
    model = tiny_model
    q_in = np.random.default_rng(7).integers(-128, 128, size=(2, 64), dtype=np.int8)
    item = {"name": "x", "shape": [2, 64], "datatype": "INT8", "parameters": {"binary_data_size": 128}}
    body, json_length = _binary_body([(item, q_in.tobytes())], parameters={"binary_data_output": True})
    request = oip.parse_request(body, json_length)
    arrays = oip.input_arrays(request, model.manifest.inputs)
    assert np.array_equal(arrays["x"], q_in)
    outputs = InferenceService.compute_tensors(model, arrays)
    response, head_length = oip.infer_response(
        "tiny", "3", None, outputs, ["y"], oip.binary_outputs(request, ["y"])
    )
    assert head_length is not None
    (entry,) = json.loads(response[:head_length])["outputs"]
    assert entry == {
        "name": "y",
        "datatype": "INT8",
        "shape": [2, 10],
        "parameters": {"binary_data_size": 20},
    }
    via_mqtt = InferenceService.compute(model, encode_npy(q_in), "application/x-npy")["y"]
    assert np.array_equal(np.frombuffer(response[head_length:], np.int8).reshape(2, 10), via_mqtt)

    # a per-output binary_data overrides the request-wide default
    plain = {"name": "x", "shape": [1, 64], "datatype": "FP32", "data": [0.0] * 64}
    mixed = oip.parse_request(
        json.dumps(
            {
                "inputs": [plain],
                "parameters": {"binary_data_output": True},
                "outputs": [{"name": "y", "parameters": {"binary_data": False}}],
            }
        ).encode()
    )
    assert oip.binary_outputs(mixed, ["y"]) == set()
    assert oip.binary_outputs(_request(plain), ["y"]) == set()


@pytest.mark.parametrize(
    ("size", "extra", "message"),
    [
        (100, b"", "input 'x': binary_data_size 100 runs past the end of the binary data (64 bytes left)"),
        (64, b"\0", "1 bytes after the JSON belong to no input's binary_data_size"),
        (-1, b"", "input 'x': binary_data_size must be a byte count, got -1"),
    ],
)
def test_binary_tensor_data_errors(size: int, extra: bytes, message: str) -> None:
    item = {"name": "x", "shape": [1, 64], "datatype": "INT8", "parameters": {"binary_data_size": size}}
    body, json_length = _binary_body([(item, bytes(64) + extra)])
    with pytest.raises(oip.OipError) as caught:
        oip.parse_request(body, json_length)
    assert str(caught.value) == message


def test_binary_size_must_match_the_shape(tiny_model: LoadedModel) -> None:
    item = {"name": "x", "shape": [2, 64], "datatype": "INT8", "parameters": {"binary_data_size": 64}}
    body, json_length = _binary_body([(item, bytes(64))])
    request = oip.parse_request(body, json_length)
    with pytest.raises(
        oip.OipError, match=r"input 'x': binary_data_size is 64 bytes; INT8 \[2,64\] takes 128"
    ):
        oip.input_arrays(request, tiny_model.manifest.inputs)
    with pytest.raises(oip.OipError, match=r"Inference-Header-Content-Length is 999, more than the"):
        oip.parse_request(body, 999)
