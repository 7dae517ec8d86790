"""The Python API, a few lines per step of the course, re-exported by ``import mnistlab``.

    import mnistlab
    data = mnistlab.load_data("mnist")                        # train / validation / test
    result = mnistlab.train_model("cnn-hvass", data, "runs/hvass", epochs=2)
    print(mnistlab.evaluate_run("runs/hvass").accuracy)
    mnistlab.plot("runs/hvass", "confusion")                  # a matplotlib Figure (inline in Jupyter)
    mnistlab.predict_images("runs/hvass", ["my_seven.png"])

Each function is what a CLI command calls (``mnistlab train``, ``evaluate``, ``plot``, ``predict``),
so the notebooks and the command line give the same numbers. Nothing heavy is imported until a
function is called (``import mnistlab`` stays quick).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Sequence

from mnistlab.errors import MnistlabError

__all__ = ["load_data", "model_names", "build_model", "train_model", "evaluate_run", "plot", "predict_images",
           "preprocess_image", "evaluate_robustness", "load_predictor", "export_model", "write_report"]


def load_data(dataset: str = "mnist", data_dir: str | None = None, validation_size: int = 5000,
              one_hot: bool = False, flatten: bool = False, download: bool = True) -> Any:
    """The course's splits (55,000 / 5,000 / 10,000 for MNIST), each with ``.images``, ``.labels``,
    ``.num_examples`` and ``.next_batch(n)`` like TF1's ``input_data.read_data_sets``.

    >>> data = mnistlab.load_data("mnist", data_dir="MNIST_data")  # the course's folder works as-is
    """
    from mnistlab import data

    config = data.DataConfig(dataset=dataset, data_dir=data_dir, validation_size=validation_size, download=download)
    return data.load(config, flatten=flatten, one_hot_labels=one_hot)


def model_names() -> dict[str, str]:
    """Registry model -> one-line description (``mnistlab models`` prints more).

    >>> list(mnistlab.model_names())[:3]
    ['softmax', 'mlp', 'mlp-sigmoid']
    """
    from mnistlab import models

    return {name: spec.description for name, spec in models.MODELS.items()}


def build_model(name: str, **arch: Any) -> Any:
    """The untrained Keras model ``name`` with architecture overrides (the course's exercises).

    >>> mnistlab.build_model("cnn-hvass", filters=(16, 36, 64)).summary()
    """
    from mnistlab import models

    _quiet_tensorflow()
    return models.build(name, **arch)


def train_model(model: str, data: Any, out: str | os.PathLike, *, resume: bool = False, log: Any = print,
                **options: Any) -> Any:
    """Train registry ``model`` on ``data`` into the run folder ``out``; ``options`` are any recipe
    field (``epochs``, ``learning_rate``, ``optimizer``, ``augment`` ...), architecture option
    (``filters``, ``dropout`` ...) or training setting (``seed``, ``course``, ``progress`` ...).
    Returns the result: ``.history`` (one dict per epoch), ``.metrics``, ``.timing``.

    >>> result = mnistlab.train_model("softmax", data, "runs/softmax", epochs=5, learning_rate=0.5, optimizer="sgd")
    """
    from mnistlab import models, train

    _quiet_tensorflow()
    recipe_fields = {f.name for f in dataclasses.fields(models.Recipe)}
    config_fields = {f.name for f in dataclasses.fields(train.TrainConfig)}
    arch_fields = set(models.builder_parameters())
    unknown = sorted(set(options) - recipe_fields - config_fields - arch_fields)
    if unknown:
        raise MnistlabError(f"train_model: unknown option {', '.join(unknown)}; expected recipe fields "
                            f"({', '.join(sorted(recipe_fields))}), architecture options or training settings")
    pick = lambda names: {k: v for k, v in options.items() if k in names}  # noqa: E731
    config = train.TrainConfig(**{"progress": False, **pick(config_fields)})
    return train.train(model, data, out, config, pick(recipe_fields), pick(arch_fields), resume=resume, log=log)


def evaluate_run(run: str | os.PathLike, data: Any = None, split: str = "test") -> Any:
    """A trained run on one split: ``.accuracy``, ``.loss``, ``.confusion``, ``.probabilities``
    (calibrated), ``.ece``, ``.misclassified()``, ``.precision_recall()``. ``data`` defaults to
    the data the run was trained for.

    >>> mnistlab.evaluate_run("runs/hvass").accuracy
    """
    from mnistlab import data as data_module
    from mnistlab import evaluate, runs
    from mnistlab.config import from_json

    _quiet_tensorflow()
    folder = runs.RunFolder(Path(run))
    if data is None:
        data = data_module.load(from_json(data_module.DataConfig, folder.read_config()["data"]))
    return evaluate.evaluate_split(runs.load_model(run), data.split(split), temperature=folder.temperature())


def plot(run: str | os.PathLike, kind: str, **options: Any) -> Any:
    """Picture ``kind`` of a run (samples, errors, confusion, curves, filters, feature-maps, weights,
    reliability) as a matplotlib Figure; ``options``: ``index``, ``count``, ``layer``, ``channel``.

    >>> mnistlab.plot("runs/hvass", "filters", layer=1)
    """
    from mnistlab import analysis, report

    _quiet_tensorflow()
    return report.figure(analysis.Run(run), kind, **options)


def predict_images(run: str | os.PathLike, images: Sequence[Any], top: int = 3) -> list[dict[str, Any]]:
    """Read the digit in each picture: file paths, their bytes, or grey arrays ``(H, W)`` (any size,
    either polarity). One dict per picture: ``digit``, ``probability`` (calibrated), ``top``,
    ``unsure``, or ``error``.

    >>> mnistlab.predict_images("runs/cnn", ["seven.png"])[0]["digit"]
    """
    from mnistlab import predict, runs

    return predict.predict_files(runs.load_predictor(run), images, top)


def load_predictor(path: str | os.PathLike) -> Any:
    """A run folder, ``.keras``, SavedModel or ``.tflite`` as one ``Predictor``: ``.logits(images)``,
    ``.probabilities(images)`` for ``(N, 28, 28, 1)`` float32 in [0, 1]."""
    from mnistlab import runs

    return runs.load_predictor(path)


def export_model(run: str | os.PathLike, fmt: str, out: str | os.PathLike, **options: Any) -> Path:
    """Export a run as ``savedmodel`` or ``tflite`` into folder ``out`` (see ``mnistlab export --help``)."""
    from mnistlab import export

    _quiet_tensorflow()
    return export.export(run, fmt, out, **options)


def write_report(run: str | os.PathLike, out: str | os.PathLike | None = None) -> Path:
    """The run's self-contained HTML report (default ``RUN/report.html``)."""
    from mnistlab import analysis, report

    _quiet_tensorflow()
    return report.write_report(analysis.Run(run), out)


def preprocess_image(picture: Any) -> Any:
    """The 28 x 28 input the model sees for a picture (a path, its bytes, or a grey array):
    MNIST's own recipe (light ink on black, 20 px box, centre of mass in the middle).

    >>> mnistlab.preprocess_image("my_seven.jpg").shape
    (28, 28, 1)
    """
    import numpy as np

    from mnistlab import preprocess

    if isinstance(picture, np.ndarray):
        return preprocess.to_mnist(np.asarray(picture, np.float32))
    return preprocess.preprocess(picture)


def evaluate_robustness(runs: Sequence[str | os.PathLike], sets: Sequence[str] = (), n: int = 2000,
                        levels: Sequence[str] = (), held_out: bool = True, data_dir: str | None = None) -> Any:
    """Accuracy of each run on the shift sets (stroke width, resolution, slant, drawn, photos, fonts,
    other writers): ``{run: [row, ...]}``; ``mnistlab.robustness.table(result)`` prints it.

    >>> mnistlab.evaluate_robustness(["runs/cnn"], sets=["clean", "thick-moderate"], n=500)
    """
    from mnistlab import robustness
    from mnistlab.data import DataConfig

    config = robustness.RobustConfig(n=n, sets=tuple(sets), levels=tuple(levels), held_out=held_out)
    return robustness.run([str(r) for r in runs], config, DataConfig(data_dir=data_dir))


def _quiet_tensorflow() -> None:
    """Load TensorFlow with its C++ start-up lines muted (they would fill a notebook's output)."""
    from mnistlab import runtime

    runtime.import_tensorflow_quietly()
