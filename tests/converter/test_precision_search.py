"""The mixed-precision search over a ranking measured once: ranking by SQNR lost with feeders, galloping +
bisection on the number of top-ranked layers kept in float, trimming, probe counts (no models needed)."""

from __future__ import annotations

from edgefleet.converter.steps.layer_error import GRAPH_INPUT, LayerError
from edgefleet.converter.steps.precision_search import rank_layers, search_float_layers


def _layer(name: str, loss: float, inputs: list[str], op: str = "Conv", kept: bool = False) -> LayerError:
    return LayerError(
        layer=name, nodes=[name], op=op, sqnr_db=30.0, loss_db=loss, inputs=inputs, kept_float=kept
    )


def test_ranking_puts_each_layer_before_its_feeders_back_to_the_previous_weighted_layer() -> None:
    errors = [
        _layer("conv1", 0.1, [GRAPH_INPUT]),
        _layer("conv2", 0.6, ["conv1"]),
        _layer("pool", -1.0, ["conv2"], op="MaxPool"),
        _layer("conv3", 40.0, ["pool"]),
        _layer("fc", 2.0, ["conv3"], op="Gemm"),
    ]
    # conv3's loss enters through pool's and conv2's rounding (an outlier channel in their scale).
    assert rank_layers(errors, min_loss_db=0.5, max_layers=10) == ["conv3", "pool", "conv2", "fc", "conv1"]
    assert rank_layers(errors, min_loss_db=0.5, max_layers=2) == ["conv3", "pool"]
    assert rank_layers([_layer("a", 0.2, [GRAPH_INPUT])], min_loss_db=0.5, max_layers=10) == []


def test_ranking_skips_layers_already_float_by_rule_but_walks_through_them() -> None:
    errors = [
        _layer("conv", 0.1, [GRAPH_INPUT]),
        _layer("sigmoid", 0.0, ["conv"], op="Sigmoid", kept=True),
        _layer("concat", 9.0, ["sigmoid"], op="Concat", kept=True),
        _layer("fc", 3.0, ["conv"], op="Gemm"),
    ]
    assert rank_layers(errors, min_loss_db=0.5, max_layers=10) == ["conv", "fc"]


def _oracle(needed: set[str], calls: list[list[str]]):  # type: ignore[no-untyped-def]
    def attempt(layers: list[str]) -> bool:
        calls.append(list(layers))
        return needed <= set(layers)

    return attempt


def test_bisection_finds_the_smallest_passing_prefix_in_logarithmic_probes() -> None:
    ranking = [f"l{i}" for i in range(40)]
    calls: list[list[str]] = []
    result = search_float_layers(ranking, _oracle({"l0", "l22"}, calls), trim_probes=0)
    assert result.met and result.float_layers == ranking[:23]
    # gallop 1, 2, 4, 8, 16, 32 then bisect 16..32: 6 + 4 probes, against 23 for one layer at a time
    assert result.probes == len(calls) <= 11
    assert calls[-1] == result.float_layers  # the caller's artifact is the result's


def test_trimming_drops_layers_that_were_not_needed_and_leaves_the_result_built_last() -> None:
    ranking = ["a", "b", "c", "d", "e", "f"]
    calls: list[list[str]] = []
    result = search_float_layers(ranking, _oracle({"a", "f"}, calls))
    assert result.met and result.float_layers == ["a", "f"]
    assert calls[-2:] == [["a", "b", "c", "f"], ["a", "f"]]  # (e, d) then (c, b) back in int8
    assert calls[-1] == result.float_layers
    assert result.tried == ranking
    few: list[list[str]] = []
    assert search_float_layers(ranking, _oracle({"a", "d"}, few)).float_layers == ["a", "b", "c", "d"]
    # 1, 2, 4, bisection 3, and 4 again to leave that artifact built: a layer and its feeders are not trimmed
    assert [len(c) for c in few] == [1, 2, 4, 3, 4]


def test_an_unreachable_budget_stops_after_the_whole_ranking_failed() -> None:
    calls: list[list[str]] = []
    result = search_float_layers(["a", "b", "c"], _oracle({"zzz"}, calls))
    assert not result.met and result.float_layers == []
    assert calls == [["a"], ["a", "b"], ["a", "b", "c"]]
    assert search_float_layers([], _oracle(set(), [])).probes == 0


def test_a_single_layer_fix_costs_one_probe() -> None:
    calls: list[list[str]] = []
    result = search_float_layers(["a", "b", "c"], _oracle({"a"}, calls))
    assert result.float_layers == ["a"] and result.probes == 1


def test_a_second_round_gallops_on_from_the_ranking_known_to_fail() -> None:
    calls: list[list[str]] = []
    ranking = [f"l{i}" for i in range(12)]
    result = search_float_layers(ranking, _oracle({"l0", "l8"}, calls), trim_probes=0, known_failing=5)
    # not from one layer again: 5 + 1, 6 + 2, 8 + 4 (passes), then bisection between 8 and 12
    assert [len(c) for c in calls] == [6, 8, 12, 10, 9]
    assert result.met and result.float_layers == ranking[:9]


def test_many_chosen_layers_are_trimmed_in_chunks() -> None:
    ranking = [f"l{i}" for i in range(16)]
    calls: list[list[str]] = []
    result = search_float_layers(ranking, _oracle({"l0", "l9"}, calls))
    assert result.float_layers == ["l0", "l9"]
    # gallop 1, 2, 4, 8, 16 + bisect 8..16 (12, 10, 9) + two chunks (l8..l5, l4..l1) back in int8
    assert len(calls) == 10 and calls[-1] == ["l0", "l9"]


def test_a_failed_gallop_probe_reranks_what_a_new_measurement_reveals() -> None:
    calls: list[list[str]] = []
    reranked: list[list[str]] = []

    def rerank(kept: list[str]) -> list[str]:
        reranked.append(kept)
        # with the early outlier in float, the layer it hid ("hidden") shows its loss
        return [*kept, "hidden", "c"] if "a" in kept else [*kept, "b", "c"]

    result = search_float_layers(["a", "b", "c"], _oracle({"a", "hidden"}, calls), rerank=rerank)
    assert result.met and result.float_layers == ["a", "hidden"]
    assert reranked == [["a"]] and calls == [["a"], ["a", "hidden"]]
