"""The committed architecture corpus (reference_models/corpus/: ONNX models, torch reference outputs) and data
corpus_data.py generates for it: ops, onnxruntime runs, shapes, determinism, task accuracy (no training)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from functools import cache
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from edgefleet.reference_models.corpus_data import (
    MODELS,
    SAMPLES,
    corpus_data,
    corpus_dir,
    corpus_files,
    corpus_split,
    labelled_set,
    model_data,
    write_corpus_data,
)

# whole conversions or training runs: the full suite runs them, the fast lane (-m "not slow") does not
pytestmark = pytest.mark.slow

NAMES = sorted(MODELS)
MAX_ONNX_BYTES = 3 * 1024 * 1024
MAX_REFERENCE_BYTES = 200 * 1024


@cache
def session(name: str) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # shared CI cores; these models are small
    return ort.InferenceSession(str(corpus_files(name).onnx), options, providers=["CPUExecutionProvider"])


@cache
def generated(name: str) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """corpus_data(name), once per test session (well under a second per model)."""
    return corpus_data(name)


def run(name: str, x: np.ndarray) -> np.ndarray:
    """The model's output on `x` in onnxruntime, 16 samples at a time."""
    feed = model_data(name).input_name
    return np.concatenate([session(name).run(None, {feed: x[i : i + 16]})[0] for i in range(0, len(x), 16)])


def constants(graph: onnx.GraphProto) -> set[str]:
    """Names of initializers and Constant outputs: what is not an activation."""
    names = {init.name for init in graph.initializer}
    names.update(out for node in graph.node if node.op_type == "Constant" for out in node.output)
    return names


def attribute(node: onnx.NodeProto, name: str) -> object:
    for attr in node.attribute:
        if attr.name == name:
            return onnx.helper.get_attribute_value(attr)
    return None


def ops(graph: onnx.GraphProto) -> Counter[str]:
    return Counter(node.op_type for node in graph.node)


def depthwise_kernels(graph: onnx.GraphProto) -> set[int]:
    """Kernel sizes of grouped 2-D convs whose group count equals their output channels."""
    weights = {init.name: init for init in graph.initializer}
    kernels = set()
    for node in graph.node:
        group = attribute(node, "group") or 1
        if node.op_type == "Conv" and group > 1 and weights[node.input[1]].dims[0] == group:
            kernels.add(int(weights[node.input[1]].dims[2]))
    return kernels


def activation_matmuls(graph: onnx.GraphProto) -> int:
    fixed = constants(graph)
    return sum(1 for n in graph.node if n.op_type == "MatMul" and not set(n.input) & fixed)


def conv_ranks(graph: onnx.GraphProto) -> set[int]:
    return {len(attribute(n, "kernel_shape") or []) for n in graph.node if n.op_type == "Conv"}


def check_mobilenetv3_small(graph: onnx.GraphProto) -> None:
    found = ops(graph)
    assert found["HardSwish"] >= 5 and found["HardSigmoid"] >= 5, found  # hard-swish and SE gates
    assert found["Mul"] >= 5 and found["Add"] >= 3, found  # SE scaling and inverted residuals
    assert {3, 5} <= depthwise_kernels(graph)


def check_efficientnet_lite0(graph: onnx.GraphProto) -> None:
    found = ops(graph)
    assert found["Clip"] >= 10 and found["Add"] >= 3, found  # ReLU6 and MBConv residuals
    assert not {"Sigmoid", "HardSigmoid", "HardSwish"} & set(found), found  # lite: no SE, no swish
    assert {3, 5} <= depthwise_kernels(graph)


def check_yolo_style_det(graph: onnx.GraphProto) -> None:
    found = ops(graph)
    yolo_ops = ("Split", "MaxPool", "Resize", "Concat", "Reshape", "Transpose", "Softmax", "Sub", "Add")
    for op in (*yolo_ops, "Div"):
        assert found[op] >= 1, (op, found)
    assert found["Split"] == 8 + 2, found  # one per C2f, plus box/class and left-top/right-bottom
    assert found["Sigmoid"] >= 2 and found["Mul"] >= 2, found  # SiLU everywhere plus the class scores
    resize = next(n for n in graph.node if n.op_type == "Resize")
    assert attribute(resize, "mode") == b"nearest"
    softmax = next(n for n in graph.node if n.op_type == "Softmax")
    assert attribute(softmax, "axis") == 1  # over the 16 DFL bins after the Transpose


def check_dbnet_seg(graph: onnx.GraphProto) -> None:
    found = ops(graph)
    assert found["ConvTranspose"] == 2 and found["Concat"] >= 1 and found["Sigmoid"] == 1, found
    modes = {attribute(n, "mode") for n in graph.node if n.op_type == "Resize"}
    assert modes == {b"linear"} and found["Resize"] >= 3, (modes, found)


def check_tiny_vit(graph: onnx.GraphProto) -> None:
    found = ops(graph)
    assert found["LayerNormalization"] == 9 or found["ReduceMean"] >= 18, found
    assert found["Erf"] >= 4 or found["Gelu"] >= 4, found
    assert found["Softmax"] == 4, found
    assert activation_matmuls(graph) == 8  # Q x K^T and attention x V in each of the 4 blocks


def check_audio_gru(graph: onnx.GraphProto) -> None:
    found = ops(graph)
    assert found["GRU"] == 1 and conv_ranks(graph) == {1}, found


def check_audio_conv1d(graph: onnx.GraphProto) -> None:
    found = ops(graph)
    assert not {"GRU", "LSTM", "RNN", "Loop", "Scan"} & set(found), found
    assert found["Conv"] >= 8 and conv_ranks(graph) == {1}, found


CHECKS = {
    "mobilenetv3_small": check_mobilenetv3_small,
    "efficientnet_lite0": check_efficientnet_lite0,
    "yolo_style_det": check_yolo_style_det,
    "dbnet_seg": check_dbnet_seg,
    "tiny_vit": check_tiny_vit,
    "audio_gru": check_audio_gru,
    "audio_conv1d": check_audio_conv1d,
}


def test_every_architecture_has_op_checks() -> None:
    assert set(CHECKS) == set(MODELS)


def test_data_specs_match_the_architectures() -> None:
    pytest.importorskip("torch")
    from edgefleet.reference_models.architectures import ARCHITECTURES

    assert set(ARCHITECTURES) == set(MODELS)
    for name, spec in ARCHITECTURES.items():
        data = MODELS[name]
        assert (data.input_name, data.input_shape, data.output_name, data.task) == (
            spec.input_name,
            spec.input_shape,
            spec.output_name,
            spec.task,
        )


def test_only_models_and_small_references_are_committed() -> None:
    files = {path.name: path.stat().st_size for path in corpus_dir().iterdir() if path.is_file()}
    for name in NAMES:
        assert files.pop(f"{name}.onnx") < MAX_ONNX_BYTES
        assert files.pop(f"{name}_reference.npz") < MAX_REFERENCE_BYTES
    files.pop("corpus.json", None)
    assert not files, f"unexpected files in corpus/ (data is generated, see corpus_data.py): {files}"


@pytest.mark.parametrize("name", NAMES)
def test_corpus_model_has_its_architecture_ops(name: str) -> None:
    model = onnx.load(str(corpus_files(name).onnx))
    assert model.opset_import[0].version == 17
    CHECKS[name](model.graph)


@pytest.mark.parametrize("name", NAMES)
def test_corpus_model_matches_torch_and_takes_any_batch(name: str) -> None:
    spec = model_data(name)
    (model_input,) = session(name).get_inputs()
    assert model_input.name == spec.input_name
    assert not isinstance(model_input.shape[0], int)  # dynamic batch axis
    assert [o.name for o in session(name).get_outputs()] == [spec.output_name]
    with np.load(corpus_files(name).reference) as reference:
        inputs, expected = reference["input"], reference["output"]
    # Float reassociation only: 1e-5 of the output's scale (the detector's boxes are in pixels, up to 160).
    tolerance = 1e-5 * max(1.0, float(np.abs(expected).max()))
    single = session(name).run(None, {spec.input_name: inputs[:1]})[0]
    assert np.abs(single - expected[:1]).max() <= tolerance
    pair = session(name).run(None, {spec.input_name: inputs})[0]
    assert np.abs(pair - expected).max() <= tolerance


@pytest.mark.parametrize("name", NAMES)
def test_generated_data_fits_the_model(name: str) -> None:
    spec = model_data(name)
    calib, evaluation = generated(name)
    for arrays in (calib, evaluation):
        x = arrays[spec.input_name]
        assert x.dtype == np.float32 and x.shape == (SAMPLES, *spec.input_shape[1:])
        assert np.isfinite(x).all() and x.std() > 0.1
    expected_keys = {spec.input_name, "y"} if spec.task == "classification" else {spec.input_name}
    assert set(evaluation) == expected_keys and set(calib) == {spec.input_name}
    if spec.task == "classification":
        assert evaluation["y"].dtype == np.int64 and len(set(evaluation["y"].tolist())) >= 5
    # Held out from each other: no sample of one set appears in the other.
    calib_samples = {sample.tobytes() for sample in calib[spec.input_name]}
    assert not calib_samples & {sample.tobytes() for sample in evaluation[spec.input_name]}
    # Deterministic across processes and time: the same samples the models were built and recorded with
    # (make_corpus.py stored the first two in the reference file); tolerance for last-ulp libm differences.
    with np.load(corpus_files(name).reference) as reference:
        np.testing.assert_allclose(evaluation[spec.input_name][:2], reference["input"], rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", [n for n in NAMES if MODELS[n].task == "classification"])
def test_classifiers_recognize_the_generated_photos(name: str) -> None:
    """Top-1 on the generated eval set in onnxruntime: the data is the task the models were trained on."""
    _, evaluation = generated(name)
    logits = run(name, evaluation[model_data(name).input_name])
    assert (logits.argmax(1) == evaluation["y"]).mean() >= 0.8


@pytest.mark.parametrize("name", [n for n in NAMES if MODELS[n].task == "frame-events"])
def test_audio_models_detect_the_generated_events(name: str) -> None:
    x, frame_labels = labelled_set(name, "eval")
    predicted, target = run(name, x) > 0.5, np.asarray(frame_labels) > 0.5
    assert 2 * (predicted & target).sum() / (predicted.sum() + target.sum()) >= 0.8  # frame F1


def test_sets_are_prefixes_of_one_stream() -> None:
    """Any sample count gives the first n samples of the same stream (blocks of 64 from the split's seed)."""
    name = "tiny_vit"
    _, evaluation = generated(name)
    few = corpus_split(name, "eval", 3)
    assert np.array_equal(few["pixel_values"], evaluation["pixel_values"][:3])
    assert np.array_equal(few["y"], evaluation["y"][:3])
    more = corpus_split(name, "eval", SAMPLES + 6)
    assert more["pixel_values"].shape[0] == SAMPLES + 6 and len(more["y"]) == SAMPLES + 6
    assert np.array_equal(more["pixel_values"][:SAMPLES], evaluation["pixel_values"])


def test_npz_files_are_written_and_materialized(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    name = "audio_conv1d"
    calib, evaluation = generated(name)
    calib_path, eval_path = write_corpus_data(name, tmp_path / "out", samples=5)
    with np.load(calib_path) as saved:
        assert saved.files == ["log_mel"] and np.array_equal(saved["log_mel"], calib["log_mel"][:5])
    with np.load(eval_path) as saved:
        assert np.array_equal(saved["log_mel"], evaluation["log_mel"][:5])
    # The old file API keeps working: corpus_files(name).calib/.eval are written on first access.
    monkeypatch.setenv("EDGEFLEET_CORPUS_DATA", str(tmp_path / "cache"))
    files = corpus_files(name)
    assert files.calib == tmp_path / "cache" / f"{name}_calib.npz"
    with np.load(files.eval) as saved:
        assert np.array_equal(saved["log_mel"], evaluation["log_mel"])


def test_data_generation_needs_no_torch() -> None:
    code = (
        "import sys\n"
        "from edgefleet.reference_models.corpus_data import corpus_split\n"
        "corpus_split('tiny_vit', 'eval', 1); corpus_split('audio_gru', 'calib', 1)\n"
        "assert 'torch' not in sys.modules, 'corpus_data imported torch'\n"
    )
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=120)
