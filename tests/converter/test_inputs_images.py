"""Folders of images as calibration/evaluation data: PNGs written by the test, read with Pillow, resized,
reordered, normalized into the model's layout; labels from class sub-folders."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgefleet.converter.context import ConversionRequest
from edgefleet.converter.errors import InputDataError
from edgefleet.converter.inputs.images import ImagePreprocessing, load_image_folder, preprocessing_from_flags
from edgefleet.converter.pipeline import convert


def _write_digits(folder: Path, images: np.ndarray, labels: np.ndarray | None) -> Path:
    """(N, 1, 8, 8) digits in [0, 1] as 8-bit grey PNGs, in class folders when labels are given."""
    for index, image in enumerate(images):
        target = folder / str(labels[index]) if labels is not None else folder
        target.mkdir(parents=True, exist_ok=True)
        pixels = np.round(image[0] * 255).astype(np.uint8)
        Image.fromarray(pixels, mode="L").save(target / f"{index:04d}.png")
    return folder


def _onnx_top1(model: Path, images: np.ndarray, labels: np.ndarray) -> float:
    import onnxruntime as ort

    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    predicted = session.run(None, {"image": images})[0].argmax(1)
    return round(float((predicted == labels).mean() * 100), 2)


def test_image_folders_convert_like_the_arrays(
    reference_dir: Path,
    convert_cli: Callable[..., int],
    tmp_path: Path,
    eval_set: tuple[np.ndarray, np.ndarray],
    capsys: pytest.CaptureFixture[str],
) -> None:
    images, labels = eval_set
    with np.load(reference_dir / "calib.npz") as calib:
        _write_digits(tmp_path / "calib", calib["image"][:60], None)  # unlabeled: loose images
    _write_digits(tmp_path / "eval", images, labels)
    code = convert_cli(
        reference_dir / "digits_cnn_v2.onnx",
        "jetson-nano",
        tmp_path / "out",
        calib=tmp_path / "calib",
        eval_data=tmp_path / "eval",
    )
    out = capsys.readouterr().out
    assert code == 0
    # 8-bit PNGs round each pixel by at most 1/510; the digits' 17 grey levels survive that
    expected = _onnx_top1(reference_dir / "digits_cnn_v2.onnx", images, labels)
    assert f"top-1 on {len(labels)} samples: fp32 {expected:.2f}%" in out


def _rgb_image(folder: Path, name: str, rgb: tuple[int, int, int], size: tuple[int, int] = (4, 6)) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, rgb).save(folder / name)  # size is (width, height)


def test_preprocessing_layout_channel_order_normalization_resize(tmp_path: Path) -> None:
    _rgb_image(tmp_path / "cats", "a.png", (255, 0, 51))
    _rgb_image(tmp_path / "dogs", "b.png", (0, 102, 255))
    prep = ImagePreprocessing(channel_order="BGR", mean=(0.5,), std=(0.5, 0.25, 1.0))
    nchw = load_image_folder(tmp_path, [None, 3, 5, 2], prep, "evaluation")
    assert nchw.inputs.shape == (2, 3, 5, 2)  # resized from 4x6 (w x h) to 2x5
    assert nchw.class_names == ["cats", "dogs"] and nchw.labels.tolist() == [0, 1]
    # cats: BGR = (0.2, 0, 1); (x - 0.5) / std per channel
    np.testing.assert_allclose(nchw.inputs[0, :, 0, 0], [(0.2 - 0.5) / 0.5, (0 - 0.5) / 0.25, 0.5], atol=1e-6)
    nhwc = load_image_folder(tmp_path, [1, 5, 2, 3], prep, "evaluation")  # layout inferred: NHWC
    np.testing.assert_allclose(nhwc.inputs.transpose(0, 3, 1, 2), nchw.inputs, atol=1e-6)


def test_integer_class_folders_are_the_labels(tmp_path: Path) -> None:
    _rgb_image(tmp_path / "7", "a.png", (10, 10, 10))
    _rgb_image(tmp_path / "2", "b.png", (10, 10, 10))
    loaded = load_image_folder(tmp_path, [None, 1, 6, 4], ImagePreprocessing(), "calibration")
    assert sorted(loaded.labels.tolist()) == [2, 7] and loaded.inputs.shape == (2, 1, 6, 4)


@pytest.mark.parametrize(
    ("shape", "prep", "message"),
    [
        ([None, 4, 8, 8], ImagePreprocessing(layout="NCHW"), "has 4 channels; images give 1"),
        ([None, 3, 3, 3], ImagePreprocessing(), "cannot tell the layout"),
        ([None, 3, None, None], ImagePreprocessing(), "has an open size; pass --image-size"),
        (
            [None, 3, 8, 8],
            ImagePreprocessing(mean=(0.1, 0.2)),
            "--image-mean has 2 values; the input has 3 channel(s): give 1 or 3",
        ),
        ([None, 64], ImagePreprocessing(), "image folders feed 4-D image inputs"),
    ],
)
def test_preprocessing_that_cannot_fit_the_model(
    tmp_path: Path, shape: list, prep: ImagePreprocessing, message: str
) -> None:
    _rgb_image(tmp_path, "a.png", (1, 2, 3))
    with pytest.raises(InputDataError, match=re.escape(message)):
        load_image_folder(tmp_path, shape, prep, "calibration")


def test_folder_errors(tmp_path: Path) -> None:
    prep, shape = ImagePreprocessing(), [None, 3, 4, 4]
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputDataError, match="no images"):
        load_image_folder(tmp_path / "empty", shape, prep, "calibration")
    _rgb_image(tmp_path / "mixed", "loose.png", (1, 2, 3))
    _rgb_image(tmp_path / "mixed" / "cls", "inside.png", (1, 2, 3))
    with pytest.raises(InputDataError, match="both images and class sub-folders"):
        load_image_folder(tmp_path / "mixed", shape, prep, "calibration")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.png").write_bytes(b"not a png")
    with pytest.raises(InputDataError, match="cannot read image"):
        load_image_folder(tmp_path / "bad", shape, prep, "calibration")


def test_class_folders_must_agree_between_sets(
    make_request: Callable[..., ConversionRequest], tmp_path: Path
) -> None:
    for cls in ("cat", "dog"):
        for i in range(6):
            _rgb_image(tmp_path / "calib" / cls, f"{i}.png", (i * 40, 0, 0), (8, 8))
    _rgb_image(tmp_path / "eval" / "dog", "0.png", (0, 0, 0), (8, 8))
    request = make_request(
        "jetson-nano",
        model_name="digits_cnn_v1",
        calib=tmp_path / "calib",
        eval=tmp_path / "eval",
    )
    with pytest.raises(InputDataError, match="class folders differ"):
        convert(request)


def test_flags_become_preprocessing() -> None:
    prep = preprocessing_from_flags("224,160", "NHWC", "BGR", "0.485,0.456,0.406", "0.229,0.224,0.225")
    assert prep.size == (224, 160) and prep.layout == "NHWC" and prep.channel_order == "BGR"
    assert prep.mean == (0.485, 0.456, 0.406)
    with pytest.raises(InputDataError, match="--image-size '224': give exactly 2 numbers"):
        preprocessing_from_flags("224", None, "RGB", None, None)
    with pytest.raises(InputDataError, match="--image-std: Value error, std values must be non-zero"):
        preprocessing_from_flags(None, None, "RGB", None, "0")
