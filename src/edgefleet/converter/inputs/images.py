"""A folder of images as calibration/evaluation/training data, turned into the model's input tensor with
declared preprocessing: resize to the model's (or a given) size, channel order, scale to [0, 1], then
(x - mean) / std per channel, in the model's layout. Pillow reads the files.

Labels come from sub-folder names: `folder/<class>/*.png`. When every class folder name is an integer
(`0/`, `1/`, ...) that integer is the label; otherwise the label is the index in the sorted names, and
every image folder of one conversion must then hold the same class folders. A folder with images and no
sub-folders is unlabeled.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from edgefleet.converter.errors import InputDataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
Layout = Literal["NCHW", "NHWC"]


class ImagePreprocessing(BaseModel):
    """How image files become model input (the request's `images`; CLI flags --image-*)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    size: tuple[int, int] | None = Field(
        default=None, description="(height, width) to resize to; default: the model input's"
    )
    layout: Layout | None = Field(default=None, description="default: inferred from the model input shape")
    channel_order: Literal["RGB", "BGR"] = "RGB"
    mean: tuple[float, ...] = Field(default=(0.0,), description="per channel (or one for all), on [0, 1]")
    std: tuple[float, ...] = Field(default=(1.0,), description="per channel (or one for all), on [0, 1]")

    @field_validator("size")
    @classmethod
    def _positive_size(cls, value: tuple[int, int] | None) -> tuple[int, int] | None:
        if value is not None and min(value) <= 0:
            raise ValueError("height and width must be positive")
        return value

    @field_validator("std")
    @classmethod
    def _nonzero_std(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if not value or any(v == 0 for v in value):
            raise ValueError("std values must be non-zero")
        return value


@dataclass(frozen=True)
class ImageSet:
    inputs: np.ndarray  # float32, model layout, first axis = sample
    labels: np.ndarray | None
    class_names: list[str] | None
    files: int


@dataclass(frozen=True)
class InputGeometry:
    layout: Layout
    channels: int
    height: int
    width: int


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES


def input_geometry(shape: list[int | None], prep: ImagePreprocessing, where: str) -> InputGeometry:
    """Layout, channels and size of the model input `shape` ([batch, C, H, W] or [batch, H, W, C])."""
    if len(shape) != 4:
        raise InputDataError(f"{where}: image folders feed 4-D image inputs; the model input is {shape}")
    layout = prep.layout
    if layout is None:
        nchw, nhwc = shape[1] in (1, 3), shape[3] in (1, 3)
        if nchw == nhwc:
            raise InputDataError(
                f"{where}: cannot tell the layout of model input {shape}; pass --image-layout NCHW or NHWC"
            )
        layout = "NCHW" if nchw else "NHWC"
    channels, height, width = (
        (shape[1], shape[2], shape[3]) if layout == "NCHW" else (shape[3], shape[1], shape[2])
    )
    if channels not in (1, 3):
        raise InputDataError(
            f"{where}: model input {shape} in {layout} has {channels} channels; images give 1 (grey) or 3"
        )
    if prep.size is not None:
        if (height is not None and height != prep.size[0]) or (width is not None and width != prep.size[1]):
            raise InputDataError(
                f"{where}: --image-size {prep.size[0]},{prep.size[1]} does not match the model input {shape}"
            )
        height, width = prep.size
    if height is None or width is None:
        raise InputDataError(f"{where}: model input {shape} has an open size; pass --image-size H,W")
    for what, values in (("mean", prep.mean), ("std", prep.std)):
        if len(values) not in (1, channels):
            raise InputDataError(
                f"{where}: --image-{what} has {len(values)} values; the input has {channels} channel(s): "
                + ("give 1" if channels == 1 else f"give 1 or {channels} (one per channel)")
            )
    return InputGeometry(layout=layout, channels=int(channels), height=int(height), width=int(width))


def _class_folders(folder: Path, where: str) -> tuple[list[tuple[Path, int | None]], list[str] | None]:
    """(image path, label) for every image, and the class names (None: unlabeled)."""
    if not folder.is_dir():
        raise InputDataError(f"{where}: no such folder")
    loose = sorted(p for p in folder.iterdir() if _is_image(p))
    classes = sorted(p for p in folder.iterdir() if p.is_dir() and any(_is_image(f) for f in p.iterdir()))
    if loose and classes:
        raise InputDataError(
            f"{where}: holds both images and class sub-folders; put every image in a class folder, or "
            "none (unlabeled)"
        )
    if loose:
        return [(p, None) for p in loose], None
    if not classes:
        raise InputDataError(f"{where}: no images ({', '.join(IMAGE_SUFFIXES)}) in it or its sub-folders")
    names = [c.name for c in classes]
    numeric = all(name.isdigit() for name in names)
    files: list[tuple[Path, int | None]] = [
        (image, int(cls.name) if numeric else index)
        for index, cls in enumerate(classes)
        for image in sorted(p for p in cls.iterdir() if _is_image(p))
    ]
    return files, names


def _read(path: Path, geometry: InputGeometry, prep: ImagePreprocessing, where: str) -> np.ndarray:
    """One image as float32 [C, H, W] in [0, 1], channel order applied, not yet normalized."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            mode = "L" if geometry.channels == 1 else "RGB"
            converted = image.convert(mode)
            if converted.size != (geometry.width, geometry.height):
                converted = converted.resize((geometry.width, geometry.height), Image.Resampling.BILINEAR)
            pixels = np.asarray(converted, dtype=np.float32) / 255.0
    except (OSError, UnidentifiedImageError) as exc:
        raise InputDataError(f"{where}: cannot read image {path} ({exc})") from exc
    chw = pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)
    if geometry.channels == 3 and prep.channel_order == "BGR":
        chw = chw[::-1]
    return chw


def load_images(
    files: list[Path], shape: list[int | None], prep: ImagePreprocessing, where: str
) -> np.ndarray:
    """`files` preprocessed into the model input `shape`: float32, the model's layout, one per sample."""
    geometry = input_geometry(shape, prep, where)
    chw = np.stack([_read(path, geometry, prep, where) for path in files])
    mean = np.asarray(prep.mean, dtype=np.float32).reshape(1, -1, 1, 1)
    std = np.asarray(prep.std, dtype=np.float32).reshape(1, -1, 1, 1)
    normalized = (chw - mean) / std
    if geometry.layout == "NHWC":
        normalized = normalized.transpose(0, 2, 3, 1)
    return np.ascontiguousarray(normalized, dtype=np.float32)


def load_image_folder(folder: Path, shape: list[int | None], prep: ImagePreprocessing, role: str) -> ImageSet:
    """Every image under `folder`, preprocessed into the model input `shape`."""
    where = f"{role} image folder {folder}"
    files, class_names = _class_folders(folder, where)
    labels = None if class_names is None else np.asarray([label for _, label in files], dtype=np.int64)
    return ImageSet(
        inputs=load_images([path for path, _ in files], shape, prep, where),
        labels=labels,
        class_names=class_names,
        files=len(files),
    )


def _numbers(flag: str, text: str | None, count: int | None = None) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        values = tuple(float(part) for part in text.split(","))
    except ValueError:
        raise InputDataError(
            f"{flag} {text!r}: write comma-separated numbers, e.g. 0.485,0.456,0.406"
        ) from None
    if count is not None and len(values) != count:
        raise InputDataError(f"{flag} {text!r}: give exactly {count} numbers")
    return values


def preprocessing_from_flags(
    size: str | None, layout: str | None, channel_order: str, mean: str | None, std: str | None
) -> ImagePreprocessing:
    """The --image-* flags as an ImagePreprocessing; InputDataError names the flag that is wrong."""
    from pydantic import ValidationError

    fields: dict[str, object] = {"layout": layout, "channel_order": channel_order}
    hw = _numbers("--image-size", size, 2)
    if hw is not None:
        if any(v != int(v) or v <= 0 for v in hw):
            raise InputDataError(f"--image-size {size!r}: height and width must be positive integers")
        fields["size"] = (int(hw[0]), int(hw[1]))
    for name, text in (("mean", mean), ("std", std)):
        values = _numbers(f"--image-{name}", text)
        if values is not None:
            fields[name] = values
    try:
        return ImagePreprocessing.model_validate(fields)
    except ValidationError as exc:
        first = exc.errors()[0]
        flag = f"--image-{str(first['loc'][0]).replace('_', '-')}" if first["loc"] else "--image-*"
        raise InputDataError(f"{flag}: {first['msg']}") from exc
