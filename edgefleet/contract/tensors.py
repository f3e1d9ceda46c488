"""Tensors on the wire (.npy / .npz bytes) and the conversion between a model's float form and the
artifact's own form (layout permutation and INT8 quantization) described by a TensorSpec.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Mapping, Sequence

import numpy as np

from edgefleet.contract.errors import TensorError
from edgefleet.contract.manifest import Dim, TensorSpec
from edgefleet.contract.messages import CONTENT_NPY, CONTENT_NPZ


def encode_npz(tensors: Mapping[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **{name: np.ascontiguousarray(a) for name, a in tensors.items()})
    return buffer.getvalue()


def encode_npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def decode_tensors(
    payload: bytes, content_type: str | None, input_names: Sequence[str]
) -> dict[str, np.ndarray]:
    """Decode a request body: one .npy for a single-input model, or an .npz keyed by input name."""
    try:
        if content_type == CONTENT_NPZ or (content_type is None and payload[:2] == b"PK"):
            with np.load(io.BytesIO(payload), allow_pickle=False) as archive:
                tensors = {name: archive[name] for name in archive.files}
        elif content_type in (CONTENT_NPY, None):
            if len(input_names) != 1:
                raise TensorError(
                    f"the model has {len(input_names)} inputs {list(input_names)}; "
                    "send an .npz keyed by input name"
                )
            tensors = {input_names[0]: np.load(io.BytesIO(payload), allow_pickle=False)}
        else:
            raise TensorError(
                f"content type {content_type!r} is not supported; use {CONTENT_NPY} or {CONTENT_NPZ}"
            )
    except TensorError:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise TensorError(f"payload is not a valid .npy/.npz tensor file ({exc})") from exc
    missing = [name for name in input_names if name not in tensors]
    extra = [name for name in tensors if name not in input_names]
    if missing or extra:
        raise TensorError(f"inputs do not match the model: missing {missing}, unexpected {extra}")
    return tensors


def decode_npz(payload: bytes) -> dict[str, np.ndarray]:
    try:
        with np.load(io.BytesIO(payload), allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise TensorError(f"payload is not a valid .npz tensor file ({exc})") from exc


def shape_matches(shape: Sequence[int], declared: Sequence[Dim]) -> bool:
    return len(shape) == len(declared) and all(
        d is None or d == s for s, d in zip(shape, declared, strict=True)
    )


def _fmt(shape: Sequence[Dim]) -> str:
    return "(" + ",".join("?" if d is None else str(d) for d in shape) + ")"


def quantize(array: np.ndarray, spec: TensorSpec) -> np.ndarray:
    assert spec.quantization is not None
    info = np.iinfo(np.dtype(spec.dtype))
    q = np.round(array / spec.quantization.scale) + spec.quantization.zero_point
    return np.clip(q, info.min, info.max).astype(spec.dtype)


def dequantize(array: np.ndarray, spec: TensorSpec) -> np.ndarray:
    assert spec.quantization is not None
    return ((array.astype(np.float32) - spec.quantization.zero_point) * spec.quantization.scale).astype(
        np.float32
    )


def to_artifact(spec: TensorSpec, array: np.ndarray) -> tuple[np.ndarray, bool]:
    """Bring a request tensor into the artifact's form.

    Returns (tensor, came_as_float): the artifact's own form passes through unchanged; the float32 form
    of the source model is permuted and quantized as the spec says. Anything else is a TensorError.
    """
    if array.dtype == np.dtype(spec.dtype) and shape_matches(array.shape, spec.shape):
        return array, spec.dtype == "float32"
    if array.dtype == np.float32 and shape_matches(array.shape, spec.float_shape):
        if not np.isfinite(array).all():
            raise TensorError(f"input '{spec.name}': contains NaN or inf")
        out = array if spec.perm is None else np.transpose(array, spec.perm)
        if spec.quantization is not None:
            out = quantize(out, spec)
        elif spec.dtype != "float32":
            out = out.astype(spec.dtype)
        return np.ascontiguousarray(out), True
    accepted = f"{spec.dtype} {_fmt(spec.shape)}"
    if spec.dtype != "float32" or list(spec.float_shape) != list(spec.shape):
        accepted += f" or float32 {_fmt(spec.float_shape)}"
    raise TensorError(f"input '{spec.name}': expected {accepted}, got {array.dtype} {_fmt(array.shape)}")


def from_artifact(spec: TensorSpec, array: np.ndarray, as_float: bool) -> np.ndarray:
    """Bring an output back to the float form (when the request came in float form)."""
    if not as_float:
        return array
    out = dequantize(array, spec) if spec.quantization is not None else array.astype(np.float32)
    if spec.perm is not None:
        out = np.transpose(out, np.argsort(spec.perm))
    return np.ascontiguousarray(out)
