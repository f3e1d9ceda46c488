"""ONNX LSTM and GRU as TensorFlow ops unrolled over the (static) sequence.

Every step is a FULLY_CONNECTED on the state plus elementwise gates, and the input projection of all steps is
one 1x1 CONV_2D: ops that full-integer quantization calibrates like any other (each step's state gets its
own scale) and that the Edge TPU runs. TFLite's fused LSTM op quantizes by its own scheme (16-bit
intermediate state) and XNNPACK does not run it; GRU has no fused TFLite op at all.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

GATES = {"LSTM": 4, "GRU": 3}
DEFAULT_ACTIVATIONS = {"LSTM": ["Sigmoid", "Tanh", "Tanh"], "GRU": ["Sigmoid", "Tanh"]}


@dataclass(frozen=True)
class RecurrentSpec:
    """One ONNX LSTM/GRU node's weights, per direction (ONNX gate order: LSTM i, o, f, c; GRU z, r, h)."""

    kind: Literal["LSTM", "GRU"]
    hidden: int
    directions: tuple[Literal["forward", "reverse"], ...]
    w: np.ndarray  # [directions, gates*hidden, input]
    r: np.ndarray  # [directions, gates*hidden, hidden]
    b: np.ndarray  # [directions, 2*gates*hidden]: input biases, then recurrence biases
    peepholes: np.ndarray | None  # LSTM only: [directions, 3*hidden] (i, o, f)
    linear_before_reset: bool  # GRU only


def recurrent_spec(
    kind: str,
    attrs: Mapping[str, Any],
    w: np.ndarray,
    r: np.ndarray,
    b: np.ndarray | None,
    peepholes: np.ndarray | None,
) -> RecurrentSpec:
    """The spec of an LSTM/GRU node from its attributes (strings decoded) and weights; ValueError naming
    what is not supported (clip, custom activations, coupled input-forget gate, layout 1)."""
    if kind not in GATES:
        raise ValueError(f"{kind} is not a recurrent op this path unrolls (LSTM, GRU)")
    if "clip" in attrs:
        raise ValueError("cell clipping (attribute clip) is not supported")
    if int(attrs.get("layout", 0)) != 0:
        raise ValueError("only layout 0 ([sequence, batch, features]) is supported")
    if int(attrs.get("input_forget", 0)):
        raise ValueError("the coupled input-forget gate (input_forget=1) is not supported")
    direction = str(attrs.get("direction", "forward"))
    directions: tuple[Literal["forward", "reverse"], ...]
    if direction == "bidirectional":
        directions = ("forward", "reverse")
    elif direction in ("forward", "reverse"):
        directions = (direction,)  # type: ignore[assignment]
    else:
        raise ValueError(f"direction '{direction}' is not one of forward, reverse, bidirectional")
    activations = [str(a) for a in attrs.get("activations", [])]
    if activations and activations != DEFAULT_ACTIVATIONS[kind] * len(directions):
        raise ValueError(f"activations {activations} differ from the default {DEFAULT_ACTIVATIONS[kind]}")
    hidden = int(attrs["hidden_size"]) if "hidden_size" in attrs else int(r.shape[-1])
    gates = GATES[kind]
    if w.shape[:2] != (len(directions), gates * hidden) or r.shape != (
        len(directions),
        gates * hidden,
        hidden,
    ):
        raise ValueError(f"weights W {list(w.shape)} / R {list(r.shape)} do not match hidden_size {hidden}")
    bias = np.zeros((len(directions), 2 * gates * hidden), np.float32) if b is None else b
    return RecurrentSpec(
        kind=kind,  # type: ignore[arg-type]
        hidden=hidden,
        directions=directions,
        w=w.astype(np.float32),
        r=r.astype(np.float32),
        b=bias.astype(np.float32),
        peepholes=None if peepholes is None else peepholes.astype(np.float32),
        linear_before_reset=bool(int(attrs.get("linear_before_reset", 0))),
    )


def _input_projection(tf: Any, x: Any, kernel: np.ndarray, bias: np.ndarray) -> list[Any]:
    """x [steps, batch, input] @ kernel [input, out] + bias for every step at once (a 1x1 convolution over a
    [1, steps, batch, input] map), split back into one [batch, out] tensor per step."""
    steps, batch, features = (int(d) for d in x.shape)
    filters = tf.constant(kernel.reshape(1, 1, features, -1))
    projected = tf.nn.bias_add(
        tf.nn.conv2d(tf.reshape(x, (1, steps, batch, features)), filters, 1, "VALID"), bias
    )
    per_step = tf.split(projected, steps, axis=1) if steps > 1 else [projected]
    return [tf.reshape(step, (batch, kernel.shape[1])) for step in per_step]


def _state(tf: Any, initial: Any, direction: int, batch: int, hidden: int) -> Any:
    if initial is None:
        return tf.zeros((batch, hidden), tf.float32)
    if isinstance(initial, np.ndarray):
        return tf.constant(initial[direction].astype(np.float32))
    return tf.reshape(initial[direction : direction + 1], (batch, hidden))


def _lstm_direction(
    tf: Any, spec: RecurrentSpec, d: int, inputs: list[Any], h: Any, c: Any
) -> tuple[list[Any], Any, Any]:
    hid = spec.hidden
    recurrence = tf.constant(spec.r[d])  # [out, in]: FULLY_CONNECTED's own layout
    peep = None if spec.peepholes is None else [spec.peepholes[d][k * hid : (k + 1) * hid] for k in range(3)]
    outputs = []
    for projected in inputs:
        i, o, f, cell = tf.split(projected + tf.matmul(h, recurrence, transpose_b=True), 4, axis=-1)
        if peep is not None:
            i, f = i + peep[0] * c, f + peep[2] * c
        c = tf.sigmoid(f) * c + tf.sigmoid(i) * tf.tanh(cell)
        if peep is not None:
            o = o + peep[1] * c
        h = tf.sigmoid(o) * tf.tanh(c)
        outputs.append(h)
    return outputs, h, c


def _gru_direction(tf: Any, spec: RecurrentSpec, d: int, inputs: list[Any], h: Any) -> tuple[list[Any], Any]:
    hid = spec.hidden
    r_gates = tf.constant(spec.r[d][: 2 * hid])  # [out, in], as FULLY_CONNECTED holds it
    r_hidden = tf.constant(spec.r[d][2 * hid :])
    rb_hidden = spec.b[d][5 * hid :]  # the other recurrence biases are in the input projection
    outputs = []
    for projected in inputs:
        xz, xr, xh = tf.split(projected, 3, axis=-1)
        hz, hr = tf.split(tf.matmul(h, r_gates, transpose_b=True), 2, axis=-1)
        z, reset = tf.sigmoid(xz + hz), tf.sigmoid(xr + hr)
        if spec.linear_before_reset:
            candidate = tf.tanh(
                xh + reset * tf.nn.bias_add(tf.matmul(h, r_hidden, transpose_b=True), rb_hidden)
            )
        else:  # the recurrence bias of the candidate is folded into the input projection
            candidate = tf.tanh(xh + tf.matmul(reset * h, r_hidden, transpose_b=True))
        h = candidate + z * (h - candidate)
        outputs.append(h)
    return outputs, h


def _projection_bias(spec: RecurrentSpec, d: int) -> np.ndarray:
    """Biases added once per step with the input projection: both biases of every gate, except the GRU
    candidate's recurrence bias when it is applied inside the reset product (linear_before_reset)."""
    gh = GATES[spec.kind] * spec.hidden
    wb, rb = spec.b[d][:gh], spec.b[d][gh:].copy()
    if spec.kind == "GRU" and spec.linear_before_reset:
        rb[2 * spec.hidden :] = 0.0
    return wb + rb


def run_recurrent(tf: Any, spec: RecurrentSpec, x: Any, initial_h: Any, initial_c: Any) -> list[Any]:
    """The node's outputs Y [steps, directions, batch, hidden], Y_h [directions, batch, hidden] and (LSTM)
    Y_c, for x [steps, batch, input]; initial states are tensors or arrays [directions, batch, hidden], or
    None for zeros."""
    steps, batch, _ = (int(d) for d in x.shape)
    ys: list[Any] = []
    last_h: list[Any] = []
    last_c: list[Any] = []
    for d, direction in enumerate(spec.directions):
        inputs = _input_projection(tf, x, spec.w[d].T, _projection_bias(spec, d))
        if direction == "reverse":
            inputs = inputs[::-1]
        h = _state(tf, initial_h, d, batch, spec.hidden)
        if spec.kind == "LSTM":
            c = _state(tf, initial_c, d, batch, spec.hidden)
            outputs, h, c = _lstm_direction(tf, spec, d, inputs, h, c)
            last_c.append(tf.reshape(c, (1, batch, spec.hidden)))
        else:
            outputs, h = _gru_direction(tf, spec, d, inputs, h)
        if direction == "reverse":
            outputs = outputs[::-1]
        y = tf.concat(outputs, axis=0) if steps > 1 else outputs[0]
        ys.append(tf.reshape(y, (steps, 1, batch, spec.hidden)))
        last_h.append(tf.reshape(h, (1, batch, spec.hidden)))
    results = [_joined(tf, ys, 1), _joined(tf, last_h, 0)]
    if spec.kind == "LSTM":
        results.append(_joined(tf, last_c, 0))
    return results


def _joined(tf: Any, tensors: Sequence[Any], axis: int) -> Any:
    return tf.concat(list(tensors), axis=axis) if len(tensors) > 1 else tensors[0]
