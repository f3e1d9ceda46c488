"""`edgefleet infer DEVICE --input FILE` (or `--image FILE...`): one inference request from the command
line, over MQTT 5 request/response (the same path as `InferenceClient`). Prints each output's shape and
dtype, the top-k classes of classification outputs, and the round-trip time; `--save` writes the outputs
to an .npz.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from pydantic import BaseModel, Field

from edgefleet.contract.errors import EdgefleetError, TensorError
from edgefleet.contract.tensors import decode_npz, encode_npz
from edgefleet.converter.inputs.images import ImagePreprocessing, preprocessing_from_flags
from edgefleet.fleet.errors import InferenceError, InferenceTimeout
from edgefleet.fleet.fleet_view import KnownDevice
from edgefleet.fleet.inference import InferenceClient, Inputs
from edgefleet.fleet.inventory import collect_inventory, format_age
from edgefleet.fleet.selectors import explain_unknown_device

MAX_LISTED_VALUES = 64  # outputs this small are printed whole in --json


class InferInputError(EdgefleetError):
    """The input file cannot be sent."""


class OutputSummary(BaseModel):
    shape: list[int]
    dtype: str
    top_k: list[list[tuple[int, float]]] | None = Field(
        default=None, description="per sample: (class, score) best first; classification outputs only"
    )
    values: list[float] | None = Field(
        default=None, description=f"every value, when at most {MAX_LISTED_VALUES}"
    )


class InferResult(BaseModel):
    device_id: str
    round_trip_ms: float
    outputs: dict[str, OutputSummary]


def load_inputs(path: Path) -> Inputs:
    """An .npy (a single-input model) or an .npz keyed by input name."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InferInputError(f"cannot read --input {path}: {exc.strerror or exc}") from exc
    if path.suffix == ".npz":
        try:
            return decode_npz(data)
        except TensorError as exc:
            raise InferInputError(f"--input {path}: {exc}") from exc
    if path.suffix == ".npy":
        try:
            array: np.ndarray = np.load(path, allow_pickle=False)
        except ValueError as exc:
            raise InferInputError(f"--input {path}: not a readable .npy file ({exc})") from exc
        return array
    raise InferInputError(f"--input {path}: give an .npy (one input) or an .npz keyed by input name")


def top_k(array: np.ndarray, k: int) -> list[list[tuple[int, float]]] | None:
    """Per row, the k largest scores of a [N, C] float output; None for other outputs."""
    if k <= 0 or array.ndim != 2 or array.dtype.kind != "f" or array.shape[1] < 2:
        return None
    best = np.argsort(-array, axis=1, kind="stable")[:, :k]
    return [
        [(int(c), round(float(row[c]), 6)) for c in order] for row, order in zip(array, best, strict=True)
    ]


def summarize(device_id: str, outputs: dict[str, np.ndarray], round_trip_ms: float, k: int) -> InferResult:
    return InferResult(
        device_id=device_id,
        round_trip_ms=round(round_trip_ms, 3),
        outputs={
            name: OutputSummary(
                shape=list(array.shape),
                dtype=array.dtype.name,
                top_k=top_k(array, k),
                values=[round(float(v), 6) for v in array.ravel()]
                if array.size <= MAX_LISTED_VALUES
                else None,
            )
            for name, array in outputs.items()
        },
    )


def render(result: InferResult) -> str:
    lines = [f"device {result.device_id}: {len(result.outputs)} output(s) in {result.round_trip_ms:.1f} ms"]
    for name, output in result.outputs.items():
        lines.append(f"  {name}: {output.dtype} {output.shape}")
        for index, row in enumerate(output.top_k or []):
            best = ", ".join(f"{c} ({score:.4g})" for c, score in row)
            lines.append(f"    sample {index}: top-{len(row)} {best}")
    return "\n".join(lines)


def check_reachable(broker_url: str, device_id: str) -> KnownDevice:
    """Before sending: a device the broker has never heard of (a typo) or one that is offline cannot answer;
    say so at once instead of after the timeout."""
    inventory, _ = collect_inventory(broker_url, listen_s=0)  # the retained presence of every device
    device = inventory.get(device_id)
    if device is None:
        raise InferenceError(device_id, explain_unknown_device(device_id, inventory.devices))
    if device.online is False:
        raise InferenceError(device_id, f"it is offline (last seen {format_age(device.last_seen())})")
    return device


def image_inputs(device: KnownDevice, paths: list[Path], prep: ImagePreprocessing) -> Inputs:
    """Image files as the request of the device's active model: its input shape comes from the device's
    status, the preprocessing from the --image-* flags (as given to `convert`)."""
    from edgefleet.converter.inputs.images import load_images

    model = device.status.model if device.status is not None else None
    shapes = model.input_shapes if model is not None else {}
    if not shapes:
        raise InferInputError(
            f"device {device.device_id} has not said its model's input shape (no model active, or an older "
            "agent); pass --input FILE.npz instead of --image"
        )
    if len(shapes) != 1:
        raise InferInputError(f"--image feeds single-input models; this one has inputs {sorted(shapes)}")
    ((name, shape),) = shapes.items()
    if shape and shape[0] is not None and shape[0] < len(paths):
        raise InferInputError(
            f"the model takes {shape[0]} sample(s) per request ({name} {shape}); "
            f"pass at most {shape[0]} --image"
        )
    return {name: load_images(paths, shape, prep, "--image")}


def run_infer(args: argparse.Namespace) -> int:
    """CLI entry point (edgefleet infer)."""
    # what can be checked without the broker first: the input file, the image flags
    inputs = load_inputs(args.input) if args.input is not None else None
    prep = preprocessing_from_flags(
        args.image_size, args.image_layout, args.image_channel_order, args.image_mean, args.image_std
    )
    device = check_reachable(args.broker, args.device)
    if inputs is None:
        inputs = image_inputs(device, args.image, prep)
    with InferenceClient(args.broker, default_timeout=args.timeout) as client:
        started = time.perf_counter()
        try:
            outputs = client.infer(args.device, inputs)
        except InferenceTimeout as exc:
            hint = "raise --timeout for a slow model, or see `edgefleet status`"
            raise InferenceTimeout(args.device, f"{exc.detail}; {hint}") from None
        elapsed_ms = (time.perf_counter() - started) * 1000
    if args.save is not None:
        args.save.write_bytes(encode_npz(outputs))
    result = summarize(args.device, outputs, elapsed_ms, args.top_k)
    print(result.model_dump_json(indent=2) if args.json else render(result))
    return 0
