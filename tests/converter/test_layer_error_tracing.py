"""A layer's loss is its output SQNR against the worst measured tensor feeding it, traced through ops that
are not measured (a Split's second output, a Q/DQ pair): a convolution after a Split is held to the Split's
input, not to a perfect input (which made it look like it lost 80 dB and sent mixed precision after it)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgefleet.converter.steps.layer_error import GRAPH_INPUT, _finish, _Layer, _Noise


def _noise(sqnr_db: float) -> _Noise:
    noise = _Noise()
    reference = np.ones(100, np.float32)
    noise.add(reference, reference + np.float32(10 ** (-sqnr_db / 20)))
    return noise


def _layer(name: str, inputs: list[str], sqnr_db: float) -> _Layer:
    return _Layer(name, [name], "Conv", f"{name}_out", inputs, _noise(sqnr_db))


def test_a_layer_after_an_unmeasured_split_output_is_held_to_the_split_input() -> None:
    stem = _layer("stem", ["image"], 30.0)
    after_split = _layer("branch", ["split_out_1"], 28.0)
    through = {"split_out_1": ["stem_out", "split_sizes"], "split_sizes": []}
    errors = {
        e.layer: e
        for e in _finish([stem, after_split], {"stem_out": "stem"}, {"image": _noise(45.0)}, through)
    }
    assert round(errors["stem"].loss_db) == 15  # 45 dB in, 30 out
    assert round(errors["branch"].loss_db) == 2  # held to the stem's 30 dB, not to 100
    assert errors["branch"].inputs == ["stem"] and errors["stem"].inputs == [GRAPH_INPUT]


def test_a_cycle_in_the_passthrough_map_ends() -> None:
    looped = _layer("looped", ["a"], 20.0)
    (error,) = _finish([looped], {}, {}, {"a": ["b"], "b": ["a"]})
    assert error.inputs == [] and error.loss_db > 0  # nothing measured upstream: held to a perfect input


def test_large_inputs_are_compared_on_fewer_samples() -> None:
    from edgefleet.converter.steps.calibration import TensorSet
    from edgefleet.converter.steps.layer_error import LAYER_ERROR_SAMPLES, layer_error_samples

    def count(shape: tuple[int, ...]) -> int:
        return layer_error_samples(
            TensorSet(Path("x.npz"), {"x": np.broadcast_to(np.float32(0), (64, *shape))}, None)
        )

    assert count((3, 32, 32)) == LAYER_ERROR_SAMPLES
    assert count((3, 384, 384)) == 9  # 4M values over 442k-value pages
    assert count((3, 2048, 2048)) == 8  # never fewer than 8


def test_sqnr_matches_the_float64_definition() -> None:
    rng = np.random.default_rng(0)
    reference = rng.normal(0, 3, (4, 64, 64)).astype(np.float32)
    observed = reference + rng.normal(0, 0.01, reference.shape).astype(np.float32)
    exact = 10 * np.log10(
        np.sum(reference.astype(np.float64) ** 2) / np.sum((reference - observed).astype(np.float64) ** 2)
    )
    noise = _Noise()
    noise.add(reference, observed)
    assert abs(noise.sqnr_db - exact) < 1e-3
