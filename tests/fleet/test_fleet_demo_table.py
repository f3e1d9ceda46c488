"""The demo's result table fits the terminal (issue 11: it needed ~160 columns and wrapped into `profil e`):
narrower than 170 columns, what ran where moves under the table."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from edgefleet.fleet.demo import DemoResult, DeviceRow, render


def _result() -> DemoResult:
    def row(device: str, profile: str, artifact: str, backend: str, fallbacks: list[str]) -> DeviceRow:
        return DeviceRow(
            device_id=device, profile=profile, artifact=artifact, backend=backend, fallbacks=fallbacks,
            active_version="2", accuracy_v1=91.4, accuracy_v2=97.8, p50_ms=0.32, p95_ms=4.22, rss_mb=87.0,
            swaps=1, requests=5123, failed_requests=0, failures=[],
        )  # fmt: skip

    return DemoResult(
        ok=True, duration_s=17.9, broker="mqtt://127.0.0.1:1", held_out_samples=360, conversions=[],
        devices=[
            row("demo-rpi4", "rpi4", "tflite int8 (int8 I/O)", "litert 2.3.0, xnnpack, 4 threads", []),
            row("demo-jetson-nano", "jetson-nano", "onnx fp16 (float32 I/O)",
                "onnxruntime 1.31.1, providers CPUExecutionProvider, 4 threads", ["no TensorRT"]),
        ],
        problems=[],
    )  # fmt: skip


@pytest.mark.parametrize("width", [80, 120, 170])
def test_the_demo_table_fits_without_breaking_a_word(width: int) -> None:
    console = Console(record=True, width=width, color_system=None, file=io.StringIO())
    console.print(render(_result(), width))
    text = console.export_text()
    assert max(len(line) for line in text.splitlines()) <= width and "…" not in text
    assert "demo-jetson-nano" in text and "97.8%" in text and "0.32 / 4.22" in text
    assert "profil e" not in text.replace("\n", " ")
    assert "onnxruntime 1.31.1" in text and "(fallback*)" in text


def test_narrow_lines_under_the_table_continue_indented() -> None:
    """At 80 columns the title is one line and what ran where wraps under its device, indented."""
    from edgefleet.fleet.demo import render_fallbacks

    console = Console(record=True, width=80, color_system=None, file=io.StringIO())
    console.print(render(_result(), 80))
    lines = console.export_text().splitlines()
    assert lines[0].strip().startswith("edgefleet demo: 360 digits, 17.9 s")
    jetson = lines.index(next(line for line in lines if line.startswith("demo-jetson-nano: jetson-nano")))
    assert lines[jetson + 1].startswith("  ") and "(fallback*)" in lines[jetson + 1]
    (footnote,) = render_fallbacks(_result(), 30)
    assert footnote.splitlines()[0] == "* demo-jetson-nano: no" and footnote.splitlines()[1] == "  TensorRT"
