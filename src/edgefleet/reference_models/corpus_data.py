"""Calibration and evaluation data of the architecture corpus (corpus/ here), made on demand from crops of
scikit-image's bundled photos and synthetic audio: deterministic, numpy and Pillow only (no torch/network)."""

from __future__ import annotations

import argparse
import hashlib
import math
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, ImageDraw

# The models of corpus/ were trained (make_corpus.py) on batches from `labelled_batch`, so the
# sets made here come from their training distribution, with seeds of their own (held out, calib and eval
# disjoint). Samples are drawn in blocks of 64 from one generator per split: the first n samples are the
# same whatever `samples` is, and 64 gives exactly the sets the models were evaluated on when built.
#
#     calib, evals = corpus_data("mobilenetv3_small")        # {"image": (64, 3, 128, 128)}, + "y" in evals
#     python -m edgefleet.reference_models.corpus_data --write DIR [--only NAME ...] [--samples N]
#
# Photos need scikit-image (the `corpus` extra; read from its wheel, never fetched); audio needs numpy only.

Split = Literal["calib", "eval"]
Task = Literal["classification", "detection", "segmentation", "frame-events"]
SAMPLES = 64  # per set, and the block size samples are drawn in
CALIB_SEED, EVAL_SEED = 1001, 2002  # distinct from the training seeds of make_corpus.py
SEEDS: dict[Split, int] = {"calib": CALIB_SEED, "eval": EVAL_SEED}
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
HALF = np.array([0.5, 0.5, 0.5], dtype=np.float32)

# --------------------------------------------------------------------------------------------------------
# Photos: the ones that ship inside scikit-image's wheel (others are fetched on first use; never here)

CLASS_PHOTOS = (
    "astronaut",
    "coffee",
    "chelsea",
    "rocket",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
    "motorcycle",
    "camera",
    "coins",
)
EXTRA_PHOTOS = ("page", "text", "grass", "gravel", "brick", "clock", "cell", "moon", "colorwheel", "logo")
ALL_PHOTOS = CLASS_PHOTOS + EXTRA_PHOTOS


@cache
def photo(name: str) -> np.ndarray:
    """HxWx3 uint8 RGB; grey photos replicated, the RGBA logo composited on white."""
    import skimage.data  # the `corpus` extra; imported only when photos are needed

    image = skimage.data.stereo_motorcycle()[0] if name == "motorcycle" else getattr(skimage.data, name)()
    image = np.asarray(image)
    if image.dtype == bool:
        image = image.astype(np.uint8) * 255
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    if image.shape[2] == 4:
        alpha = image[..., 3:4].astype(np.float32) / 255
        image = (image[..., :3] * alpha + 255 * (1 - alpha)).astype(np.uint8)
    return np.ascontiguousarray(image[..., :3])


def random_crop(
    rng: np.random.Generator, image: np.ndarray, size: tuple[int, int], scale: tuple[float, float]
) -> np.ndarray:
    """A random square-ish crop (side = scale x the short side), resized bilinearly, randomly flipped and
    jittered in brightness/contrast: float32 HxWx3 in [0, 1]."""
    height, width = image.shape[:2]
    side = rng.uniform(*scale) * min(height, width)
    aspect = math.exp(rng.uniform(-0.2, 0.2))  # mild aspect change, as RandomResizedCrop
    crop_w, crop_h = min(width, side * aspect), min(height, side / aspect)
    x0, y0 = rng.uniform(0, width - crop_w), rng.uniform(0, height - crop_h)
    resized = Image.fromarray(image).resize(
        size, Image.Resampling.BILINEAR, box=(x0, y0, x0 + crop_w, y0 + crop_h)
    )
    out = np.asarray(resized, dtype=np.float32) / 255
    if rng.random() < 0.5:
        out = out[:, ::-1]
    mean = out.mean()
    out = (out - mean) * rng.uniform(0.8, 1.2) + mean * rng.uniform(0.85, 1.15)
    # Back to 8-bit levels, as a decoded camera frame is.
    return np.round(np.clip(out, 0, 1) * 255) / np.float32(255)


def to_nchw(images: list[np.ndarray], mean: np.ndarray | None, std: np.ndarray | None) -> np.ndarray:
    batch = np.stack(images).astype(np.float32)
    if mean is not None and std is not None:
        batch = (batch - mean) / std
    return np.ascontiguousarray(batch.transpose(0, 3, 1, 2), dtype=np.float32)


def classification_batch(
    rng: np.random.Generator, n: int, size: int, mean: np.ndarray, std: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Which of the ten photos a random crop comes from: (NCHW images, int64 labels = CLASS_PHOTOS index)."""
    labels = rng.integers(0, len(CLASS_PHOTOS), n)
    crops = [random_crop(rng, photo(CLASS_PHOTOS[label]), (size, size), (0.2, 0.9)) for label in labels]
    return to_nchw(crops, mean, std), labels.astype(np.int64)


def shape_mask(kind: int, width: int, height: int) -> np.ndarray:
    mask = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(mask)
    if kind == 0:
        draw.rectangle((0, 0, width - 1, height - 1), fill=255)
    elif kind == 1:
        draw.ellipse((0, 0, width - 1, height - 1), fill=255)
    else:
        draw.polygon(((width / 2, 0), (width - 1, height - 1), (0, height - 1)), fill=255)
    return np.asarray(mask, dtype=np.float32)[..., None] / 255


DETECTION_SIZE = 160


def detection_sample(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Rectangles, ellipses and triangles textured with photo crops, pasted onto another photo crop: (HxWx3
    image in [0, 1], boxes (M, 5) as x1, y1, x2, y2 in pixels and class 0/1/2)."""
    size = DETECTION_SIZE
    canvas = random_crop(rng, photo(ALL_PHOTOS[rng.integers(len(ALL_PHOTOS))]), (size,) * 2, (0.3, 1.0))
    boxes = []
    for _ in range(rng.integers(1, 5)):
        kind = int(rng.integers(0, 3))
        w, h = (int(v) for v in rng.integers(16, 72, 2))
        x0, y0 = int(rng.integers(0, size - w)), int(rng.integers(0, size - h))
        texture = random_crop(rng, photo(ALL_PHOTOS[rng.integers(len(ALL_PHOTOS))]), (w, h), (0.1, 0.5))
        texture = np.clip(texture * rng.uniform(0.4, 1.4, 3).astype(np.float32), 0, 1)
        mask = shape_mask(kind, w, h)
        region = canvas[y0 : y0 + h, x0 : x0 + w]
        canvas[y0 : y0 + h, x0 : x0 + w] = np.round((region * (1 - mask) + texture * mask) * 255) / 255
        boxes.append((x0, y0, x0 + w, y0 + h, kind))
    return canvas, np.array(boxes, dtype=np.float32)


def detection_batch(rng: np.random.Generator, n: int) -> tuple[np.ndarray, list[np.ndarray]]:
    samples = [detection_sample(rng) for _ in range(n)]
    return to_nchw([s[0] for s in samples], None, None), [s[1] for s in samples]


SEGMENTATION_SIZE = 128


def segmentation_crops(rng: np.random.Generator, n: int) -> list[np.ndarray]:
    """Photo crops (text and page scans among them) in [0, 1], HxWx3; make_corpus.py derives the edge masks
    the segmenter learns from them."""
    size = SEGMENTATION_SIZE
    return [
        random_crop(rng, photo(ALL_PHOTOS[rng.integers(len(ALL_PHOTOS))]), (size,) * 2, (0.2, 0.8))
        for _ in range(n)
    ]


def segmentation_batch(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(NCHW images with ImageNet mean/std, the same crops as NHWC in [0, 1])."""
    crops = segmentation_crops(rng, n)
    return to_nchw(crops, IMAGENET_MEAN, IMAGENET_STD), np.stack(crops)


# --------------------------------------------------------------------------------------------------------
# Audio: synthetic but speech-like clips (harmonic vowels with formants, whistles, knocks over pink noise)

RATE, N_FFT, HOP, N_MELS, FRAMES = 16000, 400, 160, 40, 100
VOWEL_FORMANTS = (
    (730, 1090, 2440),
    (270, 2290, 3010),
    (300, 870, 2240),
    (530, 1840, 2480),
    (660, 1720, 2410),
)


@cache
def mel_filterbank() -> np.ndarray:
    """(N_MELS, N_FFT // 2 + 1) triangular HTK-mel filters from 20 Hz to 8 kHz."""
    mel = lambda f: 2595 * np.log10(1 + f / 700)  # noqa: E731 - two one-line conversions
    hz = lambda m: 700 * (10 ** (m / 2595) - 1)  # noqa: E731
    edges = hz(np.linspace(mel(20.0), mel(RATE / 2), N_MELS + 2))
    freqs = np.linspace(0, RATE / 2, N_FFT // 2 + 1)
    bank = np.zeros((N_MELS, freqs.size), dtype=np.float32)
    for i in range(N_MELS):
        lo, mid, hi = edges[i : i + 3]
        bank[i] = np.clip(np.minimum((freqs - lo) / (mid - lo), (hi - freqs) / (hi - mid)), 0, None)
    return bank


def log_mel(signal: np.ndarray) -> np.ndarray:
    padded = np.pad(signal, N_FFT // 2, mode="reflect")
    starts = np.arange(FRAMES) * HOP
    frames = padded[starts[:, None] + np.arange(N_FFT)] * np.hanning(N_FFT)
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2
    return ((np.log(power @ mel_filterbank().T + 1e-6) + 2) / 2.5).T.astype(np.float32)  # (N_MELS, FRAMES)


def envelope(n: int, attack: int) -> np.ndarray:
    return np.minimum(1.0, np.minimum(np.arange(n) + 1, n - np.arange(n)) / max(attack, 1))


def box_filter(x: np.ndarray, size: int) -> np.ndarray:
    """scipy.ndimage.uniform_filter1d(x, size) (mode "reflect"), bit for bit: its undivided running sum."""
    left = size // 2
    extended = np.pad(x, (left, size - left - 1), mode="symmetric")
    first = 0.0
    for value in extended[:size]:
        first += value
    steps = np.empty(x.size)
    steps[0] = first
    steps[1:] = extended[size:] - extended[: x.size - 1]
    return np.cumsum(steps) / size


def audio_clip(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(log-mel (N_MELS, FRAMES), frame labels (FRAMES // 2, 3)) of one second of sound."""
    n = RATE
    spectrum = np.fft.rfft(rng.standard_normal(n))
    spectrum /= np.sqrt(np.maximum(np.arange(spectrum.size), 1))  # pink background
    signal = np.fft.irfft(spectrum, n) * rng.uniform(0.002, 0.03) / 0.03
    if rng.random() < 0.3:  # mains hum, as in many real recordings
        t = np.arange(n) / RATE
        signal += rng.uniform(0.002, 0.01) * np.sin(2 * np.pi * 50 * t + rng.uniform(0, 6))
    active = np.zeros((3, n), dtype=bool)
    for _ in range(rng.integers(1, 4)):
        event = int(rng.integers(0, 3))
        length = int(rng.uniform(0.12, 0.5) * RATE)
        start = int(rng.integers(0, n - length))
        t = np.arange(length) / RATE
        if event == 0:  # voiced vowel: harmonics of a vibrato f0 shaped by three formants
            f0 = rng.uniform(90, 260) * (1 + 0.03 * np.sin(2 * np.pi * 5 * t))
            phase = 2 * np.pi * np.cumsum(f0) / RATE
            formants = VOWEL_FORMANTS[rng.integers(len(VOWEL_FORMANTS))]
            sound = np.zeros(length)
            for k in range(1, int(3800 / f0.max()) + 1):
                freq = k * f0.mean()
                gain = sum(1 / (1 + ((freq - f) / 90) ** 2) for f in formants) + 0.05
                sound += gain / k * np.sin(k * phase)
            sound *= envelope(length, int(0.02 * RATE))
        elif event == 1:  # whistle: a sine sweep with a weak second harmonic
            f_start = rng.uniform(900, 3000)
            freq = f_start * np.exp(np.log(rng.uniform(0.6, 1.6)) * t / t[-1])
            phase = 2 * np.pi * np.cumsum(freq) / RATE
            sound = (np.sin(phase) + 0.2 * np.sin(2 * phase)) * envelope(length, int(0.01 * RATE))
        else:  # knocks: resonant noise bursts with exponential decay
            sound = np.zeros(length)
            for onset in np.sort(rng.integers(0, max(length - 800, 1), rng.integers(1, 4))):
                tau = rng.uniform(0.01, 0.04) * RATE
                burst = rng.standard_normal(length - onset) * np.exp(-np.arange(length - onset) / tau)
                sound[onset:] += box_filter(burst, int(rng.integers(2, 8)))
        sound = sound / (np.abs(sound).max() + 1e-9) * rng.uniform(0.05, 0.5)
        signal[start : start + length] += sound
        active[event, start : start + length] = True
    centres = np.arange(FRAMES) * HOP
    frame_labels = active[:, centres].T.reshape(FRAMES // 2, 2, 3).any(1)  # the models' stride-2 frames
    return log_mel(signal), np.asarray(frame_labels, dtype=np.float32)


def audio_batch(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(log-mel (N, N_MELS, FRAMES), frame-event labels (N, FRAMES // 2, 3) for voice, whistle, knock)."""
    clips = [audio_clip(rng) for _ in range(n)]
    return np.stack([c[0] for c in clips]), np.stack([c[1] for c in clips])


# --------------------------------------------------------------------------------------------------------
# The corpus models' data


@dataclass(frozen=True)
class ModelData:
    """What a corpus model takes (architectures.py ARCHITECTURES holds the same names and shapes) and how its
    batches are drawn: `batch(rng, n)` -> (inputs, targets), as make_corpus.py trains on them."""

    input_name: str
    input_shape: tuple[int, ...]  # one sample, batch axis first
    output_name: str
    task: Task
    batch: Callable[[np.random.Generator, int], tuple[np.ndarray, object]]


def _classifier(size: int, mean: np.ndarray, std: np.ndarray) -> Callable[..., tuple[np.ndarray, object]]:
    return lambda rng, n: classification_batch(rng, n, size, mean, std)


MODELS: dict[str, ModelData] = {
    "mobilenetv3_small": ModelData(
        "image", (1, 3, 128, 128), "logits", "classification", _classifier(128, IMAGENET_MEAN, IMAGENET_STD)
    ),
    "efficientnet_lite0": ModelData(
        "image", (1, 3, 128, 128), "logits", "classification", _classifier(128, HALF, HALF)
    ),
    "yolo_style_det": ModelData(
        "images", (1, 3, DETECTION_SIZE, DETECTION_SIZE), "output0", "detection", detection_batch
    ),
    "dbnet_seg": ModelData(
        "image", (1, 3, SEGMENTATION_SIZE, SEGMENTATION_SIZE), "prob_map", "segmentation", segmentation_batch
    ),
    "tiny_vit": ModelData(
        "pixel_values", (1, 3, 96, 96), "logits", "classification", _classifier(96, HALF, HALF)
    ),
    "audio_gru": ModelData("log_mel", (1, N_MELS, FRAMES), "event_probs", "frame-events", audio_batch),
    "audio_conv1d": ModelData("log_mel", (1, N_MELS, FRAMES), "event_probs", "frame-events", audio_batch),
}


def model_data(name: str) -> ModelData:
    if name not in MODELS:
        raise KeyError(f"no corpus model {name!r}; known: {', '.join(MODELS)}")
    return MODELS[name]


def labelled_batch(name: str, rng: np.random.Generator, n: int) -> tuple[np.ndarray, object]:
    """One batch of model `name`'s task: (float32 inputs, targets). Targets: int64 photo indices
    (classification), a (M, 5) box array per image (detection), the NHWC [0, 1] crops (segmentation; see
    make_corpus.py for the edge masks) or (N, 50, 3) frame labels (frame-events)."""
    return model_data(name).batch(rng, n)


def labelled_set(name: str, split: Split, samples: int = SAMPLES) -> tuple[np.ndarray, object]:
    """The first `samples` inputs and targets of a split, drawn in blocks of SAMPLES from the split's seed."""
    rng = np.random.default_rng(SEEDS[split])
    blocks = [labelled_batch(name, rng, SAMPLES) for _ in range(max(1, math.ceil(samples / SAMPLES)))]
    inputs = np.concatenate([block[0] for block in blocks])[:samples]
    targets = [block[1] for block in blocks]
    if isinstance(targets[0], list):
        return inputs, [item for block in targets for item in block][:samples]  # type: ignore[attr-defined]
    return inputs, np.concatenate(targets)[:samples]  # type: ignore[arg-type]


def corpus_split(name: str, split: Split, samples: int = SAMPLES) -> dict[str, np.ndarray]:
    """One set as the converter reads it: {input name: float32 array}, plus int64 labels `y` in a
    classifier's evaluation set."""
    spec = model_data(name)
    inputs, targets = labelled_set(name, split, samples)
    arrays = {spec.input_name: inputs}
    if split == "eval" and spec.task == "classification":
        arrays["y"] = np.asarray(targets, dtype=np.int64)
    return arrays


def corpus_data(name: str, samples: int = SAMPLES) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(calibration arrays, evaluation arrays) of corpus model `name`, `samples` each."""
    return corpus_split(name, "calib", samples), corpus_split(name, "eval", samples)


def write_corpus_data(name: str, folder: Path, samples: int = SAMPLES) -> tuple[Path, Path]:
    """Write <name>_calib.npz and <name>_eval.npz (uncompressed) into `folder`; returns their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for split in ("calib", "eval"):
        path = folder / f"{name}_{split}.npz"
        tmp = folder / f".{name}_{split}.{os.getpid()}.tmp.npz"
        np.savez(tmp, **corpus_split(name, split, samples))  # type: ignore[arg-type]
        tmp.replace(path)  # atomic: concurrent readers never see half a file
        paths.append(path)
    return paths[0], paths[1]


@cache
def data_version() -> str:
    """A digest of this generator and the libraries it depends on: cached sets are reused while it holds."""
    digest = hashlib.sha256(Path(__file__).read_bytes())
    from PIL import __version__ as pillow_version

    digest.update(f"{np.__version__} {pillow_version}".encode())
    return digest.hexdigest()[:10]


def data_cache_dir() -> Path:
    """Where corpus_files() materializes the sets: $EDGEFLEET_CORPUS_DATA, else a versioned temp folder."""
    override = os.environ.get("EDGEFLEET_CORPUS_DATA")
    if override:
        return Path(override)
    return Path(tempfile.gettempdir()) / f"edgefleet-corpus-data-{data_version()}"


# --------------------------------------------------------------------------------------------------------
# Files


def corpus_dir() -> Path:
    return Path(str(resources.files("edgefleet.reference_models"))) / "corpus"


@dataclass(frozen=True)
class CorpusFiles:
    """The committed files of a corpus model, and its data as .npz files (written on first access)."""

    name: str
    onnx: Path
    reference: Path  # the torch model's output on the first two eval samples (`input`, `output`)

    def _materialize(self, split: Split) -> Path:
        folder = data_cache_dir()
        path = folder / f"{self.name}_{split}.npz"
        if not path.is_file():
            write_corpus_data(self.name, folder)
        return path

    @property
    def calib(self) -> Path:
        """64 samples, array named like the ONNX input (generated into data_cache_dir() when missing)."""
        return self._materialize("calib")

    @property
    def eval(self) -> Path:
        """64 samples; classification sets also hold labels `y` (generated when missing)."""
        return self._materialize("eval")


def corpus_files(name: str) -> CorpusFiles:
    model_data(name)  # KeyError for unknown names
    root = corpus_dir()
    return CorpusFiles(name=name, onnx=root / f"{name}.onnx", reference=root / f"{name}_reference.npz")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", type=Path, required=True, help="folder for <name>_calib/_eval.npz")
    parser.add_argument("--only", nargs="*", choices=sorted(MODELS), help="just these models")
    parser.add_argument("--samples", type=int, default=SAMPLES, help=f"per set (default {SAMPLES})")
    args = parser.parse_args(argv)
    for name in args.only or list(MODELS):
        start = time.perf_counter()
        calib, evals = write_corpus_data(name, args.write, args.samples)
        print(f"{name}: {calib.name}, {evals.name} in {time.perf_counter() - start:.1f} s", flush=True)


if __name__ == "__main__":
    main()
