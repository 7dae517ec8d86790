"""Pictures of a run and its report: ``figure`` makes one picture by name as a matplotlib
Figure (for a notebook), ``draw`` saves it as a PNG (``mnistlab plot``); ``write_report`` puts
them all, with the config, metrics and timings, in one self-contained HTML page
(``mnistlab report``). Loading the run itself is ``analysis.Run``'s job; the slow steps (loading
the model and the test split, predicting) are announced through ``log``.
"""

from __future__ import annotations

import base64
import datetime
import html
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from mnistlab import __version__, fileio, plots
from mnistlab.analysis import Run
from mnistlab.errors import MnistlabError
from mnistlab.evaluate import format_rate, precision_recall
from mnistlab.runs import METRICS_FILE, TIMING_FILE

if TYPE_CHECKING:
    from matplotlib.figure import Figure

Log = Callable[[str], None]


@dataclass(frozen=True)
class PlotKind:
    """One picture ``mnistlab plot RUN <kind>`` can draw."""

    help: str
    options: tuple[str, ...]  # which of --index, --count, --layer, --channel it takes


PLOT_KINDS: dict[str, PlotKind] = {
    "samples": PlotKind("grid of test images from --index, titled label=7 predict=7", ("index", "count")),
    "errors": PlotKind("the same grid over misclassified test images only, with confidence", ("index", "count")),
    "confusion": PlotKind("confusion-matrix heat map with counts", ()),
    "reliability": PlotKind(f"calibration: accuracy vs confidence in {plots.ECE_BINS} bins, "
                            f"with the expected calibration error (ECE)", ()),
    "curves": PlotKind("loss (plain cross-entropy) and accuracy per epoch, train vs validation", ()),
    "filters": PlotKind(f"conv layer --layer's weights on input --channel, one tile per filter "
                        f"(the first {plots.MAX_TILES})", ("layer", "channel")),
    "feature-maps": PlotKind(f"conv layer --layer's output for test image --index, one tile per channel "
                             f"(the first {plots.MAX_TILES})", ("layer", "index")),
    "weights": PlotKind("softmax regression: the ten 28x28 weight images; other models: weight histograms", ()),
}
DEFAULTS: dict[str, Any] = {"index": 0, "count": plots.MAX_GRID, "layer": "1", "channel": 0}


def _quiet(message: str) -> None:
    """The default ``log``: say nothing."""


# ---------------------------------------------------------------------- loading, announced
def _loaded(run: Run, log: Log, part: str) -> Any:
    """``run.<part>`` (test, model or probabilities), saying first what takes seconds when it
    is not loaded yet (``Run`` loads each on first use and keeps it)."""
    if not run.loaded(part):
        if part == "test":
            data = run.config.get("data")
            dataset = data.get("dataset") if isinstance(data, dict) else None
            log(f"loading the {dataset} test split…" if dataset else "loading the test split…")
        elif part == "model":
            log(f"loading {run.files.model_file}…")
        elif part == "probabilities":
            count = len(_loaded(run, log, "test"))
            _loaded(run, log, "model")
            log(f"predicting {count:,} test images…")
    return getattr(run, part)


def _confusion_matrix(run: Run, log: Log) -> np.ndarray:
    """``run.confusion()``, announcing the predictions it needs unless evaluation.json has it."""
    if not (run.evaluation and "confusion_matrix" in run.evaluation):
        _loaded(run, log, "probabilities")
    return run.confusion()


# ---------------------------------------------------------------------- one picture
def figure(run: Run, kind: str, *, index: int | None = None, count: int | None = None,
           layer: str | int | None = None, channel: int | None = None, log: Log = _quiet) -> Figure:
    """Picture ``kind`` (see ``PLOT_KINDS``) of ``run`` as a matplotlib Figure: in Jupyter it
    shows inline; ``plots.save_figure(fig, path)`` writes it.

    Options left None take ``DEFAULTS``; one the kind does not use is an error.
    Example: ``figure(Run("runs/cnn"), "filters", layer=2)``.
    """
    return _make(run, kind, dict(index=index, count=count, layer=layer, channel=channel), log)[0]


def draw(run: Run, kind: str, out: str | Path | None = None, *, index: int | None = None,
         count: int | None = None, layer: str | int | None = None, channel: int | None = None,
         log: Log = _quiet) -> Path:
    """Draw picture ``kind`` of ``run`` (as ``figure`` does) into a PNG; return its path.

    ``out`` defaults to ``RUN/plots/<kind>.png`` (``<kind>-layer<N>.png`` for conv layers).
    """
    if out is not None and Path(out).suffix.lower() != ".png":
        raise MnistlabError(f"--out {out}: expected a file name ending in .png")
    fig, name = _make(run, kind, dict(index=index, count=count, layer=layer, channel=channel), log)
    path = Path(out) if out else run.files.plots / name
    log(f"writing {path}…")
    plots.save_figure(fig, path)
    return path


def _make(run: Run, kind: str, options: dict[str, Any], log: Log) -> tuple[Figure, str]:
    """Check ``options`` against ``kind``, then draw: the Figure and its default file name."""
    if kind not in PLOT_KINDS:
        raise MnistlabError(f"unknown plot {kind!r}; expected one of {', '.join(PLOT_KINDS)}")
    given = {k: v for k, v in options.items() if v is not None}
    takes = PLOT_KINDS[kind].options
    unused = [k for k in given if k not in takes]
    if unused:
        raise MnistlabError(f"--{unused[0]} does not apply to {kind}; {kind} takes "
                            f"{', '.join('--' + t for t in takes) or 'no options'}")
    return _DRAWERS[kind](run, log, **{**{k: DEFAULTS[k] for k in takes}, **given})


def _check_grid(run: Run, log: Log, index: int, count: int) -> None:
    if not 1 <= count <= plots.MAX_GRID:
        raise MnistlabError(f"--count {count}: expected 1..{plots.MAX_GRID}")
    _loaded(run, log, "test")
    run.check_index(index)


def _samples(run: Run, log: Log, index: int, count: int) -> tuple[Figure, str]:
    _check_grid(run, log, index, count)
    test = run.test
    chosen = np.arange(index, min(index + count, len(test)))
    _loaded(run, log, "model")
    predicted = run.probabilities_at(chosen).argmax(1)
    log("drawing samples…")
    fig = plots.image_grid(test.images[chosen], plots.prediction_titles(test.labels[chosen], predicted,
                                                                        run.class_names),
                           title=f"{run.name}: test images #{chosen[0]}..#{chosen[-1]}")
    return fig, "samples.png"


def _errors(run: Run, log: Log, index: int, count: int) -> tuple[Figure, str]:
    _check_grid(run, log, index, count)
    test, probs = run.test, _loaded(run, log, "probabilities")
    predicted = probs.argmax(1)
    wrong = np.flatnonzero(predicted != test.labels)
    chosen = wrong[wrong >= index][:count]
    if not len(chosen):
        raise MnistlabError(f"--index {index}: no misclassified test image at or after it "
                            f"({len(wrong)} of {len(test)} misclassified in all)")
    titles = plots.prediction_titles(test.labels[chosen], predicted[chosen], run.class_names,
                                     probs[chosen, predicted[chosen]], chosen)
    log("drawing errors…")
    fig = plots.image_grid(test.images[chosen], titles,
                           title=f"{run.name}: {len(wrong)} of {len(test)} test images misclassified "
                                 f"(showing {len(chosen)} from #{index}; % = confidence)")
    return fig, "errors.png"


def _confusion(run: Run, log: Log) -> tuple[Figure, str]:
    matrix = _confusion_matrix(run, log)
    log("drawing confusion…")
    return plots.confusion_heatmap(matrix, run.class_names), "confusion.png"


def _reliability(run: Run, log: Log) -> tuple[Figure, str]:
    probs = _loaded(run, log, "probabilities")
    log("drawing reliability…")
    return plots.reliability_diagram(probs, run.test.labels, title=f"{run.name} on the test split"), "reliability.png"


def _curves(run: Run, log: Log) -> tuple[Figure, str]:
    rows = run.history()
    log("drawing curves…")
    return plots.training_curves(rows, title=f"{run.name}: training curves"), "curves.png"


def _filters(run: Run, log: Log, layer: str | int, channel: int) -> tuple[Figure, str]:
    _loaded(run, log, "model")
    number, conv = run.conv_layer(layer)
    kernel = np.asarray(conv.get_weights()[0])  # (kh, kw, in_channels, filters)
    kh, kw, in_channels, filters = kernel.shape
    if not 0 <= channel < in_channels:
        raise MnistlabError(f"--channel {channel}: expected 0..{in_channels - 1} "
                            f"(layer {number}, {conv.name}, has {in_channels} input channels)")
    log(f"drawing filters of layer {number}…")
    fig = plots.filter_grid(kernel, channel, title=f"Layer {number} ({conv.name}): {filters} filters "
                                                   f"{kh}x{kw}, input channel {channel}")
    return fig, f"filters-layer{number}.png"


def _feature_maps(run: Run, log: Log, layer: str | int, index: int) -> tuple[Figure, str]:
    _loaded(run, log, "model")
    number, conv = run.conv_layer(layer)
    _loaded(run, log, "test")
    run.check_index(index)
    block, maps = run.feature_maps(conv, index)
    label = run.class_names[int(run.test.labels[index])]
    h, w, c = maps.shape
    log(f"drawing feature maps of layer {number}…")
    fig = plots.feature_map_grid(maps, title=f"Layer {number} ({' > '.join(x.name for x in block)}): "
                                             f"{c} maps {h}x{w}, test image #{index} (label {label})")
    return fig, f"feature-maps-layer{number}.png"


def _weights(run: Run, log: Log) -> tuple[Figure, str]:
    _loaded(run, log, "model")
    kernel = run.softmax_kernel()
    log("drawing weights…")
    if kernel is not None:
        return plots.softmax_weight_images(kernel, run.class_names, title=f"{run.name}: the weight image of each "
                                           f"class (red raises its score, blue lowers it)"), "weights.png"
    return plots.weight_histograms(run.kernels(), title=f"{run.name}: weight histograms"), "weights.png"


_DRAWERS = {"samples": _samples, "errors": _errors, "confusion": _confusion, "reliability": _reliability,
            "curves": _curves, "filters": _filters, "feature-maps": _feature_maps,
            "weights": _weights}  # one per PLOT_KINDS


# ---------------------------------------------------------------------- the report
REPORT_CSS = """
body { font-family: system-ui, sans-serif; max-width: 1150px; margin: 2em auto; padding: 0 1em; color: #222; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: 0.2em; margin-top: 1.6em; }
h3 { font-size: 1em; margin: 1em 0 0.3em; }
table { border-collapse: collapse; margin: 0.5em 0; } td, th { border: 1px solid #ccc; padding: 0.2em 0.6em; }
th { background: #f3f3f3; text-align: left; font-weight: normal; font-family: ui-monospace, monospace; }
td.num { text-align: right; font-variant-numeric: tabular-nums; } td.unset { color: #888; }
img { max-width: 100%; height: auto; display: block; margin: 0.5em 0; }
.figures { display: flex; flex-wrap: wrap; gap: 1.5em; align-items: flex-start; }
.note { color: #666; font-style: italic; } nav a { margin-right: 1em; }
"""
ACCURACY_KEYS = ("accuracy", "ece")  # a metric whose name contains one of these is a fraction: shown as %
LOSS_KEYS = ("loss", "nll")  # ... a cross-entropy in nats: four decimals


def _flatten(obj: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """Nested dicts -> ``[("train.epochs", 10), ...]``."""
    if isinstance(obj, dict):
        return [item for k, v in obj.items() for item in _flatten(v, f"{prefix}{k}.")]
    return [(prefix.rstrip("."), obj)]


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def format_seconds(seconds: float, unit: str = " s", minutes: bool = True) -> str:
    """``361 s (6.0 min)``; ``47 s``; ``2.4 s`` (a tenth of a second matters only below ten)."""
    text = f"{seconds:.1f}{unit}" if seconds < 10 else f"{seconds:.0f}{unit}"
    return text + (f" ({seconds / 60:.1f} min)" if minutes and seconds >= 120 else "")


def format_metric(key: str, value: Any) -> str:
    """A metric for people: accuracies (and ECE) as %, losses to 4 decimals, ``*seconds`` as
    ``361 s``, counts with thousands separators, undefined (None, NaN) as "–"."""
    name = key.rsplit(".", 1)[-1]
    if _missing(value):
        return "–"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return _config_text(value)
    if any(k in name for k in ACCURACY_KEYS):
        return f"{value:.2%}"
    if any(k in name for k in LOSS_KEYS):
        return f"{value:.4f}"
    if name.endswith("seconds"):
        return format_seconds(value)
    return f"{value:,}" if isinstance(value, int) else f"{value:.4g}"


def _config_text(value: Any) -> str:
    """A setting for people: None (the default applies) as "– (default)", lists as ``16, 32, 64``."""
    if value is None:
        return "– (default)"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(_config_text(v) for v in value) or "none"
    return value if isinstance(value, str) else json.dumps(value)


def _row(key: str, text: str, value: Any) -> str:
    """One ``<tr>``: the key, then ``text``: right-aligned if ``value`` is a number, grey if unset."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    cls = "unset" if value is None else "num" if number else ""
    attr = f' class="{cls}"' if cls else ""
    return f"<tr><th>{html.escape(str(key))}</th><td{attr}>{html.escape(text)}</td></tr>"


def _table(rows: Sequence[str]) -> str:
    return f"<table>{''.join(rows)}</table>"


def _timing_rows(timing: dict[str, Any]) -> list[str]:
    """``timing.json`` as rows: training time, wall time, seconds per epoch (mean and range)."""
    rows = []
    if isinstance(timing.get("train_seconds"), (int, float)):
        rows.append(_row("training", format_seconds(timing["train_seconds"]), timing["train_seconds"]))
    if isinstance(timing.get("wall_seconds"), (int, float)):
        rows.append(_row("wall clock (with validation and saving)", format_seconds(timing["wall_seconds"]),
                         timing["wall_seconds"]))
    epochs = [s for s in timing.get("epoch_seconds") or () if isinstance(s, (int, float))]
    if epochs:
        mean, low, high = format_seconds(float(np.mean(epochs)), minutes=False), min(epochs), max(epochs)
        rows.append(_row("per epoch", f"{mean} mean over {len(epochs)} epochs "
                         f"({format_seconds(low, '', False)}–{format_seconds(high, minutes=False)})", low))
    return rows


def _metrics_section(run: Run) -> str:
    """Test metrics (formatted) and, apart because they depend on the machine, the timings."""
    metrics = [_row(k, format_metric(k, v), v) for k, v in _flatten(run.metrics)]
    text = _table(metrics) if metrics else f'<p class="note">no {METRICS_FILE} in the run folder</p>'
    timing = _timing_rows(run.timing)
    text += "<h3>Training time (on the machine that trained it)</h3>"
    return text + (_table(timing) if timing else f'<p class="note">no {TIMING_FILE} in the run folder</p>')


def _calibration_table(run: Run) -> str:
    """``calibration.json`` (the temperature fitted on the validation split, ECE and NLL before
    and after), or a note that the run has none."""
    fitted = fileio.read_json(run.files.calibration_file)
    if not fitted:
        return (f'<p class="note">no {run.files.calibration_file.name} in the run folder: '
                f'probabilities are the raw softmax</p>')
    return "<h3>Temperature scaling</h3>" + _table([_row(k, format_metric(k, v), v) for k, v in _flatten(fitted)])


def _config_section(run: Run) -> str:
    """Every setting of config.json; unset ones (the default applies) shown as "– (default)"."""
    return _table([_row(k, _config_text(v), v) for k, v in _flatten(run.config)])


def _img(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _per_class_table(matrix: np.ndarray, class_names: Sequence[str]) -> str:
    """Precision, recall and count per class from a confusion matrix ("–": undefined)."""
    precision, recall = precision_recall(matrix)
    head = "<tr><th>class</th><th>precision</th><th>recall</th><th>test images</th></tr>"
    body = "".join(f"<tr><th>{html.escape(name)}</th><td class=\"num\">{format_rate(p)}</td>"
                   f"<td class=\"num\">{format_rate(r)}</td><td class=\"num\">{int(n):,}</td></tr>"
                   for name, p, r, n in zip(class_names, precision, recall, matrix.sum(axis=1)))
    return f"<table>{head}{body}</table>"


def write_report(run: Run, out: str | Path | None = None, index: int = 0, log: Log = _quiet) -> Path:
    """Write one self-contained HTML page (PNGs embedded as base64) about ``run``: metrics and
    timings, config, confusion matrix, reliability, curves, samples, errors, filters, feature
    maps of test image ``index``, weights. Returns its path (default ``RUN/report.html``)."""
    out = Path(out) if out else run.files.report_file
    _loaded(run, log, "test")
    run.check_index(index)

    def picture(kind: str, alt: str, optional: bool = False, **options: Any) -> str:
        try:
            return _img(plots.png_bytes(figure(run, kind, log=log, **options)), alt)
        except MnistlabError as exc:
            if not optional:
                raise
            return f'<p class="note">{html.escape(str(exc))}</p>'

    sections: list[tuple[str, str, str]] = [  # (anchor, heading, html)
        ("metrics", "Metrics", _metrics_section(run)),
        ("config", "Configuration", _config_section(run)),
        ("confusion", "Confusion matrix", picture("confusion", "confusion matrix")
         + _per_class_table(_confusion_matrix(run, log), run.class_names)),
        ("reliability", "Calibration", picture("reliability", "reliability diagram") + _calibration_table(run)),
        ("curves", "Training curves", picture("curves", "training curves", optional=True)),
        ("samples", "Test images and predictions", picture("samples", "test images")),
        ("errors", "Misclassified test images", picture("errors", "errors", optional=True)),
    ]
    _loaded(run, log, "model")
    numbers = range(1, len(run.conv_layers()) + 1)
    if numbers:
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
    log(f"writing {out}…")
    fileio.write_text(out, page)
    return out
