"""Tensors on the wire (.npy / .npz bytes) and the conversion between a model's float form and the
artifact's own form (layout permutation and INT8 quantization) described by a TensorSpec.
"""

from __future__ import annotations

import io
import lzma
import math
import struct
import threading
import zipfile
import zlib
from collections.abc import Mapping, Sequence

import numpy as np

from edgefleet.contract.errors import TensorError
from edgefleet.contract.manifest import Dim, TensorSpec
from edgefleet.contract.messages import CONTENT_NPY, CONTENT_NPZ

# Hot path of every inference reply and request: .npy headers are made/parsed by numpy once per distinct
# dtype and shape and then reused, and the .npz (a stored zip) is written directly; np.savez/np.load spend
# ~40/~70 us in zipfile and header parsing per call, more than a small model takes to run.
_HEADER_CACHE_SIZE = 256
_npy_headers: dict[tuple[str, tuple[int, ...]], bytes] = {}
_npy_layouts: dict[bytes, tuple[np.dtype, bool, tuple[int, ...]]] = {}
_HEADER_PARSE_LOCK = threading.Lock()
_ZIP_DATE = (0 << 9) | (1 << 5) | 1  # 1980-01-01, the zip epoch (np.savez writes the current time)


def _npy_bytes(array: np.ndarray) -> bytes:
    """`array` as .npy bytes, byte for byte what np.save writes."""
    array = np.ascontiguousarray(array)
    key = (array.dtype.str, array.shape)  # identifies the header for numbers and bools only
    cacheable = array.dtype.kind in "biufc"
    header = _npy_headers.get(key) if cacheable else None
    if header is None:
        buffer = io.BytesIO()
        np.save(buffer, array, allow_pickle=False)
        data = buffer.getvalue()
        if cacheable and len(_npy_headers) < _HEADER_CACHE_SIZE:
            _npy_headers[key] = data[: len(data) - array.nbytes]
        return data
    return header + array.tobytes()


def encode_npz(tensors: Mapping[str, np.ndarray]) -> bytes:
    """An uncompressed .npz (what np.savez writes: one NAME.npy per tensor in a stored zip)."""
    local: list[bytes] = []
    central: list[bytes] = []
    offset = 0
    for name, array in tensors.items():
        member = f"{name}.npy".encode()
        data = _npy_bytes(array)
        crc, size = zlib.crc32(data), len(data)
        if size >= 0xFFFFFFFF or offset >= 0xFFFFFFFF:  # needs zip64: leave it to numpy
            buffer = io.BytesIO()
            np.savez(buffer, **{n: np.ascontiguousarray(a) for n, a in tensors.items()})  # type: ignore[arg-type]
            return buffer.getvalue()
        fields = (20, 0, 0, 0, _ZIP_DATE, crc, size, size, len(member))
        local += [struct.pack("<4s5H3L2H", b"PK\x03\x04", *fields, 0), member, data]
        central += [
            struct.pack("<4s6H3L5H2L", b"PK\x01\x02", 0x0314, *fields, 0, 0, 0, 0, 0o600 << 16, offset),
            member,
        ]
        offset += 30 + len(member) + size
    directory = b"".join(central)
    count = len(central) // 2
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, count, count, len(directory), offset, 0)
    return b"".join(local) + directory + end


def _load_npy(payload: bytes) -> np.ndarray:
    """An .npy payload as a read-only array over the payload's bytes (no copy), as np.load reads it with
    allow_pickle=False; the header is parsed by numpy (once per distinct header). ValueError if invalid."""
    view = memoryview(payload)
    if bytes(view[:6]) != b"\x93NUMPY" or len(view) < 10:
        raise ValueError("not an .npy file (the magic string is missing)")
    start = 10 if view[6] == 1 else 12
    end = start + int.from_bytes(view[8:start], "little")
    header = bytes(view[:end])
    layout = _npy_layouts.get(header)
    if layout is None:
        stream = io.BytesIO(header)
        major, _ = np.lib.format.read_magic(stream)
        if major not in (1, 2, 3):
            raise ValueError(f".npy format version {major} is not supported")
        # version 3 is version 2 with a UTF-8 header, which differs only for structured dtypes with
        # non-latin-1 field names (not tensors): read alike, with the same size check before any allocation
        read = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
        # numpy parses headers with ast.literal_eval, which failed with "SystemError: AST constructor
        # recursion depth mismatch" when two threads parsed at once (CPython 3.11.7, seen in a test run under
        # load): one parse at a time; only a header not seen before gets here
        with _HEADER_PARSE_LOCK:
            try:
                shape, fortran_order, dtype = read(stream)
            except ValueError:
                raise
            except Exception as exc:  # the header is Python literal syntax: a broken one raises anything
                raise ValueError(
                    "the .npy header is not valid: it must be a dict like "
                    "{'descr': '<f4', 'fortran_order': False, 'shape': (1, 64)}"
                ) from exc
        if dtype.hasobject:
            raise ValueError("object arrays cannot be loaded when allow_pickle=False")
        if any(d < 0 for d in shape):
            raise ValueError(f"the header declares a negative dimension {tuple(shape)}")
        layout = (dtype, bool(fortran_order), tuple(shape))
        if len(_npy_layouts) < _HEADER_CACHE_SIZE:
            _npy_layouts[header] = layout
    dtype, fortran_order, shape = layout
    count = math.prod(shape)
    if len(view) - end < count * dtype.itemsize:
        raise ValueError(
            f"the array data is {len(view) - end} bytes; {dtype} {shape} takes {count * dtype.itemsize}"
        )
    array = np.frombuffer(payload, dtype=dtype, count=count, offset=end)
    return array.reshape(shape[::-1]).transpose() if fortran_order else array.reshape(shape)


def read_npz(payload: bytes) -> dict[str, np.ndarray]:
    """Every member of an .npz payload, each read like an .npy (so a header is never trusted beyond the
    bytes that are there); ValueError or zipfile.BadZipFile if invalid."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(payload))
    except NotImplementedError as exc:  # e.g. "zip file version 6.6"
        raise ValueError(f"not a readable .npz ({exc})") from exc
    with archive:
        names = archive.namelist()
        if len(names) != len(set(names)):
            raise ValueError("the archive holds a member name twice")
        tensors = {}
        for name in names:
            if not name.endswith(".npy"):
                raise ValueError(f"member {name!r} is not an .npy file")
            try:
                data = archive.read(name)
            except (NotImplementedError, RuntimeError, EOFError, zlib.error, lzma.LZMAError) as exc:
                # unsupported compression or flags, encryption, corrupt compressed data
                raise ValueError(f"member {name!r} cannot be read ({exc})") from exc
            tensors[name[: -len(".npy")]] = _load_npy(data)
    return tensors


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
            tensors = read_npz(payload)
        elif content_type in (CONTENT_NPY, None):
            if len(input_names) != 1:
                raise TensorError(
                    f"the model has {len(input_names)} inputs {list(input_names)}; "
                    "send an .npz keyed by input name"
                )
            tensors = {input_names[0]: _load_npy(payload)}
        else:
            raise TensorError(
                f"content type {content_type!r} is not supported; use {CONTENT_NPY} or {CONTENT_NPZ}"
            )
    except TensorError:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise TensorError(f"payload is not a valid .npy/.npz tensor file ({exc})") from exc
    missing = [name for name in input_names if name not in tensors]
    extra = [name for name in tensors if name not in input_names]
    if missing or extra:
        raise TensorError(f"inputs do not match the model: missing {missing}, unexpected {extra}")
    return tensors


def decode_npz(payload: bytes) -> dict[str, np.ndarray]:
    """An .npz (a reply) as writable arrays of its own, like np.load gives them."""
    try:
        return {name: np.array(array) for name, array in read_npz(payload).items()}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise TensorError(f"payload is not a valid .npz tensor file ({exc})") from exc


def shape_matches(shape: Sequence[int], declared: Sequence[Dim]) -> bool:
    return len(shape) == len(declared) and all(
        d is None or d == s for s, d in zip(shape, declared, strict=True)
    )


def _fmt(shape: Sequence[Dim]) -> str:
    return "(" + ",".join("?" if d is None else str(d) for d in shape) + ")"


def quantize(array: np.ndarray, spec: TensorSpec) -> np.ndarray:
    """q = clip(round(x / scale) + zero_point), computed in place in one float32 temporary."""
    assert spec.quantization is not None
    info = np.iinfo(np.dtype(spec.dtype))
    q = np.divide(array, np.float32(spec.quantization.scale), dtype=np.float32)
    np.rint(q, out=q)
    q += np.float32(spec.quantization.zero_point)
    np.clip(q, info.min, info.max, out=q)
    quantized: np.ndarray = q.astype(spec.dtype)
    return quantized


def _all_finite(array: np.ndarray) -> bool:
    # min/max propagate NaN and expose +-inf without allocating a boolean array the size of the input
    return array.size == 0 or bool(np.isfinite(array.min()) and np.isfinite(array.max()))


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
        if array.dtype.kind == "f" and not _all_finite(array):  # NaN in, NaN out: not the model's failure
            raise TensorError(f"input '{spec.name}': contains NaN or inf")
        return array, spec.dtype == "float32"
    if array.dtype == np.float32 and shape_matches(array.shape, spec.float_shape):
        if not _all_finite(array):
            raise TensorError(f"input '{spec.name}': contains NaN or inf")
        # Quantize first (elementwise, on the contiguous input), then permute the smaller integer tensor.
        if spec.quantization is not None:
            out = quantize(array, spec)
        elif spec.dtype != "float32":
            out = array.astype(spec.dtype)
        else:
            out = array
        if spec.perm is not None:
            out = np.transpose(out, spec.perm)
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
