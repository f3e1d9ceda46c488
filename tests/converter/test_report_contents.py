"""report.json (also in the signed manifest) and report.html of a finished conversion."""

from __future__ import annotations

import json
from collections.abc import Callable
from html.parser import HTMLParser
from pathlib import Path

import onnx
import pytest

from edgefleet.contract.bundle import extract_bundle
from edgefleet.contract.signing import load_public_key
from edgefleet.converter.context import ConversionRequest
from edgefleet.converter.pipeline import ConversionResult, convert
from edgefleet.converter.report import ConversionReport
from edgefleet.converter.report_html import render_html


class _Elements(HTMLParser):
    """Counts start tags and checks that every opened svg/table/ul is closed."""

    def __init__(self) -> None:
        super().__init__()
        self.starts: dict[str, int] = {}
        self.open: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.starts[tag] = self.starts.get(tag, 0) + 1
        if tag in ("svg", "table", "ul"):
            self.open.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag in ("svg", "table", "ul"):
            assert self.open and self.open.pop() == tag, f"</{tag}> closes nothing"


def test_report_json_is_next_to_the_bundle_and_equals_the_manifest_copy(
    converted: Callable[[str], ConversionResult], key_pair: tuple[Path, Path], tmp_path: Path
) -> None:
    result = converted("rpi4")
    json_path, html_path = result.report_files
    assert json_path == result.bundle_path.with_name(result.bundle_path.stem + ".report.json")
    assert html_path.suffix == ".html" and html_path.is_file()
    written = json.loads(json_path.read_text())
    manifest = extract_bundle(result.bundle_path, tmp_path / "unpacked", load_public_key(key_pair[1]))
    assert manifest.report == written  # the signed copy is the same document
    report = ConversionReport.model_validate(written)
    assert report.bundle == result.bundle_path.name and report.profile == "rpi4"


def test_report_covers_every_artifact_output_and_layer(
    converted: Callable[[str], ConversionResult], reference_dir: Path
) -> None:
    result = converted("rpi4")
    report = result.report
    assert report is not None
    kinds = [(a.kind, a.role) for a in report.artifacts]
    assert kinds[:2] == [("fp32", "source"), ("tflite-int8", "preferred")]
    assert [a.kind for a in report.artifacts[2:]] == [alt.kind for alt in result.alternatives]
    preferred = report.artifacts[1]
    assert preferred.size_bytes == result.metrics.size_bytes_artifact
    assert preferred.drop_points == result.metrics.accuracy.drop_points  # type: ignore[union-attr]
    (logits,) = report.outputs
    assert logits.output == "logits" and logits.metric == "top1" and 10 < logits.sqnr_db < 100
    assert logits.agreement > 90
    onnx_nodes = [n.name for n in onnx.load(str(reference_dir / "digits_cnn_v1.onnx")).graph.node]
    layer_names = [layer.layer for layer in report.layers]
    for conv in [n for n in onnx_nodes if n.endswith("/Conv")]:
        assert conv in layer_names  # each conv is a layer, fused Relu listed with it
    assert report.budget is not None and report.budget.checked and report.budget.met
    assert (logits.kind, logits.kind_source, logits.within_budget) == ("classification", "shape", True)
    assert report.budget.judged_by == "top-1 vs labels on 'logits'" and report.budget.metric == "top1"
    assert report.calibration.samples == 200 and report.evaluation_samples == 360
    assert "quantize tflite (full int8)" in report.step_seconds


def test_report_html_plots_size_latency_accuracy_and_layers(
    converted: Callable[[str], ConversionResult],
) -> None:
    result = converted("rpi4")
    html = result.report_files[1].read_text()
    parser = _Elements()
    parser.feed(html)
    assert parser.open == []
    assert parser.starts.get("svg") == 5  # size, latency, accuracy drop, layer SQNR, SQNR lost per layer
    assert parser.starts.get("script") is None  # static: opens anywhere, no network
    for heading in ("File size", "Host latency", "Accuracy drop vs fp32", "Per-layer quantization error"):
        assert heading in html
    assert "/features/features.0/Conv" in html and "tflite-int8 (preferred)" in html
    bars = html.count("<rect")
    assert bars >= len(result.report.layers) * 2 + 3  # type: ignore[union-attr]


def test_report_html_escapes_names(converted: Callable[[str], ConversionResult]) -> None:
    report = converted("rpi4").report
    assert report is not None
    hostile = report.model_copy(update={"name": "<script>alert(1)</script>", "notes": ["a < b & c"]})
    html = render_html(hostile)
    assert "<script>" not in html and "&lt;script&gt;" in html and "a &lt; b &amp; c" in html


@pytest.mark.slow
def test_report_dir_and_fp16_profile(make_request: Callable[..., ConversionRequest], tmp_path: Path) -> None:
    result = convert(make_request("jetson-nano", name="digits-report-dir", report_dir=tmp_path / "reports"))
    assert result.report_files == [tmp_path / "reports" / "report.json", tmp_path / "reports" / "report.html"]
    report = ConversionReport.model_validate_json(result.report_files[0].read_text())
    assert report.layers == []  # no int8 layers to compare in an fp16 artifact
    assert report.budget is not None and report.budget.met and report.budget.source == "profile"
    assert report.artifacts[1].kind == "onnx-fp16"


def test_report_html_turns_amber_for_target_caveats_and_shows_the_checks_first(
    converted: Callable[[str], ConversionResult],
) -> None:
    """Coral without edgetpu_compiler (as here): the banner says so at the top, not only in the notes, and
    the target checks come before the charts."""
    html = converted("coral-usb").report_files[1].read_text()
    assert 'class="verdict caveat"' in html and "with caveats for the target" in html
    start = html.index('class="verdict')
    banner = html[start : html.index("</div>", start)]
    assert "not compiled for Edge TPU" in banner
    assert html.index("<h2>Target checks</h2>") < html.index("<h2>Artifacts vs fp32</h2>")


def test_report_html_caveats_name_cpu_ops_float_layers_and_host_latency(
    converted: Callable[[str], ConversionResult],
) -> None:
    from edgefleet.contract.target_checks import UnsupportedOp

    report = converted("rpi4").report
    assert report is not None and report.target_checks is not None and report.budget is not None
    assert 'class="verdict ok"' in render_html(report)  # rpi4's XNNPACK runs every op here: no caveat
    long_name = "/backbone/stage4/block3/attention/query_projection/MatMul_with_a_long_name"
    cpu_op = UnsupportedOp(op="GELU", layer=long_name, reason="not in XNNPACK", consequence="runs on the CPU")
    checks = report.target_checks.model_copy(update={"passed": False, "unsupported_ops": [cpu_op]})
    budget = report.budget.model_copy(update={"float_layers": [report.layers[0].layer]})
    fp32, preferred, *rest = report.artifacts
    slower = preferred.model_copy(update={"host_latency_ms": (fp32.host_latency_ms or 1.0) * 3})
    html = render_html(
        report.model_copy(
            update={"target_checks": checks, "budget": budget, "artifacts": [fp32, slower, *rest]}
        )
    )
    assert 'class="verdict caveat"' in html
    assert "1 op(s) runs on the CPU instead of the xnnpack: GELU" in html
    assert f"1 layer(s) kept in float to meet the budget: {report.layers[0].layer}" in html
    assert f'<td class="name">{long_name}</td>' in html  # the whole name, in the target checks table
    assert f"Host latency on {report.host_machine}" in html and "not the device's" in html
    assert "runs 3.00x slower than fp32 here" in html


def test_report_html_lists_the_worst_layers_by_full_name(
    converted: Callable[[str], ConversionResult],
) -> None:
    report = converted("rpi4").report
    assert report is not None
    html = render_html(report)
    table = html[html.index("<h2>Worst layers"):html.index("<h2>Per-layer quantization error")]  # fmt: skip
    worst = sorted(report.layers, key=lambda layer: layer.loss_db, reverse=True)[:15]
    assert table.count("<tr>") == len(worst) + 1  # a header and one row per layer shown
    assert f'<td class="name">{worst[0].layer}</td>' in table.split("</tr>")[1]  # the worst comes first
    assert all(f'<td class="name">{layer.layer}</td>' in table for layer in worst)


def test_report_html_shows_compression_with_a_macs_accuracy_plot(
    make_request: Callable[..., ConversionRequest],
) -> None:
    """--low-rank (a method that changes MACs and is measured): the table row, the layers, and the source and
    the compressed model as two points on the MACs-accuracy plane."""
    result = convert(make_request("jetson-nano", name="lowrank-report", low_rank=0.9))
    (compression,) = result.compression
    html = result.report_files[1].read_text()
    parser = _Elements()
    parser.feed(html)
    assert parser.open == []
    section = html[html.index("<h2>Compression</h2>") :]
    assert "<td>low_rank</td>" in section and compression.setting in section
    plot = section[section.index("<h3>MACs against accuracy</h3>") :]
    plot = plot[: plot.index("</svg>")]
    assert plot.count("<circle") == 2 and "fp32 source" in plot and "after low_rank" in plot
    assert f"{compression.before.macs / 1e6:.4g} M MACs" in plot
