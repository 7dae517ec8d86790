"""A run folder's pictures and report: load its model and test data, draw, write ``report.html``.

``Run`` loads what a picture needs only when first asked (model, test split, predictions);
``draw`` makes one picture by name (``mnistlab plot``); ``write_report`` puts them all, with the
config and metrics, in one self-contained HTML page (``mnistlab report``).

Conv layers are numbered as the course does: layer 1 is the model's first Conv2D, layer 2 its
second. A layer's feature maps are the output of its *block*: the Conv2D and the batch-norm,
activation and pooling layers right after it, so S4's layer 1 gives 16 maps at 14 x 14.
"""

from __future__ import annotations

import base64
import csv
import dataclasses
import datetime
import html
import json
import tempfile
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from mnistlab import __version__, fileio, plots
from mnistlab.data import IMAGE_SIDE
from mnistlab.errors import MnistlabError

CONFIG_FILE = "config.json"
MODEL_FILE = "model.keras"
METRICS_FILE = "metrics.json"
HISTORY_FILE = "history.csv"
EVALUATION_FILE = "evaluation.json"
PLOTS_DIR = "plots"  # inside the run folder: default home of `mnistlab plot` output
REPORT_FILE = "report.html"
PREDICT_BATCH = 500  # images per model.predict batch


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


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of logits ``(N, C)``, stable for large values."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=1, keepdims=True)


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts ``(C, C)``: row = true class, column = predicted class."""
    import tensorflow as tf

    return tf.math.confusion_matrix(labels, predictions, num_classes=num_classes).numpy().astype(np.int64)


def _read_json(path: Path, required: bool = False) -> dict | None:
    if not path.is_file():
        if required:
            raise MnistlabError(f"{path}: missing; expected a run folder written by `mnistlab train`")
        return None
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MnistlabError(f"{path}: cannot read JSON ({exc})") from None
    if not isinstance(value, dict):
        raise MnistlabError(f"{path}: expected a JSON object, found {type(value).__name__}")
    return value


class Run:
    """A run folder (``config.json``, ``model.keras``, ``metrics.json``, ``history.csv``, ...).

    The model, the test split (from the config's ``data`` section) and the predictions load on
    first use. ``test`` and ``class_names`` may be given instead, e.g. by a test.
    """

    def __init__(self, folder: str | Path, test: Any = None, class_names: Sequence[str] | None = None) -> None:
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise MnistlabError(f"{self.folder}: no such run folder; expected one written by `mnistlab train`")
        self.config: dict = _read_json(self.folder / CONFIG_FILE, required=True)  # type: ignore[assignment]
        if test is not None:
            self.__dict__["test"] = test  # fills the cached_property
        if class_names is not None:
            self.__dict__["class_names"] = tuple(class_names)

    @property
    def name(self) -> str:
        return str(self.config.get("model", self.folder.name))

    # ------------------------------------------------------------------ loading
    def _data_config(self):
        from mnistlab.data import DataConfig

        fields = self.config.get("data")
        if not isinstance(fields, dict):
            raise MnistlabError(f"{self.folder / CONFIG_FILE}: no \"data\" object; expected the run's data settings")
        known = {f.name for f in dataclasses.fields(DataConfig)}
        return DataConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in fields.items() if k in known})

    @cached_property
    def test(self):
        """The test split the run was trained for: images ``(N, 28, 28, 1)``, labels ``(N,)``."""
        from mnistlab import data

        dataset = data.load(self._data_config())
        self.__dict__.setdefault("class_names", dataset.facts.class_names)
        return dataset.test

    @cached_property
    def class_names(self) -> tuple[str, ...]:
        from mnistlab import data

        return data.facts_for(self._data_config().dataset).class_names

    @cached_property
    def model(self):
        """``model.keras``, loaded with Keras' ``safe_mode``."""
        from mnistlab import evaluate

        return evaluate.load_model(self.folder)

    @cached_property
    def metrics(self) -> dict:
        return _read_json(self.folder / METRICS_FILE) or {}

    @cached_property
    def evaluation(self) -> dict | None:
        """``evaluation.json`` if it is about the test split and newer than the model, else None."""
        path, model = self.folder / EVALUATION_FILE, self.folder / MODEL_FILE
        value = _read_json(path)
        if not value or value.get("split") != "test":
            return None
        if model.is_file() and path.stat().st_mtime < model.stat().st_mtime:
            return None  # written for an earlier model in this folder
        return value

    def history(self) -> list[dict[str, str]]:
        """Rows of ``history.csv`` (one per epoch), keyed by ``plots.HISTORY_COLUMNS``."""
        path = self.folder / HISTORY_FILE
        if not path.is_file():
            raise MnistlabError(f"{path}: missing; curves need the per-epoch history `mnistlab train` writes")
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
            missing = [c for c in ("epoch", "train_loss", "train_accuracy") if c not in (reader.fieldnames or ())]
        if missing:
            raise MnistlabError(f"{path}: no column {', '.join(missing)}; expected {','.join(plots.HISTORY_COLUMNS)}")
        if not rows:
            raise MnistlabError(f"{path}: no epochs; expected one row per epoch")
        return rows

    # ------------------------------------------------------------------ predictions
    def predict(self, images: np.ndarray) -> np.ndarray:
        """Class probabilities ``(N, 10)`` (softmax of the model's logits)."""
        return softmax(np.asarray(self.model.predict(images, batch_size=PREDICT_BATCH, verbose=0), np.float64))

    @cached_property
    def probabilities(self) -> np.ndarray:
        """Class probabilities for every test image ``(N, 10)``."""
        return self.predict(self.test.images)

    def probabilities_at(self, indices: np.ndarray) -> np.ndarray:
        """Probabilities of some test images, predicting only those unless all are known."""
        if "probabilities" in self.__dict__:
            return self.probabilities[indices]
        return self.predict(self.test.images[indices])

    def confusion(self) -> np.ndarray:
        """Test confusion matrix: from ``evaluation.json`` when current, else computed."""
        n = len(self.class_names)
        if self.evaluation and "confusion_matrix" in self.evaluation:
            matrix = np.asarray(self.evaluation["confusion_matrix"], dtype=np.int64)
            if matrix.shape == (n, n):
                return matrix
        return confusion_matrix(self.test.labels, self.probabilities.argmax(1), n)

    def check_index(self, index: int) -> None:
        n = len(self.test)
        if not 0 <= index < n:
            raise MnistlabError(f"--index {index}: expected 0..{n - 1} for the {n} test images")

    # ------------------------------------------------------------------ layers
    def conv_layers(self) -> list:
        import keras

        return [layer for layer in self.model.layers if isinstance(layer, keras.layers.Conv2D)]

    def conv_layer(self, spec: str | int) -> tuple[int, Any]:
        """Resolve ``--layer``: a number 1..K over the Conv2D layers, or a layer name."""
        convs = self.conv_layers()
        kinds = ", ".join(f"{layer.name} ({type(layer).__name__})" for layer in self.model.layers)
        if not convs:
            raise MnistlabError(f"--layer: model {self.name!r} has no Conv2D layer ({kinds}); "
                                f"filters and feature-maps need a conv model")
        valid = "; ".join(f"{n} = {_describe_conv(layer)}" for n, layer in enumerate(convs, 1))
        text = str(spec).strip()
        if text.lstrip("-").isdigit():
            number = int(text)
            if 1 <= number <= len(convs):
                return number, convs[number - 1]
            raise MnistlabError(f"--layer {text}: not a conv layer number; expected 1..{len(convs)}, "
                                f"counting the Conv2D layers in order: {valid}")
        for layer in self.model.layers:
            if layer.name == text:
                if layer in convs:
                    return convs.index(layer) + 1, layer
                raise MnistlabError(f"--layer {text}: a {type(layer).__name__} layer, not a conv layer; "
                                    f"expected one of {valid}")
        raise MnistlabError(f"--layer {text!r}: no such layer; expected a conv layer number or name: {valid}")

    def conv_block(self, conv) -> list:
        """``conv`` and the batch-norm / activation / pooling layers right after it."""
        import keras

        follow = (keras.layers.BatchNormalization, keras.layers.Activation, keras.layers.ReLU,
                  keras.layers.LeakyReLU, keras.layers.ELU, keras.layers.PReLU,
                  keras.layers.MaxPooling2D, keras.layers.AveragePooling2D)
        layers = list(self.model.layers)
        block = [conv]
        for layer in layers[layers.index(conv) + 1:]:
            if not isinstance(layer, follow):
                break
            block.append(layer)
        return block

    def feature_maps(self, conv, index: int) -> tuple[list, np.ndarray]:
        """The block of ``conv`` and its output ``(H, W, C)`` for test image ``index``."""
        import keras

        block = self.conv_block(conv)
        try:
            inputs = self.model.inputs
            probe = keras.Model(inputs[0] if len(inputs) == 1 else inputs, block[-1].output)
        except (AttributeError, ValueError, TypeError) as exc:
            raise MnistlabError(f"model {self.name!r}: cannot read its layer outputs ({exc}); "
                                f"feature maps need a Sequential or functional model") from None
        out = probe(self.test.images[index:index + 1], training=False)
        return block, keras.ops.convert_to_numpy(out)[0]

    def softmax_kernel(self) -> np.ndarray | None:
        """The ``(784, 10)`` kernel if the model is softmax regression (one Dense layer), else None."""
        import keras

        weighted = [layer for layer in self.model.layers if layer.weights]
        if len(weighted) == 1 and isinstance(weighted[0], keras.layers.Dense):
            kernel = keras.ops.convert_to_numpy(weighted[0].kernel)
            if kernel.shape == (IMAGE_SIDE * IMAGE_SIDE, len(self.class_names)):
                return kernel
        return None

    def kernels(self) -> list[tuple[str, np.ndarray]]:
        """``(label, kernel)`` for every layer with a kernel (weights of rank 2 or more)."""
        import keras

        return [(f"{layer.name} ({type(layer).__name__})", keras.ops.convert_to_numpy(w))
                for layer in self.model.layers for w in layer.weights if len(w.shape) >= 2]


def _describe_conv(layer) -> str:
    kh, kw = layer.kernel_size
    return f"{layer.name} (Conv2D {kh}x{kw}, {layer.filters} filters)"


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
    return Path(out) if out else run.folder / PLOTS_DIR / default_name


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
    diag = np.diag(matrix).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision, recall = diag / matrix.sum(axis=0), diag / matrix.sum(axis=1)
    head = "<tr><th>class</th><th>precision</th><th>recall</th><th>test images</th></tr>"
    def number(x: float) -> str:  # a class never predicted has no precision
        return "–" if np.isnan(x) else f"{x:.4f}"

    body = "".join(f"<tr><th>{html.escape(name)}</th><td class=\"num\">{number(p)}</td>"
                   f"<td class=\"num\">{number(r)}</td><td class=\"num\">{int(n)}</td></tr>"
                   for name, p, r, n in zip(class_names, precision, recall, matrix.sum(axis=1)))
    return f"<table>{head}{body}</table>"


def write_report(run: Run, out: str | Path | None = None, index: int = 0) -> Path:
    """Write one self-contained HTML page (PNGs embedded as base64) about ``run``: config,
    metrics, confusion matrix, curves, samples, errors, filters, feature maps of test image
    ``index``, weights. Returns its path (default ``RUN/report.html``)."""
    out = Path(out) if out else run.folder / REPORT_FILE
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
