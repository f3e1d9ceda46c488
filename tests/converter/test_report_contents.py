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
