"""Real inputs for the corpus: photos shipped in scikit-image's wheel, rendered text, speech-like audio.

Everything is made on this machine from installed packages (nothing is fetched); calibration and evaluation
draw from disjoint photo sets and different seeds so the evaluation is not the calibration data again.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFont

Split = Literal["calib", "eval"]

# Photos inside the scikit-image 0.26 wheel (skimage/data/); the rest of skimage.data goes through pooch and
# a network fetch, so only these files are read, straight from the package directory.
PHOTOS: dict[Split, tuple[str, ...]] = {
    "calib": (
        "camera.png",
        "coffee.png",
        "rocket.jpg",
        "motorcycle_left.png",
        "retina.jpg",
        "brick.png",
        "grass.png",
        "chelsea.png",
    ),
    "eval": (
        "astronaut.png",
        "motorcycle_right.png",
        "hubble_deep_field.jpg",
        "ihc.png",
        "gravel.png",
        "coins.png",
        "moon.png",
        "cell.png",
    ),
}
# Scanned text in the same wheel: a page of a book and text on a rock, used beside rendered documents.
TEXT_PHOTOS = ("page.png", "text.png")

SEEDS: dict[Split, int] = {"calib": 1234, "eval": 98765}

# Words for rendered text: English prose, numbers, prices and codes, as receipts and documents hold them.
_WORD_TEXT = (
    "the quick brown fox jumps over lazy dog model device fleet edge camera sensor invoice total amount due "
    "date page chapter section figure table results method data train test accuracy latency memory power "
    "north south river street road avenue station ticket price order number customer account balance "
    "report summary introduction conclusion reference appendix version update release build deploy "
    "Monday Tuesday January March October Berlin Paris London Tokyo Python Linux Raspberry Jetson Coral"
)
WORDS = tuple(_WORD_TEXT.split())


def skimage_data_dir() -> Path:
    """skimage/data of the installed scikit-image, found without importing it (its import is slow)."""
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("scikit-image is not installed: pip install 'edgefleet[corpus]' (setup does)")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


@cache
def load_photo(name: str) -> Image.Image:
    """One of the wheel's photos as RGB (grey ones are replicated to three channels)."""
    with Image.open(skimage_data_dir() / name) as image:
        return image.convert("RGB")


def photos(split: Split) -> list[Image.Image]:
    return [load_photo(name) for name in PHOTOS[split]]


def augment(image: Image.Image, rng: np.random.Generator, min_scale: float = 0.4) -> Image.Image:
    """A random crop (40-100% of each side), maybe mirrored, with brightness and contrast jitter."""
    width, height = image.size
    crop_w = int(width * rng.uniform(min_scale, 1.0))
    crop_h = int(height * rng.uniform(min_scale, 1.0))
    left = int(rng.integers(0, width - crop_w + 1))
    top = int(rng.integers(0, height - crop_h + 1))
    out = image.crop((left, top, left + crop_w, top + crop_h))
    if rng.random() < 0.5:
        out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    out = ImageEnhance.Brightness(out).enhance(float(rng.uniform(0.7, 1.3)))
    return ImageEnhance.Contrast(out).enhance(float(rng.uniform(0.7, 1.3)))


@cache
def lfw_faces() -> np.ndarray:
    """The wheel's 100 LFW face crops (25x25 grey in [0, 1]; its other 100 images are non-faces)."""
    return np.load(skimage_data_dir() / "lfw_subset.npy")[:100]


def face_mosaic(split: Split, rng: np.random.Generator, side: int = 480) -> Image.Image:
    """A grid of 2x2 to 4x4 LFW faces (faces 0-49 for calibration, 50-99 for evaluation), so detectors
    with face classes see faces at several scales."""
    faces = lfw_faces()[:50] if split == "calib" else lfw_faces()[50:]
    grid = int(rng.integers(2, 5))
    cell = side // grid
    mosaic = Image.new("RGB", (side, side), tuple(int(v) for v in rng.integers(0, 256, size=3)))
    for row in range(grid):
        for col in range(grid):
            face = Image.fromarray((faces[int(rng.integers(0, len(faces)))] * 255).astype(np.uint8))
            inset = int(cell * rng.uniform(0.6, 0.95))
            mosaic.paste(
                face.convert("RGB").resize((inset, inset), Image.Resampling.BICUBIC),
                (col * cell + (cell - inset) // 2, row * cell + (cell - inset) // 2),
            )
    return mosaic


def photo_samples(split: Split, n: int) -> list[Image.Image]:
    """`n` augmented crops cycling over the split's photos."""
    rng = np.random.default_rng(SEEDS[split])
    pool = photos(split)
    return [augment(pool[i % len(pool)], rng) for i in range(n)]


@cache
def font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """Pillow's own bundled font (Aileron, through FreeType): no system font is needed on a fresh machine."""
    return ImageFont.load_default(size=size)


def sentence(rng: np.random.Generator, words: int) -> str:
    parts = []
    for _ in range(words):
        roll = rng.random()
        if roll < 0.12:
            parts.append(str(int(rng.integers(0, 100000))))
        elif roll < 0.18:
            parts.append(f"{rng.uniform(0, 999):.2f}")
        else:
            word = str(rng.choice(WORDS))
            parts.append(word.capitalize() if rng.random() < 0.15 else word)
    return " ".join(parts)


def paper(size: tuple[int, int], rng: np.random.Generator) -> Image.Image:
    """A light background: plain paper tint, or a faded crop of a texture photo (brick, grass, gravel)."""
    tint = tuple(int(v) for v in rng.integers(215, 256, size=3))
    background = Image.new("RGB", size, tint)
    if rng.random() < 0.35:
        texture = load_photo(str(rng.choice(["brick.png", "grass.png", "gravel.png"]))).resize(size)
        background = Image.blend(background, texture, float(rng.uniform(0.15, 0.35)))
    return background


def render_line(rng: np.random.Generator, text: str | None = None) -> tuple[Image.Image, str]:
    """One text line as an RGB image sized tightly around the text (as a detector's crop would be)."""
    text = text if text is not None else sentence(rng, int(rng.integers(1, 6)))
    face = font(int(rng.integers(22, 40)))
    left, top, right, bottom = face.getbbox(text)
    pad_x, pad_y = int(rng.integers(2, 10)), int(rng.integers(2, 8))
    image = paper((right - left + 2 * pad_x, bottom - top + 2 * pad_y), rng)
    ink = tuple(int(v) for v in rng.integers(0, 80, size=3))
    ImageDraw.Draw(image).text((pad_x - left, pad_y - top), text, font=face, fill=ink)
    return image, text


def render_page(rng: np.random.Generator, size: tuple[int, int] = (608, 800)) -> Image.Image:
    """A document page: a title, paragraphs, sometimes a photo figure with a caption and a ruled table."""
    width, height = size
    page = paper(size, rng)
    draw = ImageDraw.Draw(page)
    ink = tuple(int(v) for v in rng.integers(0, 60, size=3))
    y = int(rng.integers(20, 60))
    margin = int(rng.integers(24, 60))
    title = font(int(rng.integers(30, 44)))
    draw.text((margin, y), sentence(rng, int(rng.integers(2, 5))).title(), font=title, fill=ink)
    y += 60
    body = font(int(rng.integers(14, 20)))
    line_height = int(body.size * 1.5)
    while y < height - 40:
        roll = rng.random()
        if roll < 0.2 and y < height - 260:  # a figure: a photo crop with a caption under it
            figure = augment(load_photo(str(rng.choice(PHOTOS["calib"] + PHOTOS["eval"]))), rng)
            fig_w = int(rng.integers(width // 3, width - 2 * margin))
            fig_h = int(rng.integers(100, 200))
            page.paste(figure.resize((fig_w, fig_h)), (margin, y))
            y += fig_h + 6
            draw.text((margin, y), "Figure 1. " + sentence(rng, 5), font=body, fill=ink)
            y += line_height * 2
        elif roll < 0.3 and y < height - 200:  # a table: a ruled grid with numbers
            rows, cols = int(rng.integers(3, 6)), int(rng.integers(2, 5))
            cell_w = (width - 2 * margin) // cols
            for r in range(rows + 1):
                draw.line(
                    (margin, y + r * line_height, margin + cols * cell_w, y + r * line_height), fill=ink
                )
            for c in range(cols + 1):
                draw.line((margin + c * cell_w, y, margin + c * cell_w, y + rows * line_height), fill=ink)
            for r in range(rows):
                for c in range(cols):
                    cell = f"{rng.uniform(0, 100):.1f}" if r else str(rng.choice(WORDS))
                    draw.text((margin + c * cell_w + 4, y + r * line_height + 3), cell, font=body, fill=ink)
            y += rows * line_height + line_height
        else:  # a paragraph
            for _ in range(int(rng.integers(2, 7))):
                if y > height - 40:
                    break
                text = sentence(rng, 12)
                while body.getlength(text) > width - 2 * margin and " " in text:
                    text = text.rsplit(" ", 1)[0]
                draw.text((margin, y), text, font=body, fill=ink)
                y += line_height
            y += line_height // 2
    return page


def text_photo_crop(rng: np.random.Generator) -> Image.Image:
    """A crop of the wheel's scanned page or text-on-rock photo."""
    return augment(load_photo(str(rng.choice(TEXT_PHOTOS))), rng, min_scale=0.5)


def speech_like(rng: np.random.Generator, seconds: float, rate: int = 16000) -> np.ndarray:
    """A speech-like signal in [-1, 1]: voiced syllables, fricatives, pauses and background noise.

    No package here ships recorded speech (scipy's test WAVs are a few hundred samples of tones), so this is
    synthesized: a glottal pulse train with drifting pitch through three formant resonators, syllable
    envelopes of 80-300 ms, noise bursts for fricatives, and silent or noise-only stretches between words.
    """
    from scipy.signal import lfilter

    total = int(seconds * rate)
    out = np.zeros(total, dtype=np.float64)
    position = int(rng.integers(0, rate // 4))
    vowels = ((730, 1090, 2440), (270, 2290, 3010), (530, 1840, 2480), (570, 840, 2410), (300, 870, 2240))
    while position < total:
        if rng.random() < 0.25:  # a pause between words
            position += int(rng.uniform(0.15, 0.6) * rate)
            continue
        length = int(rng.uniform(0.08, 0.3) * rate)
        t = np.arange(length) / rate
        f0 = rng.uniform(90, 240) * (1 + 0.15 * np.sin(2 * np.pi * rng.uniform(1, 4) * t))
        phase = np.cumsum(f0 / rate)
        source = (np.diff(np.floor(phase), prepend=0) > 0).astype(np.float64)  # one pulse per period
        voiced = np.zeros(length)
        for formant, bandwidth in zip(vowels[int(rng.integers(0, len(vowels)))], (80, 100, 120), strict=True):
            r = np.exp(-np.pi * bandwidth / rate)
            theta = 2 * np.pi * formant / rate
            voiced += lfilter([1 - r], [1, -2 * r * np.cos(theta), r * r], source)
        if rng.random() < 0.3:  # a fricative onset: high-passed noise
            noise = lfilter([1, -0.95], [1], rng.normal(0, 0.3, length // 3))
            voiced[: len(noise)] += noise
        envelope = np.sin(np.pi * np.arange(length) / length) ** 0.7
        end = min(total, position + length)
        out[position:end] += (voiced * envelope)[: end - position] * rng.uniform(0.3, 1.0)
        position = end + int(rng.uniform(0.0, 0.05) * rate)
    peak = np.max(np.abs(out)) or 1.0
    out = out / peak * rng.uniform(0.3, 0.9)
    out += rng.normal(0, rng.uniform(0.001, 0.02), total)  # room / microphone noise
    return np.clip(out, -1, 1).astype(np.float32)


def to_array(image: Image.Image, size: tuple[int, int] | None = None) -> np.ndarray:
    """HWC uint8 RGB; `size` is (width, height), resized bilinearly (cv2.INTER_LINEAR's counterpart)."""
    if size is not None and image.size != size:
        image = image.resize(size, Image.Resampling.BILINEAR)
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def normalize(
    hwc: np.ndarray,
    mean: Sequence[float],
    std: Sequence[float],
    bgr: bool,
) -> np.ndarray:
    """uint8 HWC RGB -> float32 CHW: channels reordered first, then x/255, minus mean, over std."""
    pixels = hwc[..., ::-1] if bgr else hwc
    scaled = pixels.astype(np.float32) / 255.0
    out = (scaled - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(out.transpose(2, 0, 1), dtype=np.float32)
