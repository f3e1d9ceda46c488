"""Mixed-precision search over a sensitivity ranking measured once: which top-ranked layers to keep in
float so the budget holds, in few re-quantizations (each probe re-quantizes and scores once).

rank_layers orders the layers of one per-layer error measurement of the full-INT8 artifact (onnxruntime's
qdq_loss_debug idea: fp32 vs quantized activations, the SQNR each layer loses) and puts after each layer
the layers feeding it back to the previous weighted layer: loss that enters through their rounding (one
outlier channel in a per-tensor scale) goes away only with them. search_float_layers gallops (k = 1, 2, 4,
...) to the first top-k that meets the budget (re-ranking after a failed probe when the caller can measure
again), bisects between the last failing k and it, then tries chosen layers back in int8 in chunks. Both
are pure functions, testable without models.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from edgefleet.converter.steps.layer_error import LayerError

WEIGHTED_OPS = {
    "Conv", "ConvTranspose", "Gemm", "MatMul",  # ONNX
    "CONV_2D", "DEPTHWISE_CONV_2D", "TRANSPOSE_CONV", "FULLY_CONNECTED", "BATCH_MATMUL",  # TFLite
}  # fmt: skip
MAX_FEEDER_DEPTH = 4  # layers walked back from a ranked layer looking for the weighted layer feeding it
TRIM_PROBES = 2  # after the bisection, probes trying chosen layers back in int8
UNTRIMMED_LAYERS = 4  # results this small are not trimmed


@dataclass
class SearchResult:
    float_layers: list[str]  # the result's layers in float (empty when the budget was not met)
    met: bool
    probes: int = 0  # attempts made
    tried: list[str] = field(default_factory=list)  # every layer some attempt kept in float, ranking order


def rank_layers(errors: Sequence[LayerError], min_loss_db: float, max_layers: int) -> list[str]:
    """Layer names by SQNR lost (largest first, at least `min_loss_db`), each followed by its feeders back
    to the nearest weighted layer; layers already kept in float (by rule) are walked through, not listed."""
    by_name = {e.layer: e for e in errors}
    ranked: list[str] = []
    for error in sorted(errors, key=lambda e: e.loss_db, reverse=True):
        if error.loss_db < min_loss_db or len(ranked) >= max_layers:
            break
        for name in [error.layer, *_feeders(error, by_name)]:
            if name not in ranked and not by_name[name].kept_float:
                ranked.append(name)
    return ranked[:max_layers]


def _feeders(error: LayerError, by_name: dict[str, LayerError]) -> list[str]:
    """The layers between `error` and the weighted layers feeding it (those included), nearest first."""
    found: list[str] = []
    frontier = [(name, 1) for name in error.inputs]
    while frontier:
        name, depth = frontier.pop(0)
        if name not in by_name or name in found or depth > MAX_FEEDER_DEPTH:
            continue
        found.append(name)
        if by_name[name].op not in WEIGHTED_OPS:
            frontier += [(n, depth + 1) for n in by_name[name].inputs]
    return found


def search_float_layers(
    ranking: Sequence[str],
    attempt: Callable[[list[str]], bool],
    trim_probes: int = TRIM_PROBES,
    known_failing: int = 0,
    rerank: Callable[[list[str]], Sequence[str]] | None = None,
) -> SearchResult:
    """The fewest top-ranked layers of `ranking` whose attempt passes (assuming more float layers never
    hurt), then up to `trim_probes` of them tried back in int8. `attempt(layers)` builds and scores the
    artifact with `layers` in float; the last attempt made is the result's when the budget is met (the
    caller's artifact is the one it describes) and the last gallop probe's when it is not. The top
    `known_failing` layers (0: the full-INT8 artifact) are known not to meet the budget.

    `rerank(layers)`, called after a gallop probe with `layers` in float failed (that artifact is the
    caller's then), returns a new ranking starting with `layers`: a large error early in the model hides
    the loss of the layers after it until the early layers are float, so a re-measurement there (cheaper
    than a probe) ranks what it reveals."""
    result = SearchResult(float_layers=[], met=False)

    def probe(layers: list[str]) -> bool:
        result.probes += 1
        result.tried += [name for name in layers if name not in result.tried]
        return attempt(layers)

    # Gallop: 1, 2, 4, ... top layers; after `known_failing`, 1, 2, 4, ... more (the layers a second
    # measurement revealed are ranked, the first of them the likeliest to be needed).
    failing, passing, step = known_failing, None, 1
    while passing is None and failing < len(ranking):
        k = min(failing + step if known_failing else max(1, 2 * failing), len(ranking))
        if probe(list(ranking[:k])):
            passing = k
        else:
            failing, step = k, 2 * step
            if rerank is not None:
                ranking = list(rerank(list(ranking[:k])))
    if passing is None:
        return result
    last = passing
    while passing - failing > 1:
        middle = (failing + passing) // 2
        last = middle
        if probe(list(ranking[:middle])):
            passing = middle
        else:
            failing = middle
    chosen = list(ranking[:passing])
    last_ok = last == passing
    # The last layer made the difference; earlier ones may not be needed. They are tried back in int8 in
    # chunks, least important first, halving a chunk that fails (a few probes for many layers). A few
    # layers are a layer and its feeders (the usual fix for an outlier channel): not worth the probes.
    candidates = list(reversed(chosen[:-1])) if len(chosen) > UNTRIMMED_LAYERS else []
    size, budget = max(1, len(candidates) // 2), trim_probes
    while candidates and budget:
        size = min(size, len(candidates))
        chunk, budget = candidates[:size], budget - 1
        trial = [name for name in chosen if name not in chunk]
        last_ok = probe(trial)
        if last_ok:
            chosen, candidates = trial, candidates[size:]
        elif size > 1:
            size //= 2
        else:
            candidates = candidates[1:]  # needed
    if not last_ok:
        probe(chosen)  # leave the caller's artifact built with the result
    result.float_layers, result.met = chosen, True
    return result
