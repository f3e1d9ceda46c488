"""report.html: the conversion report as one self-contained page, with plots drawn as inline SVG (no plotting
library, no scripts, no network): size, latency and accuracy drop of every artifact vs fp32, and the
per-layer quantization error.
"""

from __future__ import annotations

from dataclasses import dataclass
from html import escape

from edgefleet.converter.fidelity.outputs import MEASURE_LABELS
from edgefleet.converter.report import ArtifactSummary, ConversionReport

WIDTH = 820
LABEL_WIDTH = 300
NOTE_WIDTH = 150
ROW_HEIGHT = 22
BAR_HEIGHT = 14
COLORS = {
    "source": "#9aa0a6",
    "preferred": "#1a73e8",
    "alternative": "#12b5cb",
    "int8": "#1a73e8",
    "float": "#188038",
    "culprit": "#d93025",
    "budget": "#d93025",
}
_STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 880px; color: #202124; }
h1 { font-size: 1.5em; margin-bottom: 0.2em; } h2 { font-size: 1.15em; margin-top: 1.8em; }
.verdict { padding: 0.7em 1em; border-radius: 6px; margin: 1em 0; }
.ok { background: #e6f4ea; } .fail { background: #fce8e6; } .unchecked { background: #fef7e0; }
.caveat { background: #fef7e0; border-left: 4px solid #f9ab00; } .verdict ul { margin: 0.3em 0 0 0; }
td.name { word-break: break-all; }
table { border-collapse: collapse; margin: 0.5em 0; } td, th { padding: 3px 10px; text-align: left; }
th { border-bottom: 1px solid #dadce0; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.muted { color: #5f6368; } svg text { font: 12px system-ui, sans-serif; fill: #202124; }
.legend span { display: inline-block; width: 10px; height: 10px; margin: 0 4px 0 12px; }
"""


@dataclass(frozen=True)
class Bar:
    label: str
    value: float
    color: str
    note: str


def bar_chart(bars: list[Bar], unit: str, marker: tuple[float, str] | None = None) -> str:
    """Horizontal bars, one row each; `marker` draws a labelled vertical line (a budget) at that value."""
    if not bars:
        return '<p class="muted">nothing to plot</p>'
    plot = WIDTH - LABEL_WIDTH - NOTE_WIDTH
    top = max([b.value for b in bars] + [marker[0] if marker else 0.0] + [1e-9])
    scale = plot / top
    pad = 18 if marker is not None else 0  # room above the bars for the marker's label
    height = pad + ROW_HEIGHT * len(bars) + 28
    parts = [f'<svg width="{WIDTH}" height="{height}" role="img" xmlns="http://www.w3.org/2000/svg">']
    for row, bar in enumerate(bars):
        y = pad + row * ROW_HEIGHT
        width = max(bar.value * scale, 0.0)
        label = bar.label if len(bar.label) <= 44 else bar.label[:20] + "..." + bar.label[-21:]
        parts.append(
            f'<text x="{LABEL_WIDTH - 8}" y="{y + 12}" text-anchor="end"><title>{escape(bar.label)}</title>'
            f"{escape(label)}</text>"
            f'<rect x="{LABEL_WIDTH}" y="{y + 1}" width="{width:.1f}" height="{BAR_HEIGHT}" '
            f'fill="{bar.color}"><title>{escape(bar.label)}: {escape(bar.note)}</title></rect>'
            f'<text x="{LABEL_WIDTH + width + 6:.1f}" y="{y + 12}">{escape(bar.note)}</text>'
        )
    axis_y = pad + ROW_HEIGHT * len(bars) + 4
    parts.append(
        f'<line x1="{LABEL_WIDTH}" y1="{axis_y}" x2="{LABEL_WIDTH + plot}" y2="{axis_y}" stroke="#dadce0"/>'
        f'<text x="{LABEL_WIDTH}" y="{axis_y + 16}" class="muted">0</text>'
        f'<text x="{LABEL_WIDTH + plot}" y="{axis_y + 16}" text-anchor="end">{top:.3g} {escape(unit)}</text>'
    )
    if marker is not None:
        x = LABEL_WIDTH + marker[0] * scale
        parts.append(
            f'<line x1="{x:.1f}" y1="4" x2="{x:.1f}" y2="{axis_y}" stroke="{COLORS["budget"]}" '
            f'stroke-dasharray="4 3"/><text x="{x:.1f}" y="12" text-anchor="end" fill="{COLORS["budget"]}">'
            f"{escape(marker[1])}</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


@dataclass(frozen=True)
class Point:
    label: str
    x: float
    y: float
    color: str


def scatter_chart(points: list[Point], x_unit: str, y_unit: str) -> str:
    """Labelled points on linear axes from 0 (x) and from just below the lowest value (y): where each
    model sits in cost against accuracy, the cheap and accurate ones to the upper left."""
    if not points:
        return '<p class="muted">nothing to plot</p>'
    left, top, plot_w, plot_h = 60, 12, WIDTH - 260, 220
    x_max = max(p.x for p in points) * 1.05 or 1.0
    y_low = min(p.y for p in points)
    y_high = max(p.y for p in points)
    y_min = max(0.0, y_low - max(1.0, (y_high - y_low) * 0.2))
    y_span = max(y_high - y_min, 1e-9) * 1.05

    def at(point: Point) -> tuple[float, float]:
        return left + point.x / x_max * plot_w, top + plot_h - (point.y - y_min) / y_span * plot_h

    parts = [
        f'<svg width="{WIDTH}" height="{plot_h + top + 40}" role="img" xmlns="http://www.w3.org/2000/svg">'
    ]
    parts.append(
        f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" stroke="#dadce0"/>'
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + plot_h}" stroke="#dadce0"/>'
        f'<text x="{left}" y="{top + plot_h + 16}" class="muted">0</text>'
        f'<text x="{left + plot_w}" y="{top + plot_h + 16}" text-anchor="end">'
        f"{x_max:.3g} {escape(x_unit)}</text>"
        f'<text x="{left - 6}" y="{top + plot_h}" text-anchor="end" class="muted">{y_min:.3g}</text>'
        f'<text x="{left - 6}" y="{top + 10}" text-anchor="end">{y_min + y_span:.3g} {escape(y_unit)}</text>'
    )
    for point in points:
        x, y = at(point)
        parts.append(
            f'<circle cx="{x:.1f}" cy="{y:.1f}" r="5" fill="{point.color}"><title>{escape(point.label)}: '
            f"{point.x:.4g} {escape(x_unit)}, {point.y:.2f} {escape(y_unit)}</title></circle>"
            f'<text x="{x + 8:.1f}" y="{y + 4:.1f}">{escape(point.label)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _compression_section(report: ConversionReport) -> list[str]:
    """Each compression method's before/after, and the models on a MACs-accuracy plane."""
    if not report.compression:
        return []
    rows = []
    for c in report.compression:
        b, a = c.before, c.after
        rows.append(
            [
                c.method,
                c.setting,
                f"{b.params} -> {a.params}",
                f"{b.macs if b.macs is not None else '?'} -> {a.macs if a.macs is not None else '?'}",
                f"{b.size_bytes / 1024:.1f} -> {a.size_bytes / 1024:.1f} KiB",
                f"{b.host_latency_ms:.3f} -> {a.host_latency_ms:.3f} ms",
                f"{_fmt(b.accuracy, '.2f')} -> {_fmt(a.accuracy, '.2f')}%",
            ]
        )
    points = []
    first = report.compression[0].before
    if first.macs is not None and first.accuracy is not None:
        points.append(Point("fp32 source", first.macs / 1e6, first.accuracy, COLORS["source"]))
    for c in report.compression:
        if c.after.macs is not None and c.after.accuracy is not None:
            points.append(
                Point(f"after {c.method}", c.after.macs / 1e6, c.after.accuracy, COLORS["preferred"])
            )
    sections = [
        "<h2>Compression</h2>",
        '<p class="muted">Each method measured on the same samples before and after (fp32 models, host '
        "latency; accuracy is top-1 with labels, else agreement with the uncompressed model).</p>",
        _table(["method", "setting", "params", "MACs", "size", "host latency", "accuracy"], rows, set()),
    ]
    for c in report.compression:
        lines = [*c.layers, *c.notes]
        if lines:
            items = "".join(f"<li>{escape(line)}</li>" for line in lines)
            sections.append(
                f"<details><summary>{escape(c.method)}: layers and notes</summary><ul>{items}</ul></details>"
            )
    if len(points) > 1:
        sections += ["<h3>MACs against accuracy</h3>", scatter_chart(points, "M MACs", "%")]
    return sections


def _artifact_label(artifact: ArtifactSummary) -> str:
    if artifact.role == "source":
        return "fp32 (source model)"
    return f"{artifact.kind}{' (preferred)' if artifact.role == 'preferred' else ''}"


def _size_bars(artifacts: list[ArtifactSummary]) -> list[Bar]:
    fp32 = artifacts[0].size_bytes
    return [
        Bar(
            _artifact_label(a),
            a.size_bytes / 1024,
            COLORS[a.role],
            f"{a.size_bytes / 1024:.1f} KiB ({a.size_bytes / fp32:.2f}x)",
        )
        for a in artifacts
    ]


def _latency_bars(artifacts: list[ArtifactSummary]) -> list[Bar]:
    fp32 = artifacts[0].host_latency_ms
    return [
        Bar(
            _artifact_label(a),
            a.host_latency_ms,
            COLORS[a.role],
            f"{a.host_latency_ms:.3f} ms" + (f" ({a.host_latency_ms / fp32:.2f}x)" if fp32 else ""),
        )
        for a in artifacts
        if a.host_latency_ms is not None
    ]


def _drop_bars(artifacts: list[ArtifactSummary]) -> list[Bar]:
    return [
        Bar(
            _artifact_label(a),
            max(a.drop_points, 0.0),
            COLORS[a.role],
            f"{a.drop_points:+.2f} points ({a.accuracy:.2f}%)" if a.accuracy is not None else "",
        )
        for a in artifacts
        if a.drop_points is not None and a.role != "source"
    ]


def _layer_bars(report: ConversionReport, loss: bool) -> list[Bar]:
    culprits = set(report.budget.culprits) if report.budget else set()
    bars = []
    for layer in report.layers:
        color = (
            COLORS["float"]
            if layer.kept_float
            else COLORS["culprit"]
            if layer.layer in culprits
            else COLORS["int8"]
        )
        value = max(layer.loss_db, 0.0) if loss else max(layer.sqnr_db, 0.0)
        note = f"{layer.loss_db:+.1f} dB" if loss else f"{layer.sqnr_db:.1f} dB"
        bars.append(Bar(f"{layer.layer} [{layer.op}]", value, color, note))
    return bars


def caveats(report: ConversionReport) -> list[str]:
    """What the target will not do as the numbers suggest: an Edge TPU model that was not compiled, ops that
    run outside the accelerator, layers kept in float. Any of them turns the verdict amber."""
    found = []
    checks = report.target_checks
    if checks is not None:
        edgetpu = checks.edgetpu
        if edgetpu is not None and not edgetpu.compilation.compiled:
            found.append(edgetpu.compilation.detail)
        outside = [op for op in checks.unsupported_ops if op.consequence != "refused"]
        if outside:
            names = ", ".join(sorted({op.op for op in outside}))
            found.append(
                f"{len(outside)} op(s) {outside[0].consequence} instead of the {checks.target}: {names}"
            )
        elif not checks.passed:
            found.append(f"{checks.target}: {checks.summary}")
    if report.budget is not None and report.budget.float_layers:
        layers = report.budget.float_layers
        found.append(f"{len(layers)} layer(s) kept in float to meet the budget: {', '.join(layers)}")
    return found


def _verdict(report: ConversionReport) -> str:
    budget = report.budget
    found = caveats(report)
    listed = f"<ul>{''.join(f'<li>{escape(c)}</li>' for c in found)}</ul>" if found else ""
    if budget is None or not budget.checked:
        message = budget.message if budget else "accuracy budget not checked"
        return f'<div class="verdict unchecked">{escape(message)}{listed}</div>'
    if not budget.met:
        css, headline = "fail", "Accuracy budget missed - no bundle written"
    elif found:
        css, headline = "caveat", "Within the accuracy budget, with caveats for the target"
    else:
        css, headline = "ok", "Within the accuracy budget"
    judged = f"<br>Judged by {escape(budget.judged_by)}." if budget.judged_by else ""
    notes = "".join(f"<br>{escape(note)}" for note in budget.fidelity_notes)
    return (
        f'<div class="verdict {css}"><strong>{headline}.</strong> {escape(budget.message)}{judged}{notes}'
        f"{listed}</div>"
    )


def _target_section(report: ConversionReport) -> list[str]:
    """What the target's checks found: the ops it cannot run, the Edge TPU compilation, TensorRT's Q/DQ
    rules, XNNPACK's coverage."""
    checks = report.target_checks
    if checks is None:
        return []
    verdict = "passed" if checks.passed else "needs attention"
    parts = ["<h2>Target checks</h2>", f"<p><strong>{escape(checks.target)}: {verdict}.</strong> "
             f"{escape(checks.summary)}</p>"]  # fmt: skip
    if checks.unsupported_ops:
        rows = [[op.op, op.layer, op.consequence, op.reason] for op in checks.unsupported_ops]
        parts.append(_table(["op", "layer", "what happens", "why"], rows, set(), names={1}))
    edgetpu = checks.edgetpu
    if edgetpu is not None:
        compilation = edgetpu.compilation
        facts = [compilation.detail]
        if compilation.compiled and compilation.total_ops is not None:
            facts.append(f"{compilation.ops_on_edgetpu} of {compilation.total_ops} ops on the Edge TPU")
        facts += edgetpu.model_problems
        parts.append("<ul>" + "".join(f"<li>{escape(fact)}</li>" for fact in facts) + "</ul>")
    tensorrt = checks.tensorrt
    if tensorrt is not None and tensorrt.violations:
        rows = [[v.rule, v.node, v.detail] for v in tensorrt.violations]
        parts.append(_table(["TensorRT rule", "node", "detail"], rows, set(), names={1}))
    xnnpack = checks.xnnpack
    if xnnpack is not None:
        parts.append(
            f'<p class="muted">XNNPACK runs {xnnpack.delegated_ops} of {xnnpack.ops} ops '
            f"(measured with {escape(xnnpack.measured_with)}).</p>"
        )
    return parts


def _latency_section(report: ConversionReport) -> list[str]:
    """Host latency, said to be the host's: a device's int8 kernels differ (an x86 host may run int8 slower
    than fp32 where an Arm or Edge TPU device runs it faster)."""
    artifacts = report.artifacts
    machine = report.host_machine or "this host"
    lines = [
        f"<h2>Host latency on {escape(machine)} (batch 1, one thread): not the device's</h2>",
        '<p class="muted">Measured on the machine that converted the model. The device\'s latency comes '
        "from the fleet once the bundle runs there: <code>edgefleet status</code> and "
        "<code>edgefleet watch</code> show each device's p50/p95.</p>",
    ]
    fp32, preferred = (
        artifacts[0].host_latency_ms,
        artifacts[1].host_latency_ms if len(artifacts) > 1 else None,
    )
    if fp32 and preferred and preferred > fp32:
        lines.append(
            f'<p class="muted">The artifact runs {preferred / fp32:.2f}x slower than fp32 here: this host\'s '
            f"runtime has no fast path for {escape(artifacts[1].kind)}; that says nothing about the device."
            "</p>"
        )
    return [*lines, bar_chart(_latency_bars(artifacts), "ms")]


WORST_LAYERS = 15


def _worst_layers(report: ConversionReport) -> str:
    """The layers that add the most error, full names, worst first."""
    culprits = set(report.budget.culprits) if report.budget else set()
    worst = sorted(report.layers, key=lambda layer: layer.loss_db, reverse=True)[:WORST_LAYERS]
    rows = [
        [
            layer.layer,
            layer.op,
            f"{layer.loss_db:+.1f} dB",
            f"{layer.sqnr_db:.1f} dB",
            "kept in float" if layer.kept_float else "culprit" if layer.layer in culprits else "int8",
        ]
        for layer in worst
    ]
    return _table(["layer", "op", "SQNR lost", "SQNR at output", "precision"], rows, {2, 3}, names={0})


def _value(value: float | None, unit: str | None) -> str:
    if value is None:
        return "-"
    return f"{value:.1f} dB" if unit == "dB" else f"{value:.2f}%"


def _table(
    header: list[str],
    rows: list[list[str]],
    numeric: set[int],
    names: frozenset[int] | set[int] = frozenset(),
) -> str:
    """`numeric` columns align right; `names` columns (layer names) wrap anywhere rather than be cut."""
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    css = {**dict.fromkeys(numeric, ' class="num"'), **dict.fromkeys(names, ' class="name"')}
    body = "".join(
        "<tr>" + "".join(f"<td{css.get(i, '')}>{escape(c)}</td>" for i, c in enumerate(row)) + "</tr>"
        for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _fmt(value: float | None, pattern: str) -> str:
    return "-" if value is None else format(value, pattern)


def _calibration(report: ConversionReport) -> str:
    preferred = report.artifacts[1].kind if len(report.artifacts) > 1 else ""
    if not preferred.endswith("int8"):
        return f"none needed for {preferred or 'this artifact'}"
    return f"{report.calibration.method} on {report.calibration.samples} samples"


def render_html(report: ConversionReport) -> str:
    artifacts = report.artifacts
    budget = report.budget
    sections = [
        f"<h1>{escape(report.name)} {escape(report.version)} &rarr; {escape(report.profile)}</h1>",
        f'<p class="muted">{escape(report.profile_description)}<br>source {escape(report.source_model)}; '
        f"calibration: {escape(_calibration(report))}; "
        f"converter {escape(report.converter_version)}; {report.created_at:%Y-%m-%d %H:%M} UTC; "
        f"bundle: {escape(report.bundle or 'not written')}</p>",
        _verdict(report),
        *_target_section(report),
        "<h2>Artifacts vs fp32</h2>",
        _table(
            ["artifact", "size", "host latency", "accuracy", "drop (points)", "host runtime"],
            [
                [
                    _artifact_label(a),
                    f"{a.size_bytes / 1024:.1f} KiB",
                    _fmt(a.host_latency_ms, ".3f") + " ms",
                    _value(a.accuracy, a.accuracy_unit or "%")
                    + (f" ({a.accuracy_metric})" if a.accuracy_metric and a.role != "source" else ""),
                    _fmt(a.drop_points, "+.2f"),
                    a.host_runtime or "-",
                ]
                for a in artifacts
            ],
            {1, 2, 3, 4},
        ),
        "<h2>File size</h2>",
        bar_chart(_size_bars(artifacts), "KiB"),
        *_latency_section(report),
        "<h2>Accuracy drop vs fp32</h2>",
        bar_chart(
            _drop_bars(artifacts),
            "points",
            (budget.max_drop_points, f"budget {budget.max_drop_points:.2f}") if budget else None,
        ),
    ]
    sections += _compression_section(report)
    if report.outputs:
        sections += [
            "<h2>Outputs</h2>",
            '<p class="muted">Each output is judged by the measure of its kind: top-1 (labels) or top-1 '
            "agreement for classification, box F1 for detection, mask IoU for segmentation, decoded-string "
            "equality for CTC, SQNR against fp32 for any other tensor (its kind named with --output-kind, "
            "else read from its shape).</p>",
            _table(
                [
                    "output",
                    "kind",
                    "measure",
                    "fp32",
                    "artifact",
                    "drop (points)",
                    "budget",
                    "SQNR",
                    "cosine",
                    "how",
                ],
                [
                    [
                        o.output,
                        f"{o.kind} ({'named' if o.kind_source == 'request' else 'from shape'})",
                        MEASURE_LABELS[o.metric],
                        _value(o.fp32, o.unit),
                        _value(o.artifact, o.unit),
                        _fmt(o.drop_points, "+.2f"),
                        "-"
                        if o.within_budget is None
                        else f"{'within' if o.within_budget else 'OVER'}: {o.budget}",
                        f"{o.sqnr_db:.1f} dB",
                        _fmt(o.cosine, ".4f"),
                        o.detail or (f"agreement {o.agreement:.2f}%" if o.agreement is not None else "-"),
                    ]
                    for o in report.outputs
                ],
                {3, 4, 5, 7, 8},
            ),
        ]
        if budget is not None and budget.custom_metric is not None:
            custom = budget.custom_metric
            verdict = "-" if custom.passed is None else ("passes" if custom.passed else "fails")
            sections.append(
                _table(
                    ["custom metric", "function", "score", "fp32", "drop (points)", "its verdict"],
                    [
                        [
                            custom.name,
                            custom.function,
                            f"{custom.score:g}",
                            _fmt(custom.fp32, "g"),
                            _fmt(custom.drop_points, "+.2f"),
                            verdict,
                        ]
                    ],
                    {2, 3, 4},
                )
            )
    if budget is not None and len(budget.attempts) > 1:
        sections += [
            "<h2>Mixed precision search</h2>",
            _table(
                ["attempt", "layers kept in float", "drop (points)", "lowest SQNR", "within budget"],
                [
                    [
                        str(i),
                        ", ".join(a.float_layers) or "(all int8)",
                        _fmt(a.drop_points, "+.2f"),
                        _fmt(a.sqnr_db, ".1f") + (" dB" if a.sqnr_db is not None else ""),
                        "yes" if a.met else "no",
                    ]
                    for i, a in enumerate(budget.attempts)
                ],
                {0, 2, 3},
            ),
        ]
    if report.layers:
        legend = (
            '<p class="legend muted">'
            f'<span style="background:{COLORS["int8"]}"></span>int8'
            f'<span style="background:{COLORS["float"]}"></span>kept in float'
            f'<span style="background:{COLORS["culprit"]}"></span>culprit (loses the most)</p>'
        )
        sections += [
            f"<h2>Worst layers ({min(WORST_LAYERS, len(report.layers))} of {len(report.layers)})</h2>",
            '<p class="muted">The layers that add the most error (SQNR lost: worst input SQNR minus output '
            "SQNR), which mixed precision keeps in float first.</p>",
            _worst_layers(report),
            "<h2>Per-layer quantization error</h2>",
            '<p class="muted">SQNR of each layer\'s output, fp32 vs artifact on the same calibration samples '
            "(higher is better; the error accumulates with depth).</p>",
            legend,
            bar_chart(_layer_bars(report, loss=False), "dB"),
            "<h2>SQNR lost in each layer</h2>",
            '<p class="muted">Worst input SQNR minus output SQNR: the layers that add the most error, '
            "which mixed precision keeps in float.</p>",
            legend,
            bar_chart(_layer_bars(report, loss=True), "dB"),
        ]
    if report.notes:
        sections += ["<h2>Notes</h2><ul>", *(f"<li>{escape(n)}</li>" for n in report.notes), "</ul>"]
    if report.step_seconds:
        total = sum(report.step_seconds.values())
        sections += [
            f"<h2>Steps ({total:.1f} s)</h2>",
            _table(["step", "seconds"], [[k, f"{v:.2f}"] for k, v in report.step_seconds.items()], {1}),
        ]
    title = f"{report.name} {report.version} for {report.profile}: conversion report"
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
        f"<style>{_STYLE}</style></head><body>{''.join(sections)}</body></html>\n"
    )
