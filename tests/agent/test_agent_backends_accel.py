"""Accelerator paths up to the hardware call. No TensorRT, CUDA or Edge TPU exists here, so these check what
the agent hands the runtime (TensorRT provider options per precision, the Edge TPU library it loads) and
that every fallback is reported; the CPU paths they fall back to run for real."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from tiny_tflite import TinyInt8Model, build_tiny_int8_model

from edgefleet.agent.backends import BackendError
from edgefleet.agent.backends.litert import EDGETPU_LIBRARY, LiteRtBackend, import_litert
from edgefleet.agent.backends.ort import (
    CPU,
    CUDA,
    ENGINE_CACHE_DIR,
    TENSORRT,
    OnnxRuntimeBackend,
    plan_providers,
)
from edgefleet.contract.profiles import Engine, Precision, RuntimeSpec, load_profile

GPU_BUILD = [TENSORRT, CUDA, CPU]  # what onnxruntime-gpu with TensorRT reports on a Jetson


def _trt_options(fp16: str, int8: str, cache: Path, sparse: str = "False") -> dict[str, str]:
    return {
        "trt_fp16_enable": fp16,
        "trt_int8_enable": int8,
        "trt_sparsity_enable": sparse,
        "trt_engine_cache_enable": "True",
        "trt_engine_cache_path": str(cache),
        "trt_timing_cache_enable": "True",
        "trt_timing_cache_path": str(cache),
    }


@pytest.mark.parametrize(
    ("profile_name", "fp16", "int8"),
    [("jetson-nano", "True", "False"), ("jetson-orin-nano", "True", "True")],
)
def test_tensorrt_provider_options_follow_the_artifact_precision(
    profile_name: str, fp16: str, int8: str, tmp_path: Path
) -> None:
    profile = load_profile(profile_name)
    plan = plan_providers(profile.runtime, profile.artifact.precision, GPU_BUILD, tmp_path / "cache")
    assert plan.providers == [(TENSORRT, _trt_options(fp16, int8, tmp_path / "cache")), (CUDA, {}), (CPU, {})]
    assert plan.fallbacks == []


def test_a_bundle_marked_2_4_asks_tensorrt_for_sparse_kernels(tmp_path: Path) -> None:
    """The code path up to the TensorRT call (no Jetson here): the provider option is set, nothing else."""
    profile = load_profile("jetson-orin-nano")
    cache = tmp_path / "cache"
    plan = plan_providers(profile.runtime, Precision.INT8, GPU_BUILD, cache, sparse_2_4=True)
    assert plan.providers[0] == (TENSORRT, _trt_options("True", "True", cache, sparse="True"))


def test_fp32_on_tensorrt_keeps_fp32_and_a_cpu_only_build_reports_both_gpu_providers(tmp_path: Path) -> None:
    runtime = load_profile("jetson-nano").runtime
    plan = plan_providers(runtime, Precision.FP32, GPU_BUILD, tmp_path)
    assert plan.providers[0] == (TENSORRT, _trt_options("False", "False", tmp_path))

    plan = plan_providers(runtime, Precision.FP16, [CPU], tmp_path, "1.31.1")
    assert plan.providers == [(CPU, {})]
    assert plan.fallbacks == [
        f"execution provider {name} requested but not available in this onnxruntime 1.31.1 build "
        "(available: CPUExecutionProvider)"
        for name in (TENSORRT, CUDA)
    ]


def test_orin_profile_on_this_cpu_runs_and_says_what_it_lost(reference_dir: Path, tmp_path: Path) -> None:
    """The real backend with a Jetson profile: the CPU runs it; TensorRT/CUDA are fallbacks, not silence."""
    assert TENSORRT not in ort.get_available_providers()  # else this test would need a GPU
    model = tmp_path / "bundle" / "model.onnx"
    model.parent.mkdir()
    shutil.copy(reference_dir / "digits_cnn_v1.onnx", model)
    profile = load_profile("jetson-orin-nano")
    backend = OnnxRuntimeBackend(model, profile.runtime, Precision.INT8)
    info = backend.info
    assert info.requested == [TENSORRT, CUDA, CPU] and info.providers == [CPU]
    assert [f.split(" requested")[0] for f in info.fallbacks[:2]] == [
        f"execution provider {TENSORRT}",
        f"execution provider {CUDA}",
    ]
    assert "QDQ fusion off" in info.fallbacks[2] and len(info.fallbacks) == 3
    assert backend.provider_options == {CPU: {}}
    assert not (model.parent / ENGINE_CACHE_DIR).exists()  # made only when TensorRT will run
    images = np.load(reference_dir / "eval.npz")["image"][:4]
    assert backend.run({"image": images})["logits"].shape == (4, 10)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> TinyInt8Model:
    return build_tiny_int8_model(tmp_path_factory.mktemp("tflite") / "tiny.tflite")


_EDGETPU_PROBE = """
import json, sys
from pathlib import Path
from edgefleet.agent.backends.litert import LiteRtBackend
from edgefleet.contract.profiles import Engine, RuntimeSpec
import numpy as np
backend = LiteRtBackend(Path(sys.argv[1]), RuntimeSpec(engine=Engine.LITERT, delegates=("edgetpu",)))
out = backend.run({"x": np.zeros((2, 64), np.int8)})["y"]
print(json.dumps({"info": backend.info.model_dump(), "shape": list(out.shape)}))
"""

_FAKE_PLUGIN_C = r"""
#include <stddef.h>
/* The TFLite external-delegate entry points libedgetpu exports, failing the way libedgetpu does when no
   Edge TPU is attached: no delegate, and a message through the error callback. */
void *tflite_plugin_create_delegate(char **keys, char **values, size_t n, void (*report)(const char *)) {
    report("fake libedgetpu: no Edge TPU device found");
    return NULL;
}
void tflite_plugin_destroy_delegate(void *delegate) {}
"""


def _run_with_library_dir(tiny: TinyInt8Model, library_dir: Path) -> dict[str, object]:
    # the dynamic loader reads LD_LIBRARY_PATH at process start, hence a child process
    result = subprocess.run(
        [sys.executable, "-c", _EDGETPU_PROBE, str(tiny.path)],
        env={"LD_LIBRARY_PATH": str(library_dir), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_edgetpu_delegate_is_loaded_by_its_soname_and_its_failure_is_reported(
    tiny: TinyInt8Model, tmp_path: Path
) -> None:
    """A libedgetpu.so.1 on the loader path that implements the plugin API but finds no Edge TPU: the
    agent reaches the plugin through load_delegate, reports why it fell back, and runs on the CPU."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.skip("no C compiler to build the stand-in libedgetpu.so.1")
    source = tmp_path / "fake_edgetpu.c"
    source.write_text(_FAKE_PLUGIN_C)
    subprocess.run(
        [compiler, "-shared", "-fPIC", "-o", str(tmp_path / EDGETPU_LIBRARY), str(source)], check=True
    )
    result = _run_with_library_dir(tiny, tmp_path)
    info = result["info"]
    assert isinstance(info, dict) and result["shape"] == [2, 10]
    assert info["delegate"] == "xnnpack" and info["requested"] == ["edgetpu"]
    (fallback,) = info["fallbacks"]
    assert fallback == (
        f"edgetpu delegate requested but it did not load (Failed to load delegate from {EDGETPU_LIBRARY} "
        "fake libedgetpu: no Edge TPU device found); is the Edge TPU connected?; running on CPU (XNNPACK)"
    )


def test_a_foreign_library_named_libedgetpu_is_refused_before_load_delegate(
    tiny: TinyInt8Model, tmp_path: Path
) -> None:
    import _ctypes  # any real shared object that is not a TFLite delegate plugin

    (tmp_path / EDGETPU_LIBRARY).symlink_to(Path(_ctypes.__file__))
    info = _run_with_library_dir(tiny, tmp_path)["info"]
    assert isinstance(info, dict) and info["delegate"] == "xnnpack"
    assert info["fallbacks"] == [
        f"edgetpu delegate requested but the {EDGETPU_LIBRARY} found is not a TFLite delegate plugin; "
        "running on CPU (XNNPACK)"
    ]


def test_tflite_runtime_is_only_a_reported_fallback(
    tiny: TinyInt8Model, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without ai_edge_litert the backend imports tflite_runtime and says so. tflite_runtime is not
    installable here (no wheel for numpy 2), so a module of that name exposes LiteRT's real classes."""
    from ai_edge_litert import interpreter as litert

    stand_in = types.ModuleType("tflite_runtime.interpreter")
    stand_in.Interpreter = litert.Interpreter  # type: ignore[attr-defined]
    stand_in.load_delegate = litert.load_delegate  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)  # import fails as if not installed
    monkeypatch.setitem(sys.modules, "tflite_runtime", types.ModuleType("tflite_runtime"))
    monkeypatch.setitem(sys.modules, "tflite_runtime.interpreter", stand_in)
    api = import_litert()
    assert (api.engine, api.version, api.without_default_delegates) == ("tflite_runtime", "unknown", None)
    backend = LiteRtBackend(
        tiny.path, RuntimeSpec(engine=Engine.LITERT, threads=2, delegates=("xnnpack",)), api
    )
    assert backend.info.engine == "tflite_runtime" and backend.info.fallbacks == list(api.notes)
    assert "ai-edge-litert is not installed" in backend.info.fallbacks[0]
    q_in = np.random.default_rng(2).integers(-128, 128, size=(3, 64), dtype=np.int8)
    out = backend.run({"x": q_in})["y"]
    assert np.abs(out.astype(int) - tiny.reference(q_in).astype(int)).max() <= 1

    monkeypatch.setitem(sys.modules, "tflite_runtime.interpreter", None)
    with pytest.raises(BackendError, match=r"no TFLite runtime is installed; install it with `pip install"):
        import_litert()


def test_no_delegate_in_the_profile_means_plain_kernels(tiny: TinyInt8Model) -> None:
    backend = LiteRtBackend(tiny.path, RuntimeSpec(engine=Engine.LITERT, threads=2))
    assert (backend.info.delegate, backend.info.fallbacks, backend.info.requested) == (None, [], [])
    q_in = np.random.default_rng(4).integers(-128, 128, size=(2, 64), dtype=np.int8)
    assert np.abs(backend.run({"x": q_in})["y"].astype(int) - tiny.reference(q_in).astype(int)).max() <= 1
