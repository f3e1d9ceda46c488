"""The swap's parts in-process, on real models: the health check (samples, zero inputs, latency budget),
the probation's judgement, the standby model and swap-back, and run statistics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from agent_helpers import TEST_PROFILE, Keys, file_sha256, make_custom_bundle, sqrt_model

from edgefleet.agent.health import HealthCheckFailed, check_health, load_samples
from edgefleet.agent.model_slot import LoadedModel, ModelSlot
from edgefleet.agent.store import BundleStore
from edgefleet.contract.profiles import load_profile
from edgefleet.contract.signing import load_public_key


@pytest.fixture
def store(tmp_path: Path, keys: Keys) -> BundleStore:
    return BundleStore(tmp_path / "state", load_public_key(keys.public), TEST_PROFILE)


def _loaded(store: BundleStore, bundle: Path) -> tuple[LoadedModel, Path]:
    installed = store.install(bundle, file_sha256(bundle))
    model = LoadedModel.load(
        installed.bundle_id, installed.manifest, installed.path, load_profile(TEST_PROFILE)
    )
    return model, installed.path


def test_health_check_runs_the_bundles_samples_or_zero_inputs(
    store: BundleStore, keys: Keys, bundles: dict[str, Path], tmp_path: Path
) -> None:
    samples = np.abs(np.random.default_rng(1).normal(size=(20, 1, 8, 8))).astype(np.float32)
    bundle = make_custom_bundle(
        tmp_path / "s.efb", sqrt_model(tmp_path / "s.onnx"), keys.private, "1", health_samples=samples
    )
    model, path = _loaded(store, bundle)
    report = check_health(model, path, latency_budget_ms=50)
    assert (report.source, report.samples) == ("health_samples.npz", 16)  # capped at MAX_SAMPLES
    assert 0 < report.median_ms <= report.max_ms
    assert model.stats().runs == 0  # health-check runs are not request statistics

    plain, plain_path = _loaded(store, bundles["v1"])
    report = check_health(plain, plain_path, latency_budget_ms=50)
    assert (report.source, report.samples) == ("zero inputs", 3)
    feeds = load_samples(plain.manifest, plain_path)
    assert feeds[0]["image"].shape == (1, 1, 8, 8) and not feeds[0]["image"].any()


def test_health_check_failures_say_what_is_wrong(store: BundleStore, keys: Keys, tmp_path: Path) -> None:
    good = np.ones((3, 1, 8, 8), np.float32)
    cases = {
        "NaN": (
            sqrt_model(tmp_path / "a.onnx"),
            -good,
            50.0,
            "sample 0: output 'logits' has 10 NaN/inf values",
        ),
        "shape": (sqrt_model(tmp_path / "b.onnx", outputs=3), good, 50.0, "has shape (1,3), the manifest"),
        "latency": (sqrt_model(tmp_path / "c.onnx"), good, 1e-6, "exceeds the profile's latency budget"),
        "samples": (sqrt_model(tmp_path / "d.onnx"), np.ones((2, 64), np.float32), 50.0, "sample 0: input"),
    }
    for name, (onnx_path, samples, budget, expected) in cases.items():
        bundle = make_custom_bundle(
            tmp_path / f"{name}.efb", onnx_path, keys.private, name, health_samples=samples
        )
        model, path = _loaded(store, bundle)
        with pytest.raises(HealthCheckFailed) as caught:
            check_health(model, path, latency_budget_ms=budget)
        assert expected in str(caught.value), (name, str(caught.value))
        model.close()


def test_run_stats_count_failures_and_non_finite_outputs(
    store: BundleStore, keys: Keys, tmp_path: Path
) -> None:
    model, _ = _loaded(
        store, make_custom_bundle(tmp_path / "x.efb", sqrt_model(tmp_path / "x.onnx"), keys.private, "1")
    )
    model.run({"image": np.ones((1, 1, 8, 8), np.float32)})
    model.run({"image": -np.ones((1, 1, 8, 8), np.float32)})  # NaN
    with pytest.raises(Exception, match=r"(?i)rank|dimension|shape"):  # onnxruntime's own error type
        model.run({"image": np.ones((1, 3), np.float32)})
    model.run({"image": np.ones((1, 1, 8, 8), np.float32)}, record=False)
    stats = model.stats()
    assert (stats.runs, stats.failures, stats.bad_outputs, stats.errors) == (3, 1, 1, 2)
    assert stats.error_rate == pytest.approx(2 / 3) and stats.p95_ms is not None and stats.p95_ms > 0


def test_standby_model_and_swap_back(store: BundleStore, bundles: dict[str, Path]) -> None:
    v1, _ = _loaded(store, bundles["v1"])
    v2, _ = _loaded(store, bundles["v2"])
    slot = ModelSlot()
    slot.swap(v1)
    with slot.use() as pinned:
        assert slot.swap(v2, keep_previous=True) is v1
        assert slot.standby is v1 and not v1.retired  # kept loaded for a rollback
        assert pinned is v1 and pinned.run({"image": np.zeros((1, 1, 8, 8), np.float32)})["logits"].shape == (
            1,
            10,
        )
    assert not v1.closed
    assert slot.swap_back() is v1
    assert (slot.current, slot.standby, slot.swaps, slot.rollbacks) == (v1, None, 2, 1)
    assert v2.closed  # the failed model is unloaded once idle
    v3, _ = _loaded(store, bundles["v2"])
    slot.swap(v3, keep_previous=True)
    slot.release_standby()
    assert v1.closed and slot.standby is None and slot.swap_back() is None
    slot.clear()
    assert v3.closed


def test_a_batch_the_runtime_cannot_take_runs_one_sample_at_a_time_and_is_no_model_failure(
    store: BundleStore, keys: Keys, tmp_path: Path
) -> None:
    """The manifest declares image [?,1,8,8] but the model file is fixed to batch 1 (as XNNPACK behaves on
    some CPUs for any batch but 1): a client's batch of 3 must not count as three model failures (which
    would roll a good model back in its probation); it is run sample by sample."""
    import onnx

    fixed = onnx.load(str(sqrt_model(tmp_path / "fixed.onnx")))
    for value in (*fixed.graph.input, *fixed.graph.output):
        value.type.tensor_type.shape.dim[0].dim_value = 1
    onnx.save(fixed, str(tmp_path / "fixed.onnx"))
    bundle = make_custom_bundle(tmp_path / "fixed.efb", tmp_path / "fixed.onnx", keys.private, "3")
    model, _ = _loaded(store, bundle)
    model.warm_up()
    assert model.one_at_a_time and model.stats().runs == 0  # the probe is off the books
    images = np.random.default_rng(1).uniform(0, 1, (3, 1, 8, 8)).astype(np.float32)
    batch = model.run({"image": images})["logits"]
    singles = [model.run({"image": images[i : i + 1]})["logits"] for i in range(3)]
    assert batch.shape == (3, 10) and np.array_equal(batch, np.concatenate(singles))
    assert model.stats().failures == 0 and model.stats().runs == 6

    dynamic, _ = _loaded(
        store, make_custom_bundle(tmp_path / "dyn.efb", sqrt_model(tmp_path / "d.onnx"), keys.private, "4")
    )
    dynamic.warm_up()
    assert not dynamic.one_at_a_time


def test_an_artifact_fixed_to_batch_1_takes_any_float_batch_sample_by_sample(
    store: BundleStore, keys: Keys, tmp_path: Path
) -> None:
    """What the converters make for LiteRT: the artifact fixed to batch 1, the float form clients send
    with any batch. The soak's 600 batch-2 requests in a second failed in the runtime and rolled a good
    model back in its probation; they are served sample by sample, and no run fails."""
    import onnx
    from support_bundles import fp32_manifest

    from edgefleet.agent.inference import InferenceService
    from edgefleet.contract.bundle import write_bundle
    from edgefleet.contract.signing import load_private_key

    fixed = onnx.load(str(sqrt_model(tmp_path / "fixed.onnx")))
    for value in (*fixed.graph.input, *fixed.graph.output):
        value.type.tensor_type.shape.dim[0].dim_value = 1
    onnx.save(fixed, str(tmp_path / "fixed.onnx"))
    manifest = fp32_manifest(TEST_PROFILE, "5")
    manifest.inputs[0] = manifest.inputs[0].model_copy(update={"shape": [1, 1, 8, 8]})
    manifest.outputs[0] = manifest.outputs[0].model_copy(update={"shape": [1, 10]})
    bundle = tmp_path / "fixed-batch.efb"
    write_bundle(bundle, manifest, {"model.onnx": tmp_path / "fixed.onnx"}, load_private_key(keys.private))
    model, _ = _loaded(store, bundle)
    assert model.one_at_a_time
    images = np.random.default_rng(2).uniform(0, 1, (2, 1, 8, 8)).astype(np.float32)
    logits = InferenceService.compute_tensors(model, {"image": images})["logits"]
    single = InferenceService.compute_tensors(model, {"image": images[1:]})["logits"]
    assert logits.shape == (2, 10) and np.array_equal(logits[1:], single)
    assert model.stats().failures == 0 and model.stats().runs == 3


def test_the_health_check_refuses_numbers_that_differ_from_the_converters_reference(
    store: BundleStore, keys: Keys, tmp_path: Path
) -> None:
    """Dtype, shape, finiteness and latency cannot see a miscompiled kernel; the converter's reference
    outputs can: a model whose outputs on the health samples are not the reference's is refused, one that
    matches passes and says how close it came."""
    import onnxruntime as ort

    from edgefleet.agent.health import describe_reference

    model_file = sqrt_model(tmp_path / "ref.onnx")
    samples = np.random.default_rng(3).uniform(0, 1, (4, 1, 8, 8)).astype(np.float32)
    session = ort.InferenceSession(str(model_file), providers=["CPUExecutionProvider"])
    logits = session.run(None, {"image": samples})[0]

    def with_reference(
        version: str, reference: np.ndarray, min_db: float, min_top1: float | None = None
    ) -> tuple[LoadedModel, Path]:
        """The model with the health samples and `reference` as the converter's outputs, loaded."""
        bundle = make_custom_bundle(
            tmp_path / f"v{version}.efb",
            model_file,
            keys.private,
            version,
            health_samples=samples,
            health_reference=(reference, min_db),
            min_top1_agreement=min_top1,
        )
        return _loaded(store, bundle)

    model, path = with_reference("5", logits, 20.0)
    report = check_health(model, path, 50.0)
    assert report.reference_sqnr_db is not None and report.reference_sqnr_db > 60
    assert "health samples" in describe_reference(report)

    wrong = logits * 0.6  # a kernel with a wrong scale: plausible, finite, ordered alike, wrong numbers
    model, path = with_reference("6", wrong, 20.0)
    with pytest.raises(HealthCheckFailed, match="not what the converter computed for this bundle: SQNR"):
        check_health(model, path, 50.0)

    # Top-1 agreement: a reference whose best class differs on half the samples passes a lax SQNR floor
    # (-50 dB) but not a required agreement of 100% (what the converter derives from its measurement).
    swapped = logits.copy()
    best = swapped.argmax(axis=1)
    for row in range(0, len(swapped), 2):
        other = (best[row] + 1) % swapped.shape[1]
        swapped[row, [best[row], other]] = swapped[row, [other, best[row]]]
    model, path = with_reference("80", swapped, -50.0)
    assert check_health(model, path, 50.0).top1_agreed == (2, 4)
    model, path = with_reference("81", swapped, -50.0, min_top1=1.0)
    with pytest.raises(HealthCheckFailed, match="top-1 class was the converter's on 2 of 4"):
        check_health(model, path, 50.0)

    # A reference of another shape is the bundle's fault, said so; it used to broadcast, or fail as
    # "ValueError: operands could not be broadcast" (found by fuzzing).
    for version, misshapen in (("70", logits[:, :5]), ("71", logits[:, :, None])):
        model, path = with_reference(version, misshapen, 20.0)
        with pytest.raises(HealthCheckFailed, match=r"no float32 \(\?,10\) reference for 4 samples"):
            check_health(model, path, 50.0)
