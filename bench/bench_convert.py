"""Convert the reference digits CNN for every built-in profile and print, side by side from one run:
top-1 on the held-out set (fp32 vs artifact), file size and host latency (fp32 vs artifact), wall time.

    .venv/bin/python bench/bench_convert.py [--version 2]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from edgefleet.contract.profiles import list_profiles
from edgefleet.contract.signing import create_key_pair
from edgefleet.converter.context import ConversionRequest
from edgefleet.converter.pipeline import convert
from edgefleet.reference_models import reference_model_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--version", default="2", choices=["1", "2"])
    args = parser.parse_args()
    models = reference_model_dir()
    print(
        "| profile | artifact | top-1 fp32 | top-1 artifact | drop (points) | size fp32 KiB "
        "| size artifact KiB | latency fp32 ms | latency artifact ms | runtime | convert s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as work:
        private_key, _ = create_key_pair(Path(work) / "keys")
        for profile in list_profiles():
            start = time.perf_counter()
            result = convert(
                ConversionRequest(
                    model=models / f"digits_cnn_v{args.version}.onnx",
                    profile=profile.name,
                    calib=models / "calib.npz",
                    eval=models / "eval.npz",
                    out=Path(work) / "out",
                    name="digits",
                    version=args.version,
                    key=private_key,
                ),
            )
            seconds = time.perf_counter() - start
            m, acc = result.metrics, result.metrics.accuracy
            spec = profile.artifact
            assert acc is not None and acc.fp32 is not None
            print(
                f"| {profile.name} | {spec.format.value} {spec.precision.value} "
                f"({result.inputs[0].dtype} I/O) "
                f"| {acc.fp32:.2f} | {acc.artifact:.2f} | {acc.drop_points:.2f} "
                f"| {m.size_bytes_fp32 / 1024:.1f} | {m.size_bytes_artifact / 1024:.1f} "
                f"| {m.host_latency_ms_fp32:.3f} | {m.host_latency_ms_artifact:.3f} | {m.host_runtime} "
                f"| {seconds:.1f} |"
            )


if __name__ == "__main__":
    main()
