"""Output kinds: what each model output is, named with `--output-kind` or guessed from its shape; the kind
picks the measure that judges the output (see outputs.py)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal, get_args

from edgefleet.converter.errors import ConversionError

OutputKind = Literal["classification", "detection", "segmentation", "ctc", "tensor"]
OUTPUT_KINDS: tuple[str, ...] = get_args(OutputKind)
KindSource = Literal["request", "shape"]  # named by the user, or guessed from the output's shape
EVERY_OUTPUT = "*"  # key of `--output-kind KIND` (no output named): every output not named otherwise


def _kind(text: str, flag: str) -> OutputKind:
    if text not in OUTPUT_KINDS:
        raise ConversionError(
            f"--output-kind {flag}: unknown kind '{text}'; use one of {', '.join(OUTPUT_KINDS)}"
        )
    return text  # type: ignore[return-value]


def parse_output_kinds(specs: Sequence[str] | None) -> dict[str, OutputKind]:
    """`--output-kind KIND` (every output) and `--output-kind OUTPUT=KIND` (repeatable) as {output: kind}.

    Split at the last '=': kind names have none, output names may (TensorFlow exports name them freely)."""
    kinds: dict[str, OutputKind] = {}
    for spec in specs or []:
        output, _, kind = spec.rpartition("=")
        key = output or EVERY_OUTPUT
        if "=" in spec and not output:
            raise ConversionError(f"--output-kind {spec}: name the output before '=' (OUTPUT=KIND)")
        if key in kinds:
            raise ConversionError(f"--output-kind {spec}: '{key}' already has kind '{kinds[key]}'")
        kinds[key] = _kind(kind.strip(), spec)
    return kinds


def guess_kind(sample_shape: Sequence[int]) -> OutputKind:
    """classification when each sample is one vector of >= 2 scores ([N, C] logits or probabilities, also
    [N, C, 1, 1]); anything else is a tensor. An [N, C] embedding also reads as classification: name it
    `--output-kind NAME=tensor`."""
    sizes = [d for d in sample_shape if d != 1]
    return "classification" if len(sizes) == 1 and sizes[0] >= 2 else "tensor"


def check_output_names(requested: Mapping[str, OutputKind], outputs: Sequence[str]) -> None:
    """Every output named with --output-kind exists in the model (checked before any long step)."""
    unknown = [name for name in requested if name != EVERY_OUTPUT and name not in outputs]
    if unknown:
        raise ConversionError(
            f"--output-kind {unknown[0]}={requested[unknown[0]]}: the model has no output '{unknown[0]}' "
            f"(its outputs: {', '.join(outputs)})"
        )


def resolve_kinds(
    requested: Mapping[str, OutputKind], sample_shapes: Mapping[str, Sequence[int]]
) -> dict[str, tuple[OutputKind, KindSource]]:
    """Each output's kind, in the model's output order: named by the user, else guessed from its shape."""
    check_output_names(requested, list(sample_shapes))
    resolved: dict[str, tuple[OutputKind, KindSource]] = {}
    for name, shape in sample_shapes.items():
        if name in requested:
            resolved[name] = (requested[name], "request")
        elif EVERY_OUTPUT in requested:
            resolved[name] = (requested[EVERY_OUTPUT], "request")
        else:
            resolved[name] = (guess_kind(shape), "shape")
    return resolved
