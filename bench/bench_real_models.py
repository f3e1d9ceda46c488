"""Real-model benchmark: every corpus model (bench/real_models/) x device profile through `edgefleet convert`,
side by side with onnxruntime's quantize_static defaults and, when available, onnx2tf full-integer.

    .venv/bin/python bench/bench_real_models.py [--models a,b] [--profiles rpi4,jetson-nano]
        [--timeout 600] [--json out.json] [--keep DIR] [--no-ort] [--no-onnx2tf] [--data-dir DIR]
    .venv/bin/python bench/bench_real_models.py --table-from DIR [DIR ...]   # stored rows, nothing measured

Per model x profile: converted, budget missed or failed (the first line of why), the converter's own
fidelity (its budget measure and value, read generically from report.json, so new measures show up as
they are added), then this script's own scoring of the artifact against fp32 on the evaluation set
(worst-output SQNR dB, lowest cosine, top-1 agreement of classification outputs), size ratio
artifact/fp32 and convert seconds. Rows `ort-qdq` are onnxruntime `quantize_static` with its defaults
(QDQ, per-tensor, int8 MinMax) calibrated on the same calibration data and scored the same way; rows
`onnx2tf-int8` are onnx2tf -oiqt (full-integer TFLite) run by the Python named in EDGEFLEET_ONNX2TF_PYTHON
(a separate venv, since onnx2tf pins its own tensorflow/numpy: `python3 -m venv /work/onnx2tf-venv &&
/work/onnx2tf-venv/bin/pip install onnx2tf==1.29.24`, which brings tensorflow 2.19.0 and numpy 1.26.4), fed
our calibration data with -cind and a staged sample file so it downloads nothing. Each conversion runs in
its own process, killed after --timeout seconds. QDQ models are scored with exact int8 semantics (QDQ
fusion off), as the converter scores them. Cosine is over the whole evaluation set, like SQNR.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgefleet.reference_models import reference_model_dir

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: bench/ is on sys.path, the repo root is not
    sys.path.insert(0, str(ROOT))

from bench.real_models import corpus  # noqa: E402
from bench.real_models.corpus import CorpusModel, CorpusModelMissing  # noqa: E402

PROFILES = ("rpi4", "rpi5", "coral-usb", "coral-devboard", "jetson-orin-nano", "jetson-nano")
ORT_ROW = "ort-qdq"
ONNX2TF_ROW = "onnx2tf-int8"
DEFAULT_DATA_DIR = Path(tempfile.gettempdir()) / "edgefleet-real-models-data"


@dataclass
class OutputScore:
    output: str
    kind: str
    sqnr_db: float
    cosine: float
    agreement: float | None = None  # top-1 agreement with fp32, %, classification outputs only
    task_metric: str = ""  # the converter's task measure for this kind (top1, detection_f1, mask_iou, ...)
    task_value: float | None = None  # its value, %, computed here on this row's artifact


@dataclass
class Row:
    model: str
    target: str  # a profile name, ORT_ROW or ONNX2TF_ROW
    status: str  # "converted", "budget missed", "failed", "timeout", "skipped"
    why: str = ""
    measure: str = ""  # the converter's budget measure (from report.json)
    fidelity: str = ""  # the converter's value for it
    scores: list[OutputScore] = field(default_factory=list)
    size_ratio: float | None = None
    seconds: float | None = None
    report: dict[str, Any] | None = None  # report.json's budget and outputs sections, as written


# ---- scoring (the same for every artifact) ---------------------------------------------------------------


def sqnr_db(reference: np.ndarray, other: np.ndarray) -> float:
    ref = reference.astype(np.float64).ravel()
    noise = ref - other.astype(np.float64).ravel()
    signal_power, noise_power = float(np.mean(ref**2)), float(np.mean(noise**2))
    if noise_power == 0:
        return 200.0
    return round(10 * np.log10(max(signal_power, 1e-30) / noise_power), 2)


def cosine(reference: np.ndarray, other: np.ndarray) -> float:
    """Cosine between fp32 and artifact outputs over the whole evaluation set, flattened (like SQNR, one
    number per output; a per-sample mean would be dominated by near-zero maps such as text-free images)."""
    a, b = reference.astype(np.float64).ravel(), other.astype(np.float64).ravel()
    norms = float(np.linalg.norm(a) * np.linalg.norm(b))
    return round(float(np.dot(a, b) / norms), 5) if norms > 0 else 1.0


def score(
    model: CorpusModel,
    fp32: dict[str, np.ndarray],
    artifact: dict[str, np.ndarray],
    labels: np.ndarray | None = None,
) -> list[OutputScore]:
    """SQNR, cosine and (classification) top-1 agreement per output, plus the converter's own task measure
    for the output's kind (edgefleet.converter.fidelity), so every row is judged by the same measure."""
    try:
        from edgefleet.converter.fidelity.outputs import measure_output
    except ImportError:  # a converter without task measures: SQNR/cosine/agreement only
        measure_output = None
    labelled = next((name for name, kind in model.output_kinds.items() if kind == "classification"), None)
    scores = []
    for name, kind in model.output_kinds.items():
        ref, got = fp32[name], artifact[name].reshape(fp32[name].shape)
        agreement = None
        if kind == "classification":
            same = ref.reshape(len(ref), -1).argmax(1) == got.reshape(len(got), -1).argmax(1)
            agreement = round(float(same.mean() * 100), 2)
        entry = OutputScore(name, kind, sqnr_db(ref, got), cosine(ref, got), agreement)
        if measure_output is not None and kind != "tensor":
            measured = measure_output(name, kind, ref, got, labels if name == labelled else None, "request")
            entry.task_metric, entry.task_value = measured.metric, float(measured.artifact)
        scores.append(entry)
    return scores


def load_npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as archive:
        return {name: archive[name] for name in archive.files}


def run_onnx(path: Path, data: dict[str, np.ndarray], exact_qdq: bool) -> dict[str, np.ndarray]:
    """Every output over every sample, one sample per call (the batch is fixed to 1)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    if exact_qdq:
        options.add_session_config_entry("session.disable_quant_qdq", "1")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    outputs = [o.name for o in session.get_outputs()]
    samples = len(data[names[0]])
    runs = [session.run(None, {n: data[n][i : i + 1] for n in names}) for i in range(samples)]
    return {name: np.concatenate([r[k] for r in runs]) for k, name in enumerate(outputs)}


def fixed_shape_model(model: CorpusModel, source: Path, folder: Path) -> Path:
    """A copy with the entry's fixed input shapes (ORT's calibrator and onnx2tf want static shapes)."""
    import onnx

    target = folder / f"{model.name}.fixed.onnx"
    if target.exists():
        return target
    proto = onnx.load(str(source))
    for tensor in proto.graph.input:
        if tensor.name in model.input_shapes:
            dims = tensor.type.tensor_type.shape.dim
            for dim, value in zip(dims, model.input_shapes[tensor.name], strict=True):
                dim.Clear()
                dim.dim_value = value
    onnx.save(proto, str(target))
    return target


# ---- workers (one process each, so a stuck conversion can be killed) ------------------------------------


def work_convert(task: dict[str, Any]) -> Row:
    from edgefleet.contract.bundle import extract_bundle
    from edgefleet.contract.signing import load_public_key
    from edgefleet.converter.context import ConversionRequest
    from edgefleet.converter.pipeline import convert
    from edgefleet.converter.steps.runners import OnnxRunner, runner_for

    model = corpus.by_name([task["model"]])[0]
    profile = task["profile"]
    out = Path(task["work"]) / profile
    request = ConversionRequest(
        model=corpus.locate(model),
        profile=profile,
        calib=Path(task["calib"]),
        eval=Path(task["eval"]),
        out=out,
        name=model.name.replace("_", "-"),
        key=Path(task["key"]),
        report_dir=out / "report",
        input_shapes={name: tuple(shape) for name, shape in model.input_shapes.items()},
        # the output kinds pick the converter's task measures; older converters lack the field
        **(
            {"output_kinds": dict(model.output_kinds)}
            if "output_kinds" in ConversionRequest.model_fields
            else {}
        ),
    )
    row = Row(model.name, profile, "failed")
    start = time.perf_counter()
    try:
        result = convert(request)
    except Exception as exc:  # the converter's own errors carry the reason; anything else is a finding too
        row.seconds = round(time.perf_counter() - start, 1)
        text = str(exc).strip() or type(exc).__name__
        # "step 'X' failed for <model path> -> profile 'p': why" -> "step 'X': why" (path and profile are
        # already in the row)
        first = text.splitlines()[0].replace(str(request.model), request.model.name)
        row.why = re.sub(r"^step '([^']+)' failed for .*? -> profile '[^']+': ", r"step '\1': ", first)
        row.status = "budget missed" if type(exc).__name__ == "AccuracyBudgetError" else "failed"
        read_report(row, out / "report" / "report.json")
        return row
    row.seconds = round(time.perf_counter() - start, 1)
    row.status = "converted"
    row.size_ratio = round(result.metrics.size_bytes_artifact / result.metrics.size_bytes_fp32, 3)
    read_report(row, out / "report" / "report.json")
    # This script's own scoring, identical for every row: extract the signed bundle and run its artifact.
    unpacked = out / "unpacked"
    shutil.rmtree(unpacked, ignore_errors=True)
    manifest = extract_bundle(result.bundle_path, unpacked, load_public_key(Path(task["key_pub"])))
    path = unpacked / manifest.artifact
    int8_onnx = path.suffix == ".onnx" and manifest.precision.value == "int8"
    runner = OnnxRunner(path, exact_qdq=True) if int8_onnx else runner_for(path, manifest.inputs)
    evals = load_npz(Path(task["eval"]))
    labels = evals.pop("y", None)
    artifact = run_artifact(runner, evals, manifest.inputs, manifest.outputs)
    fp32 = run_onnx(Path(task["fixed"]), evals, exact_qdq=False)
    row.scores = score(model, fp32, artifact, labels)
    return row


def run_artifact(
    runner: Any, data: dict[str, np.ndarray], inputs: list[Any], outputs: list[Any]
) -> dict[str, np.ndarray]:
    """The artifact over every sample, one per call, through the contract's float <-> artifact tensor
    mapping (int8 quantization, NHWC permutation), i.e. what a device client sends and gets back."""
    from edgefleet.contract.tensors import from_artifact, to_artifact

    samples = len(data[inputs[0].name])
    collected: dict[str, list[np.ndarray]] = {spec.name: [] for spec in outputs}
    for i in range(samples):
        results = runner.run([to_artifact(spec, data[spec.name][i : i + 1])[0] for spec in inputs])
        for spec, value in zip(outputs, results, strict=True):
            collected[spec.name].append(from_artifact(spec, value, as_float=True))
    return {name: np.concatenate(parts) for name, parts in collected.items()}


def read_report(row: Row, path: Path) -> None:
    """The converter's own verdict, read generically: the budget's measure and value, every output's
    numbers. The measures are being extended, so unknown keys are kept as they are."""
    if not path.is_file():
        return
    report = json.loads(path.read_text())
    budget = report.get("budget") or {}
    row.report = {"budget": budget, "outputs": report.get("outputs", [])}
    row.measure = str(budget.get("judged_by") or budget.get("measure") or budget.get("metric") or "")
    outputs = report.get("outputs") or []
    # the output that decided: the first one over its budget, else the first output
    decisive = next((o for o in outputs if o.get("within_budget") is False), outputs[0] if outputs else {})
    if "artifact" in decisive:
        unit = decisive.get("unit") or ""
        unit = unit if unit in ("", "%") else f" {unit}"
        row.fidelity = f"{decisive.get('metric', '')} {decisive['artifact']:.4g}{unit}".strip()
        if len(outputs) > 1:
            row.fidelity += f" ({decisive.get('output', '')[:24]})"
    elif budget.get("drop_points") is not None:
        row.fidelity = f"drop {budget['drop_points']:.4g} points"
    # size ratio from the report's artifact list: also there when the budget was missed (no bundle)
    sizes = {a.get("role"): a.get("size_bytes") for a in report.get("artifacts", []) if isinstance(a, dict)}
    if row.size_ratio is None and sizes.get("source") and sizes.get("preferred"):
        row.size_ratio = round(sizes["preferred"] / sizes["source"], 3)


def work_ort(task: dict[str, Any]) -> Row:
    """onnxruntime quantize_static with its defaults, calibrated on the same calibration set."""
    from onnxruntime.quantization import CalibrationDataReader, quantize_static

    model = corpus.by_name([task["model"]])[0]
    fixed = Path(task["fixed"])
    calib = load_npz(Path(task["calib"]))
    calib.pop("y", None)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            count = len(next(iter(calib.values())))
            self._items = iter([{k: v[i : i + 1] for k, v in calib.items()} for i in range(count)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._items, None)

    target = Path(task["work"]) / f"{model.name}.ort-qdq.onnx"
    row = Row(model.name, ORT_ROW, "failed")
    start = time.perf_counter()
    try:
        quantize_static(str(fixed), str(target), Reader())
    except Exception as exc:
        row.seconds = round(time.perf_counter() - start, 1)
        row.why = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return row
    row.seconds = round(time.perf_counter() - start, 1)
    row.status = "converted"
    row.size_ratio = round(target.stat().st_size / corpus.locate(model).stat().st_size, 3)
    evals = load_npz(Path(task["eval"]))
    labels = evals.pop("y", None)
    fp32 = run_onnx(fixed, evals, exact_qdq=False)
    row.scores = score(model, fp32, run_onnx(target, evals, exact_qdq=True), labels)
    return row


def work_onnx2tf(task: dict[str, Any]) -> Row:
    """onnx2tf -oiqt with our calibration data (-cind), in its own Python; the full-integer model
    (int8 I/O) is scored here with ai-edge-litert."""
    model = corpus.by_name([task["model"]])[0]
    python = os.environ["EDGEFLEET_ONNX2TF_PYTHON"]
    work = Path(task["work"]) / "onnx2tf"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    source = work / "model.onnx"  # onnx2tf overwrites its input with the simplified graph: give it a copy
    onnx2tf_input(Path(task["fixed"]), source)
    calib = load_npz(Path(task["calib"]))
    calib.pop("y", None)
    cind: list[str] = []
    for name, array in calib.items():
        layout = to_nhwc(array)
        np.save(work / f"{safe(name)}.npy", layout)
        channels = layout.shape[-1] if layout.ndim == 4 else 1
        # the data is already normalized: mean 0 and std 1 leave it as it is
        cind += ["-cind", name, str(work / f"{safe(name)}.npy"), str([0.0] * channels), str([1.0] * channels)]
    stage_onnx2tf_sample(work)
    row = Row(model.name, ONNX2TF_ROW, "failed")
    start = time.perf_counter()
    command = [python, "-m", "onnx2tf", "-i", str(source), "-o", str(work / "out"), "-oiqt", *cind]
    # onnx2tf runs the `onnxsim` command of its own venv: put that venv's bin first on PATH
    env = {**os.environ, "PATH": f"{Path(python).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    done = subprocess.run(command, cwd=work, capture_output=True, text=True, check=False, env=env)
    row.seconds = round(time.perf_counter() - start, 1)
    (work / "onnx2tf.log").write_text(done.stdout + done.stderr)
    found = sorted((work / "out").glob("*_full_integer_quant.tflite"))
    if done.returncode != 0 or not found:
        row.why = onnx2tf_failure(done.stdout + "\n" + done.stderr, done.returncode)
        return row
    row.status = "converted"
    row.size_ratio = round(found[0].stat().st_size / corpus.locate(model).stat().st_size, 3)
    evals = load_npz(Path(task["eval"]))
    labels = evals.pop("y", None)
    fp32 = run_onnx(Path(task["fixed"]), evals, exact_qdq=False)
    try:
        row.scores = score(model, fp32, run_full_integer(found[0], evals, fp32), labels)
    except Exception as exc:  # e.g. Flex (Select TF) ops: written, but plain LiteRT cannot run it
        row.status = "not runnable"
        row.why = f"LiteRT: {(str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]}"
    return row


def onnx2tf_input(fixed: Path, target: Path) -> None:
    """The fixed-shape model with every node named in TensorFlow's scope alphabet: Paddle exports leave
    nodes unnamed or name them like 'Softmax@0', which TF rejects as a scope name. Renaming nodes changes
    no tensor, so this only keeps onnx2tf from failing on a name."""
    import onnx

    proto = onnx.load(str(fixed))
    for index, node in enumerate(proto.graph.node):
        node.name = re.sub(r"[^A-Za-z0-9_./>-]", "_", node.name or f"{node.op_type}_{index}")
    onnx.save(proto, str(target))


def onnx2tf_failure(log: str, code: int) -> str:
    """The ONNX node onnx2tf stopped at and the first Python exception line of its trace."""
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", line).strip() for line in log.splitlines()]
    node = next(
        (ln.split("onnx_op_name:", 1)[1].strip() for ln in lines if ln.startswith("ERROR: onnx_op_name:")), ""
    )
    at = next((i for i, ln in enumerate(lines) if re.match(r"^[A-Za-z_.]*(Error|Exception): ", ln)), None)
    if at is None:
        error = next((ln for ln in lines if "ERROR" in ln), f"exit {code}, no full-integer model")
    else:  # Keras wraps the real message: "ValueError: Exception encountered ..." then the detail
        detail = next((ln for ln in lines[at + 1 : at + 4] if ln), "")
        error = lines[at] + (f" {detail}" if "Exception encountered" in lines[at] else "")
    return (f"at {node}: " if node else "") + error[:300]


def stage_onnx2tf_sample(work: Path) -> None:
    """onnx2tf downloads a sample file for its output check whenever every input is 4-D with 3 channels,
    even with -cind; a file of that name in its working directory is used instead: 20 photo crops of
    128x128 in [0, 1], from the wheel's photos."""
    from bench.real_models import inputs

    crops = [inputs.to_array(image, (128, 128)) for image in inputs.photo_samples("calib", 20)]
    sample = np.stack(crops).astype(np.float32) / 255.0
    np.save(work / "calibration_image_sample_data_20x128x128x3_float32.npy", sample)


def safe(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name)


def to_nhwc(array: np.ndarray) -> np.ndarray:
    return array.transpose(0, 2, 3, 1) if array.ndim == 4 else array


def run_full_integer(
    path: Path, data: dict[str, np.ndarray], fp32: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """Run an int8-I/O TFLite model: inputs matched by name (NHWC when 4-D), quantized with the model's own
    scale/zero point; outputs dequantized and matched to the ONNX outputs by order, transposed back to the
    ONNX layout when their shape says so."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path), num_threads=1)
    interpreter.allocate_tensors()
    ins, outs = interpreter.get_input_details(), interpreter.get_output_details()
    samples = len(next(iter(data.values())))
    by_name = {safe(name): name for name in data}
    results: list[list[np.ndarray]] = [[] for _ in outs]
    for i in range(samples):
        for position, detail in enumerate(ins):
            key = next((v for k, v in by_name.items() if k in detail["name"]), list(data)[position])
            value = _to_tflite_layout(data[key][i : i + 1], tuple(detail["shape"]))
            scale, zero = detail["quantization"]
            if scale:
                info = np.iinfo(detail["dtype"])
                value = np.clip(np.round(value / scale) + zero, info.min, info.max)
            interpreter.set_tensor(detail["index"], value.astype(detail["dtype"]))
        interpreter.invoke()
        for position, detail in enumerate(outs):
            value = interpreter.get_tensor(detail["index"]).astype(np.float32)
            scale, zero = detail["quantization"]
            results[position].append((value - zero) * scale if scale else value)
    # onnx2tf orders and lays out outputs its own way: match each ONNX output to an unused TFLite output
    # that has its shape, directly or after moving the channel axis (NHWC -> NCHW, [N, C, L] <-> [N, L, C])
    outputs = [np.concatenate(parts) for parts in results]
    used: set[int] = set()
    named = {}
    for name, reference in fp32.items():
        for index, value in enumerate(outputs):
            if index in used or value.size != reference.size:
                continue
            for perm in _layouts(value.ndim):
                if value.transpose(perm).shape == reference.shape:
                    named[name] = value.transpose(perm)
                    used.add(index)
                    break
            if name in named:
                break
        if name not in named:
            raise ValueError(f"no TFLite output matches ONNX output {name} {reference.shape}")
    return named


def _to_tflite_layout(array: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """An ONNX-layout sample in onnx2tf's input layout: as it is, else channels moved last (NCHW -> NHWC,
    [N, C, L] -> [N, L, C])."""
    if array.shape == shape:
        return array
    last = {4: (0, 2, 3, 1), 3: (0, 2, 1)}.get(array.ndim)
    if last is not None and array.transpose(last).shape == shape:
        return array.transpose(last)
    return array.reshape(shape)


def _layouts(ndim: int) -> list[tuple[int, ...]]:
    same = tuple(range(ndim))
    if ndim == 4:
        return [same, (0, 3, 1, 2)]
    if ndim == 3:
        return [same, (0, 2, 1)]
    return [same]


WORKERS = {"convert": work_convert, "ort": work_ort, "onnx2tf": work_onnx2tf}


def worker_main(kind: str, task_file: Path) -> None:
    task = json.loads(task_file.read_text())
    row = WORKERS[kind](task)
    Path(task["result"]).write_text(json.dumps(asdict(row)))


def run_task(
    kind: str, task: dict[str, Any], timeout: float, model: str, target: str, resume: bool = False
) -> Row:
    """Run one worker in its own process group; kill the group after `timeout` seconds. `resume`: a row
    already measured in this work directory is read back instead."""
    result = Path(task["work"]) / f"{target}.{kind}.result.json"
    if resume and result.is_file():
        return load_row(result)
    result.unlink(missing_ok=True)
    task = {**task, "result": str(result)}
    task_file = Path(task["work"]) / f"{target}.{kind}.task.json"
    task_file.write_text(json.dumps(task))
    log = Path(task["work"]) / f"{target}.{kind}.log"
    start = time.perf_counter()
    with log.open("w") as sink:
        process = subprocess.Popen(
            [sys.executable, __file__, "--worker", kind, str(task_file)],
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so a timeout ends the children too
        )
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            row = Row(model, target, "timeout", f"killed after {timeout:.0f} s", seconds=round(timeout))
            result.write_text(json.dumps(asdict(row)))  # kept like any other row (--resume, merging runs)
            return row
    if result.is_file():
        return load_row(result)
    tail = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()][-1:] or ["no output"]
    return Row(
        model,
        target,
        "failed",
        f"worker exit {process.returncode}: {tail[0][:200]}",
        seconds=round(time.perf_counter() - start, 1),
    )


def load_row(path: Path) -> Row:
    data = json.loads(path.read_text())
    data["scores"] = [OutputScore(**s) for s in data["scores"]]
    return Row(**data)


# ---- the table ------------------------------------------------------------------------------------------


def summary(scores: list[OutputScore]) -> tuple[str, str, str, str]:
    """Worst SQNR, lowest cosine, lowest classification agreement, lowest task measure (with its name)."""
    if not scores:
        return "", "", "", ""
    agreements = [s.agreement for s in scores if s.agreement is not None]
    tasks = [s for s in scores if s.task_value is not None]
    worst = min(tasks, key=lambda s: s.task_value or 0.0) if tasks else None
    return (
        f"{min(s.sqnr_db for s in scores):.1f}",
        f"{min(s.cosine for s in scores):.4f}",
        f"{min(agreements):.1f}" if agreements else "",
        f"{worst.task_metric} {worst.task_value:.1f}" if worst else "",
    )


def table(rows: list[Row]) -> str:
    head = (
        "| model | target | result | converter: measure | converter: fidelity | task measure (here) "
        "| SQNR dB (worst) | cosine (lowest) | top-1 agree % | size ratio | seconds |"
    )
    lines = [head, "|" + "---|" * 11]
    for row in rows:
        sqnr, cos, agree, task = summary(row.scores)
        why = row.why.split(". No bundle written")[0].split(f"profile '{row.target}': ")[-1]
        why = why.replace(f"{corpus.corpus_dir()}/", "").replace(f"{reference_model_dir()}/", "")
        result = row.status if not why else f"{row.status}: {why[:160]}"
        result = result.replace("|", "/")
        ratio = f"{row.size_ratio:.2f}" if row.size_ratio is not None else ""
        seconds = f"{row.seconds:.1f}" if row.seconds is not None else ""
        lines.append(
            f"| {row.model} | {row.target} | {result} | {row.measure} | {row.fidelity} | {task} | {sqnr} "
            f"| {cos} | {agree} | {ratio} | {seconds} |"
        )
    return "\n".join(lines)


# Ops every CNN path handles; the corpus table lists the others, which are what real graphs add.
PLAIN_OPS = {"Conv", "Relu", "Add", "Mul", "BatchNormalization", "Constant", "Identity", "Concat", "MaxPool"}


def success_summary(rows: list[Row]) -> str:
    """Per target: bundles (converted within the default budget) out of the models run for it."""
    targets = sorted({row.target for row in rows}, key=lambda t: (t in (ORT_ROW, ONNX2TF_ROW), t))
    lines = ["| target | bundles within the default budget | models run |", "|---|---|---|"]
    converter_rows = [row for row in rows if row.target not in (ORT_ROW, ONNX2TF_ROW)]
    for target in targets:
        mine = [row for row in rows if row.target == target]
        done = sum(row.status == "converted" for row in mine)
        lines.append(f"| {target} | {done} ({100 * done / len(mine):.0f}%) | {len(mine)} |")
    done, runs = sum(row.status == "converted" for row in converter_rows), len(converter_rows)
    lines.append(f"| all six profiles | {done} ({100 * done / max(runs, 1):.0f}%) | {runs} |")
    return "\n".join(lines)


def notable_ops(path: Path) -> str:
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    counts: dict[str, int] = {}
    for node in graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    others = sorted((op for op in counts if op not in PLAIN_OPS), key=lambda op: -counts[op])
    return ", ".join(f"{op} {counts[op]}" for op in others)


def corpus_table(models: list[CorpusModel]) -> str:
    lines = [
        "| model | source | file | MB | inputs (fixed) | outputs (kind) | ops beyond plain CNNs |",
        "|" + "---|" * 7,
    ]
    for model in models:
        try:
            path = corpus.locate(model)
            size, ops = f"{path.stat().st_size / 1e6:.2f}", notable_ops(path)
        except CorpusModelMissing:
            size, ops = "missing", ""
        shapes = ", ".join(f"{k} {'x'.join(map(str, v))}" for k, v in model.input_shapes.items())
        kinds = ", ".join(f"{k} ({v})" for k, v in model.output_kinds.items())
        lines.append(
            f"| {model.name} | {model.distribution or 'repo'} | {model.resource} | {size} | {shapes} "
            f"| {kinds} | {ops} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", help="comma-separated corpus model names (default: all installed)")
    parser.add_argument("--profiles", default=",".join(PROFILES), help="comma-separated profile names")
    parser.add_argument(
        "--timeout", type=float, default=900, help="seconds per conversion before it is killed"
    )
    parser.add_argument("--json", type=Path, help="write every row (with report excerpts) to this file")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, help="calib/eval .npz cache")
    parser.add_argument("--keep", type=Path, help="keep bundles, reports and logs in this directory")
    parser.add_argument(
        "--resume", action="store_true", help="with --keep: reuse the rows already measured there"
    )
    parser.add_argument("--no-ort", action="store_true", help="skip onnxruntime quantize_static")
    parser.add_argument("--no-onnx2tf", action="store_true", help="skip onnx2tf even when configured")
    parser.add_argument(
        "--table-from",
        type=Path,
        nargs="+",
        metavar="DIR",
        help="measure nothing: print the table of the rows earlier runs stored with --keep DIR (merged)",
    )
    parser.add_argument("--worker", nargs=2, metavar=("KIND", "TASK"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker_main(args.worker[0], Path(args.worker[1]))
        return 0
    if args.table_from:
        paths = [path for keep in args.table_from for path in sorted(keep.glob("*/*/*.result.json"))]
        stored = [load_row(path) for path in paths]
        print(table(sorted(stored, key=lambda row: (row.model, row.target))))
        print()
        print(success_summary(stored))
        return 0

    from edgefleet.contract.signing import PRIVATE_KEY_FILE, PUBLIC_KEY_FILE, create_key_pair

    models = corpus.by_name(args.models.split(",") if args.models else None)
    profiles = [p for p in args.profiles.split(",") if p]
    onnx2tf = os.environ.get("EDGEFLEET_ONNX2TF_PYTHON") if not args.no_onnx2tf else None
    print(corpus_table(models), flush=True)
    if not onnx2tf:
        print("\nonnx2tf: skipped (set EDGEFLEET_ONNX2TF_PYTHON to a python that has onnx2tf)", flush=True)
    rows: list[Row] = []
    with contextlib.ExitStack() as stack:
        if args.keep:
            if not args.resume:
                shutil.rmtree(args.keep, ignore_errors=True)
            args.keep.mkdir(parents=True, exist_ok=True)
            scratch = str(args.keep)
        else:
            scratch = stack.enter_context(tempfile.TemporaryDirectory(prefix="edgefleet-bench-real-"))
        keys = Path(scratch) / "keys"
        private, public = keys / PRIVATE_KEY_FILE, keys / PUBLIC_KEY_FILE
        if not (private.is_file() and public.is_file()):  # a resumed run keeps the key its bundles carry
            private, public = create_key_pair(keys, overwrite=True)
        for model in models:
            try:
                source = corpus.locate(model)
            except CorpusModelMissing as exc:
                rows.append(Row(model.name, "-", "skipped", str(exc)))
                continue
            work = Path(scratch) / model.name
            work.mkdir(exist_ok=True)
            try:
                calib, evals = corpus.write_data(model, args.data_dir)
            except (OSError, KeyError, ValueError) as exc:  # e.g. data of a model being rebuilt right now
                rows.append(Row(model.name, "-", "skipped", f"no data: {exc}"))
                continue
            task = {
                "model": model.name,
                "calib": str(calib),
                "eval": str(evals),
                "key": str(private),
                "key_pub": str(public),
                "fixed": str(fixed_shape_model(model, source, work)),
            }
            targets = [("convert", p) for p in profiles]
            targets += [] if args.no_ort else [("ort", ORT_ROW)]
            targets += [("onnx2tf", ONNX2TF_ROW)] if onnx2tf else []
            for kind, target in targets:
                target_work = work / target
                target_work.mkdir(exist_ok=True)
                row = run_task(
                    kind,
                    {**task, "work": str(target_work), "profile": target},
                    args.timeout,
                    model.name,
                    target,
                    resume=args.resume,
                )
                rows.append(row)
                sqnr, cos, agree, measure = summary(row.scores)
                print(
                    f"{model.name:18s} {target:16s} {row.status:13s} sqnr={sqnr:6s} cos={cos:7s} "
                    f"agree={agree:5s} {measure:22s} {row.seconds}s {row.why[:100]}",
                    flush=True,
                )
    print()
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps([asdict(row) for row in rows], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
