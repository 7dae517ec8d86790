"""Pictures of a run and its report: ``draw`` makes one picture by name (``mnistlab plot``);
``write_report`` puts them all, with the config and metrics, in one self-contained HTML page
(``mnistlab report``). Loading the run itself is ``runs.Run``'s job.
"""

from __future__ import annotations

import base64
import datetime
import html
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from mnistlab import __version__, fileio, plots
from mnistlab.errors import MnistlabError
from mnistlab.evaluate import format_rate, precision_recall
from mnistlab.runs import METRICS_FILE, Run


@dataclass(frozen=True)
class PlotKind:
    """One picture ``mnistlab plot RUN <kind>`` can draw."""

    help: str
    options: tuple[str, ...]  # which of --index, --count, --layer, --channel it takes


PLOT_KINDS: dict[str, PlotKind] = {
    "samples": PlotKind("grid of test images from --index, titled label=7 predict=7", ("index", "count")),
    "errors": PlotKind("the same grid over misclassified test images only, with confidence", ("index", "count")),
    "confusion": PlotKind("confusion-matrix heat map with counts", ()),
    "curves": PlotKind("loss and accuracy per epoch, train vs validation", ()),
    "filters": PlotKind("conv layer --layer's weights on input --channel, one tile per filter", ("layer", "channel")),
    "feature-maps": PlotKind("conv layer --layer's output for test image --index, one tile per channel",
                             ("layer", "index")),
    "weights": PlotKind("softmax regression: the ten 28x28 weight images; other models: weight histograms", ()),
}
DEFAULTS: dict[str, Any] = {"index": 0, "count": plots.MAX_GRID, "layer": "1", "channel": 0}


# ---------------------------------------------------------------------- one picture
def draw(run: Run, kind: str, out: str | Path | None = None, *, index: int | None = None,
         count: int | None = None, layer: str | int | None = None, channel: int | None = None) -> Path:
    """Draw picture ``kind`` (see ``PLOT_KINDS``) of ``run``; return the PNG's path.

    Options left None take ``DEFAULTS``; one the kind does not use is an error.
    ``out`` defaults to ``RUN/plots/<kind>.png`` (``<kind>-layer<N>.png`` for conv layers).
    """
    if kind not in PLOT_KINDS:
        raise MnistlabError(f"unknown plot {kind!r}; expected one of {', '.join(PLOT_KINDS)}")
    given = {k: v for k, v in dict(index=index, count=count, layer=layer, channel=channel).items() if v is not None}
    takes = PLOT_KINDS[kind].options
    unused = [k for k in given if k not in takes]
    if unused:
        raise MnistlabError(f"--{unused[0]} does not apply to {kind}; {kind} takes "
                            f"{', '.join('--' + t for t in takes) or 'no options'}")
    return _DRAWERS[kind](run, out, **{**{k: DEFAULTS[k] for k in takes}, **given})


def _out(run: Run, out: str | Path | None, default_name: str) -> Path:
    return Path(out) if out else run.files.plots / default_name


def _check_grid(run: Run, index: int, count: int) -> None:
    if not 1 <= count <= plots.MAX_GRID:
        raise MnistlabError(f"--count {count}: expected 1..{plots.MAX_GRID}")
    run.check_index(index)


def _samples(run: Run, out: str | Path | None, index: int, count: int) -> Path:
    _check_grid(run, index, count)
    test, path = run.test, _out(run, out, "samples.png")
    chosen = np.arange(index, min(index + count, len(test)))
    predicted = run.probabilities_at(chosen).argmax(1)
    plots.image_grid(test.images[chosen], plots.prediction_titles(test.labels[chosen], predicted, run.class_names),
                     path, title=f"{run.name}: test images #{chosen[0]}..#{chosen[-1]}")
    return path


def _errors(run: Run, out: str | Path | None, index: int, count: int) -> Path:
    _check_grid(run, index, count)
    test, path = run.test, _out(run, out, "errors.png")
    probs = run.probabilities
    predicted = probs.argmax(1)
    wrong = np.flatnonzero(predicted != test.labels)
    chosen = wrong[wrong >= index][:count]
    if not len(chosen):
        raise MnistlabError(f"--index {index}: no misclassified test image at or after it "
                            f"({len(wrong)} of {len(test)} misclassified in all)")
    titles = plots.prediction_titles(test.labels[chosen], predicted[chosen], run.class_names,
                                     probs[chosen, predicted[chosen]], chosen)
    plots.image_grid(test.images[chosen], titles, path,
                     title=f"{run.name}: {len(wrong)} of {len(test)} test images misclassified "
                           f"(showing {len(chosen)} from #{index}; % = confidence)")
    return path


def _confusion(run: Run, out: str | Path | None) -> Path:
    path = _out(run, out, "confusion.png")
    plots.confusion_heatmap(run.confusion(), run.class_names, path)
    return path


def _curves(run: Run, out: str | Path | None) -> Path:
    rows = run.history()
    path = _out(run, out, "curves.png")
    plots.training_curves(rows, path, title=f"{run.name}: training curves")
    return path


def _filters(run: Run, out: str | Path | None, layer: str | int, channel: int) -> Path:
    number, conv = run.conv_layer(layer)
    kernel = np.asarray(conv.get_weights()[0])  # (kh, kw, in_channels, filters)
    kh, kw, in_channels, filters = kernel.shape
    if not 0 <= channel < in_channels:
        raise MnistlabError(f"--channel {channel}: expected 0..{in_channels - 1} "
                            f"(layer {number}, {conv.name}, has {in_channels} input channels)")
    path = _out(run, out, f"filters-layer{number}.png")
    plots.filter_grid(kernel, path, channel,
                      title=f"Layer {number} ({conv.name}): {filters} filters {kh}x{kw}, input channel {channel}")
    return path


def _feature_maps(run: Run, out: str | Path | None, layer: str | int, index: int) -> Path:
    number, conv = run.conv_layer(layer)
    run.check_index(index)
    block, maps = run.feature_maps(conv, index)
    label = run.class_names[int(run.test.labels[index])]
    path = _out(run, out, f"feature-maps-layer{number}.png")
    h, w, c = maps.shape
    plots.feature_map_grid(maps, path, title=f"Layer {number} ({' > '.join(x.name for x in block)}): "
                                             f"{c} maps {h}x{w}, test image #{index} (label {label})")
    return path


def _weights(run: Run, out: str | Path | None) -> Path:
    kernel = run.softmax_kernel()
    path = _out(run, out, "weights.png")
    if kernel is not None:
        plots.softmax_weight_images(kernel, path, run.class_names, title=f"{run.name}: the weight image of each "
                                    f"class (red raises its score, blue lowers it)")
    else:
        plots.weight_histograms(run.kernels(), path, title=f"{run.name}: weight histograms")
    return path


_DRAWERS = {"samples": _samples, "errors": _errors, "confusion": _confusion, "curves": _curves,
            "filters": _filters, "feature-maps": _feature_maps, "weights": _weights}  # one per PLOT_KINDS


# ---------------------------------------------------------------------- the report
REPORT_CSS = """
body { font-family: system-ui, sans-serif; max-width: 1150px; margin: 2em auto; padding: 0 1em; color: #222; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: 0.2em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: 0.5em 0; } td, th { border: 1px solid #ccc; padding: 0.2em 0.6em; }
th { background: #f3f3f3; text-align: left; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
img { max-width: 100%; height: auto; display: block; margin: 0.5em 0; }
.figures { display: flex; flex-wrap: wrap; gap: 1.5em; align-items: flex-start; }
.note { color: #666; font-style: italic; } nav a { margin-right: 1em; }
"""


def _flatten(obj: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """Nested dicts -> ``[("train.epochs", 10), ...]``."""
    if isinstance(obj, dict):
        return [item for k, v in obj.items() for item in _flatten(v, f"{prefix}{k}.")]
    return [(prefix.rstrip("."), obj)]


def _cell(value: Any) -> str:
    if isinstance(value, float):
        text, cls = f"{value:.6g}", "num"
    elif isinstance(value, (int, bool)) or value is None:
        text, cls = json.dumps(value), "num"
    elif isinstance(value, str):
        text, cls = value, ""
    else:
        text, cls = json.dumps(value), ""
    return f'<td class="{cls}">{html.escape(text)}</td>' if cls else f"<td>{html.escape(text)}</td>"


def _table(rows: Sequence[tuple[str, Any]]) -> str:
    body = "".join(f"<tr><th>{html.escape(str(k))}</th>{_cell(v)}</tr>" for k, v in rows)
    return f"<table>{body}</table>"


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _per_class_table(matrix: np.ndarray, class_names: Sequence[str]) -> str:
    """Precision, recall and count per class from a confusion matrix."""
    precision, recall = precision_recall(matrix)
    head = "<tr><th>class</th><th>precision</th><th>recall</th><th>test images</th></tr>"
    body = "".join(f"<tr><th>{html.escape(name)}</th><td class=\"num\">{format_rate(p)}</td>"
                   f"<td class=\"num\">{format_rate(r)}</td><td class=\"num\">{int(n)}</td></tr>"
                   for name, p, r, n in zip(class_names, precision, recall, matrix.sum(axis=1)))
    return f"<table>{head}{body}</table>"


def write_report(run: Run, out: str | Path | None = None, index: int = 0) -> Path:
    """Write one self-contained HTML page (PNGs embedded as base64) about ``run``: config,
    metrics, confusion matrix, curves, samples, errors, filters, feature maps of test image
    ``index``, weights. Returns its path (default ``RUN/report.html``)."""
    out = Path(out) if out else run.files.report_file
    run.check_index(index)
    sections: list[tuple[str, str, str]] = []  # (anchor, heading, html)
    with tempfile.TemporaryDirectory(prefix="mnistlab-report-") as tmp:
        counter = iter(range(1_000_000))

        def picture(kind: str, alt: str, optional: bool = False, **options: Any) -> str:
            try:
                return _img(draw(run, kind, Path(tmp) / f"{next(counter)}.png", **options), alt)
            except MnistlabError as exc:
                if not optional:
                    raise
                return f'<p class="note">{html.escape(str(exc))}</p>'

        metrics = _flatten(run.metrics)
        sections.append(("metrics", "Metrics", _table(metrics) if metrics else
                         f'<p class="note">no {METRICS_FILE} in the run folder</p>'))
        sections.append(("config", "Configuration", _table(_flatten(run.config))))
        matrix = run.confusion()
        sections.append(("confusion", "Confusion matrix", picture("confusion", "confusion matrix")
                         + _per_class_table(matrix, run.class_names)))
        sections.append(("curves", "Training curves", picture("curves", "training curves", optional=True)))
        sections.append(("samples", "Test images and predictions", picture("samples", "test images")))
        sections.append(("errors", "Misclassified test images", picture("errors", "errors", optional=True)))
        convs = run.conv_layers()
        if convs:
            numbers = range(1, len(convs) + 1)
            sections.append(("filters", "Conv filters (input channel 0)", '<div class="figures">' + "".join(
                picture("filters", f"filters of layer {n}", layer=str(n)) for n in numbers) + "</div>"))
            sections.append(("feature-maps", f"Feature maps of test image #{index}", '<div class="figures">' + "".join(
                picture("feature-maps", f"feature maps of layer {n}", layer=str(n), index=index)
                for n in numbers) + "</div>"))
        sections.append(("weights", "Weights", picture("weights", "weights")))

    title = f"mnistlab report: {run.name}"
    when = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    nav = " ".join(f'<a href="#{a}">{html.escape(h)}</a>' for a, h, _ in sections)
    body = "\n".join(f'<section id="{a}"><h2>{html.escape(h)}</h2>\n{content}</section>' for a, h, content in sections)
    page = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<title>{html.escape(title)}</title><link rel="icon" href="data:,"><style>{REPORT_CSS}</style></head>\n'
            f"<body><h1>{html.escape(title)}</h1>\n"
            f'<p>Run folder <code>{html.escape(str(run.folder))}</code>, written {html.escape(when)} '
            f"by mnistlab {html.escape(__version__)}.</p>\n<nav>{nav}</nav>\n{body}\n</body></html>\n")
    fileio.write_text(out, page)
    return out
