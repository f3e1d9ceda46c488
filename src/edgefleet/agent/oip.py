"""Open Inference Protocol v2 (KServe/Triton REST) <-> numpy: parse and validate an infer request against
the model's manifest, and build the infer response and the model metadata. Tensor data comes as JSON or,
with Triton's binary tensor data extension (what tritonclient sends by default), as raw little-endian
bytes after the JSON, whose length the Inference-Header-Content-Length header gives.

Each input may come in the source model's float form (FP32, `float_shape`) or the artifact's own form
(`dtype`, `shape`), exactly as on the MQTT path; the metadata advertises the float form.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError

from edgefleet.contract.errors import ClientError, first_validation_error
from edgefleet.contract.manifest import BundleManifest, Dim, TensorSpec
from edgefleet.contract.profiles import ArtifactFormat
from edgefleet.contract.tensors import shape_matches

# OIP tensor datatypes this agent carries in JSON (BYTES and BF16 have no use for these models)
NUMPY_OF = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
}
OIP_OF = {dtype.name: name for name, dtype in NUMPY_OF.items()}
PLATFORMS = {ArtifactFormat.ONNX: "onnxruntime_onnx", ArtifactFormat.TFLITE: "litert_tflite"}
EXTENSIONS = ["binary_tensor_data"]


class OipError(ClientError):
    """A request answered with an OIP error body; `status` is the HTTP status."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class _Model(BaseModel):
    # OIP peers may send fields this version does not know (extensions): ignore them
    model_config = ConfigDict(extra="ignore")


class RequestInput(_Model):
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: Any = Field(default=None, description="row-major tensor data, flat or nested; absent when binary")


class RequestOutput(_Model):
    name: str
    parameters: dict[str, Any] | None = None


class InferRequest(_Model):
    id: str | None = None
    parameters: dict[str, Any] | None = None
    inputs: list[RequestInput] = Field(min_length=1)
    outputs: list[RequestOutput] | None = None
    _binary: dict[str, memoryview] = PrivateAttr(default_factory=dict)  # input name -> its raw bytes

    def binary_of(self, name: str) -> memoryview | None:
        return self._binary.get(name)


_OIP_OF_DTYPE = {dtype: name for name, dtype in NUMPY_OF.items()}  # dtype.name is slow: runs on every request


def oip_datatype(dtype: np.dtype[Any] | str) -> str:
    resolved = np.dtype(dtype)
    return _OIP_OF_DTYPE.get(resolved) or OIP_OF.get(resolved.name, resolved.name.upper())


def _shape_text(shape: Sequence[Dim]) -> str:
    return "[" + ",".join("-1" if d is None else str(d) for d in shape) + "]"


def _binary_size(item: RequestInput) -> int | None:
    size = (item.parameters or {}).get("binary_data_size")
    if size is None:
        return None
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise OipError(f"input '{item.name}': binary_data_size must be a byte count, got {size!r}")
    return size


def parse_request(body: bytes, header_length: int | None = None) -> InferRequest:
    """The request: JSON, or with `header_length` (Inference-Header-Content-Length) the JSON followed by
    the binary data of the inputs that give `binary_data_size`, in their order. OipError(400) naming the
    first problem."""
    if header_length is not None and header_length > len(body):
        raise OipError(
            f"Inference-Header-Content-Length is {header_length}, more than the {len(body)}-byte request body"
        )
    head = body if header_length is None else body[:header_length]
    binary = memoryview(body)[len(head) :]
    try:
        request = InferRequest.model_validate_json(head)
    except ValidationError as exc:
        err = exc.errors()[0]
        if err["type"] == "json_invalid":
            raise OipError(f"request body is not valid JSON ({err['msg']})") from exc
        raise OipError(f"infer request: {first_validation_error(exc, 'request body')}") from exc
    offset = 0
    for item in request.inputs:
        size = _binary_size(item)
        if size is None:
            if item.data is None:
                raise OipError(
                    f"input '{item.name}' has no data (give data, or binary_data_size and binary data)"
                )
            continue
        if header_length is None:
            raise OipError(
                f"input '{item.name}' sets binary_data_size, but the request has no "
                "Inference-Header-Content-Length header saying where its JSON ends"
            )
        if offset + size > len(binary):
            raise OipError(
                f"input '{item.name}': binary_data_size {size} runs past the end of the binary data "
                f"({len(binary) - offset} bytes left)"
            )
        request._binary[item.name] = binary[offset : offset + size]
        offset += size
    if offset != len(binary):
        raise OipError(f"{len(binary) - offset} bytes after the JSON belong to no input's binary_data_size")
    return request


def _accepted_forms(spec: TensorSpec) -> list[tuple[str, list[Dim]]]:
    forms: list[tuple[str, list[Dim]]] = [("FP32", list(spec.float_shape))]
    artifact = (oip_datatype(spec.dtype), list(spec.shape))
    if artifact != forms[0]:
        forms.append(artifact)
    return forms


def _from_binary(item: RequestInput, raw: memoryview, dtype: np.dtype[Any]) -> np.ndarray:
    expected = math.prod(item.shape) * dtype.itemsize
    if len(raw) != expected:
        raise OipError(
            f"input '{item.name}': binary_data_size is {len(raw)} bytes; {item.datatype} "
            f"{_shape_text(item.shape)} takes {expected}"
        )
    # the extension's byte order is little-endian; no copy on little-endian devices
    return np.frombuffer(raw, dtype=dtype.newbyteorder("<")).astype(dtype, copy=False).reshape(item.shape)


def _to_array(item: RequestInput, dtype: np.dtype[Any], raw: memoryview | None = None) -> np.ndarray:
    """The data as a numpy array of `dtype` and the declared shape; OipError when it cannot be."""
    if raw is not None:
        return _from_binary(item, raw, dtype)
    where = f"input '{item.name}'"
    expected = math.prod(item.shape)
    if not isinstance(item.data, list):
        raise OipError(f"{where}: data must be a JSON array of numbers")
    try:
        if dtype.kind == "f":
            array = np.array(item.data, dtype=dtype)  # ints are fine for a float tensor
            if not np.isfinite(array).all():  # a JSON null becomes NaN
                raise OipError(f"{where}: data holds null, NaN or infinity")
        else:
            values = np.asarray(item.data)
            allowed = "b" if dtype.kind == "b" else "iu"
            if values.size and values.dtype.kind not in allowed:
                what = "true/false values" if dtype.kind == "b" else "integers"
                datatype = oip_datatype(dtype)
                raise OipError(f"{where}: datatype {datatype} needs {what}, got {values.dtype.name} data")
            if values.size and dtype.kind in "iu":
                info = np.iinfo(dtype)
                low, high = int(values.min()), int(values.max())
                if low < info.min or high > info.max:
                    raise OipError(
                        f"{where}: values {low}..{high} do not fit datatype {oip_datatype(dtype)} "
                        f"({info.min}..{info.max})"
                    )
            array = values.astype(dtype)
    except OipError:
        raise
    except (ValueError, TypeError, OverflowError) as exc:
        raise OipError(f"{where}: data is not a regular array of numbers ({exc})") from exc
    if array.size != expected:
        shape = _shape_text(item.shape)
        raise OipError(f"{where}: shape {shape} holds {expected} values, data has {array.size}")
    return array.reshape(item.shape)


def input_arrays(request: InferRequest, specs: Sequence[TensorSpec]) -> dict[str, np.ndarray]:
    """The request's inputs as arrays keyed by manifest input name, each in one of its accepted forms."""
    by_name = {spec.name: spec for spec in specs}
    seen: dict[str, np.ndarray] = {}
    for item in request.inputs:
        spec = by_name.get(item.name)
        if spec is None:
            raise OipError(f"input '{item.name}' is not an input of this model (inputs: {sorted(by_name)})")
        if item.name in seen:
            raise OipError(f"input '{item.name}' is given more than once")
        if any(d < 0 for d in item.shape):
            raise OipError(f"input '{item.name}': shape {_shape_text(item.shape)} has a negative dimension")
        forms = _accepted_forms(spec)
        if not any(item.datatype == dtype and shape_matches(item.shape, shape) for dtype, shape in forms):
            accepted = " or ".join(f"{datatype} {_shape_text(shape)}" for datatype, shape in forms)
            raise OipError(
                f"input '{item.name}': expected {accepted} (-1: any size); got {item.datatype} "
                f"{_shape_text(item.shape)}"
            )
        seen[item.name] = _to_array(item, NUMPY_OF[item.datatype], request.binary_of(item.name))
    missing = [name for name in by_name if name not in seen]
    if missing:
        raise OipError(f"inputs {missing} are missing from the request")
    return seen


def requested_outputs(request: InferRequest, specs: Sequence[TensorSpec]) -> list[str]:
    """Output names to return: those the request lists (each must exist), else all of them."""
    names = [spec.name for spec in specs]
    if not request.outputs:
        return names
    unknown = [o.name for o in request.outputs if o.name not in names]
    if unknown:
        raise OipError(f"requested outputs {unknown} are not outputs of this model (outputs: {names})")
    return [o.name for o in request.outputs]


def binary_outputs(request: InferRequest, names: Sequence[str]) -> set[str]:
    """Outputs to return as binary data: per output `binary_data`, else the request's `binary_data_output`."""
    default = bool((request.parameters or {}).get("binary_data_output", False))
    asked = {o.name: (o.parameters or {}).get("binary_data", default) for o in request.outputs or []}
    return {name for name in names if asked.get(name, default)}


def infer_response(
    model_name: str,
    model_version: str,
    request_id: str | None,
    outputs: Mapping[str, np.ndarray],
    names: Sequence[str],
    binary: set[str] | frozenset[str] = frozenset(),
) -> tuple[bytes, int | None]:
    """The response body and, when some outputs are binary, the length of its JSON part (for the
    Inference-Header-Content-Length header)."""
    body: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
    if request_id is not None:
        body["id"] = request_id
    entries: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for name in names:
        array = outputs[name]
        entry: dict[str, Any] = {
            "name": name,
            "datatype": oip_datatype(array.dtype),
            "shape": list(array.shape),
        }
        if name in binary:
            blob = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = array.ravel().tolist()
        entries.append(entry)
    body["outputs"] = entries
    try:
        head = json.dumps(body, allow_nan=False, separators=(",", ":")).encode()
    except ValueError as exc:
        raise OipError(
            "the model produced NaN or infinity, which JSON cannot carry (ask for binary outputs)", status=500
        ) from exc
    return (head + b"".join(blobs), len(head)) if blobs else (head, None)


def _tensor_metadata(name: str, datatype: str, shape: Sequence[Dim]) -> dict[str, Any]:
    return {"name": name, "datatype": datatype, "shape": [-1 if d is None else d for d in shape]}


def model_metadata(manifest: BundleManifest) -> dict[str, Any]:
    """OIP model metadata; tensors in the float form (the artifact form is accepted too)."""
    return {
        "name": manifest.name,
        "versions": [manifest.version],
        "platform": PLATFORMS.get(manifest.format, manifest.format.value),
        "inputs": [_tensor_metadata(s.name, "FP32", s.float_shape) for s in manifest.inputs],
        "outputs": [_tensor_metadata(s.name, "FP32", s.float_shape) for s in manifest.outputs],
    }


def error_body(message: str) -> bytes:
    return json.dumps({"error": message}).encode()
