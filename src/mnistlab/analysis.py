"""A finished run opened for looking inside: what a picture or the report needs, loaded when first asked.

``Run`` reads its run folder through ``runs.RunFolder`` and loads the model, the test split (from
the config's ``data`` section) and the predictions on first use. It knows the model's conv layers
as the course numbers them: layer 1 is the first Conv2D. A layer's feature maps are the output of
its *block*: the Conv2D and the batch-norm, activation and pooling layers right after it, so S4's
layer 1 gives 16 maps at 14 x 14.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from mnistlab.config import from_json
from mnistlab.errors import MnistlabError
from mnistlab.evaluate import confusion_matrix
from mnistlab.inference import INPUT_SHAPE, predict_logits, softmax
from mnistlab.runs import RunFolder, load_model


class Run:
    """A run folder (``config.json``, ``model.keras``, ``metrics.json``, ``history.csv``, ...).

    The model, the test split (from the config's ``data`` section) and the predictions load on
    first use. ``test`` and ``class_names`` may be given instead, e.g. by a test.
    """

    def __init__(self, folder: str | Path, test: Any = None, class_names: Sequence[str] | None = None) -> None:
        self.files = RunFolder(Path(folder))
        self.folder = self.files.path
        self.config = self.files.read_config()
        if test is not None:
            self.__dict__["test"] = test  # fills the cached_property
        if class_names is not None:
            self.__dict__["class_names"] = tuple(class_names)

    def loaded(self, part: str) -> bool:
        """Whether ``part`` (test, model, probabilities, ...) is loaded already (cached properties
        keep their value in the instance's ``__dict__``)."""
        return part in self.__dict__

    @property
    def name(self) -> str:
        return str(self.config.get("model", self.folder.name))

    # ------------------------------------------------------------------ loading
    def _data_config(self):
        from mnistlab.data import DataConfig

        fields = self.config.get("data")
        if not isinstance(fields, dict):
            raise MnistlabError(f"{self.files.config_file}: no \"data\" object; expected the run's data settings")
        return from_json(DataConfig, fields)

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
        return load_model(self.folder)

    @property
    def network(self):
        """The network inside the model, whose layers the plots look into (``models.network_of``)."""
        from mnistlab.models import network_of

        return network_of(self.model)

    @cached_property
    def metrics(self) -> dict:
        return self.files.read_metrics()

    @cached_property
    def timing(self) -> dict:
        return self.files.read_timing()

    @cached_property
    def evaluation(self) -> dict | None:
        """``evaluation-test.json`` if it was made with the current model, else None."""
        return self.files.read_evaluation("test")

    def history(self) -> list[dict[str, float]]:
        """Rows of ``history.csv`` (one per epoch); a clear error when there are none."""
        rows = self.files.read_history()
        if not rows:
            raise MnistlabError(f"{self.files.history_file}: missing or empty; curves need the per-epoch "
                                f"history `mnistlab train` writes")
        return rows

    # ------------------------------------------------------------------ predictions
    @cached_property
    def temperature(self) -> float:
        """The run's calibration temperature (1.0 for a run without one)."""
        return self.files.temperature()

    def predict(self, images: np.ndarray) -> np.ndarray:
        """Calibrated class probabilities ``(N, 10)``: softmax of the logits over the temperature."""
        return softmax(predict_logits(self.model, images) / np.float32(self.temperature))

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

        return [layer for layer in self.network.layers if isinstance(layer, keras.layers.Conv2D)]

    def conv_layer(self, spec: str | int) -> tuple[int, Any]:
        """Resolve ``--layer``: a number 1..K over the Conv2D layers, or a layer name."""
        convs = self.conv_layers()
        kinds = ", ".join(f"{layer.name} ({type(layer).__name__})" for layer in self.network.layers)
        if not convs:
            raise MnistlabError(f"--layer: model {self.name!r} has no Conv2D layer ({kinds}); "
                                f"filters and feature-maps need a conv model")
        valid = "; ".join(f"{n} = {describe_conv(layer)}" for n, layer in enumerate(convs, 1))
        text = str(spec).strip()
        if text.lstrip("-").isdigit():
            number = int(text)
            if 1 <= number <= len(convs):
                return number, convs[number - 1]
            raise MnistlabError(f"--layer {text}: not a conv layer number; expected 1..{len(convs)}, "
                                f"counting the Conv2D layers in order: {valid}")
        for layer in self.network.layers:
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
        layers = list(self.network.layers)
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
            inputs = self.network.inputs
            probe = keras.Model(inputs[0] if len(inputs) == 1 else inputs, block[-1].output)
        except (AttributeError, ValueError, TypeError) as exc:
            raise MnistlabError(f"model {self.name!r}: cannot read its layer outputs ({exc}); "
                                f"feature maps need a Sequential or functional model") from None
        out = probe(self.test.images[index:index + 1], training=False)
        return block, keras.ops.convert_to_numpy(out)[0]

    def softmax_kernel(self) -> np.ndarray | None:
        """The ``(784, 10)`` kernel if the model is softmax regression (one Dense layer), else None."""
        import keras

        weighted = [layer for layer in self.network.layers if layer.weights]
        if len(weighted) == 1 and isinstance(weighted[0], keras.layers.Dense):
            kernel = keras.ops.convert_to_numpy(weighted[0].kernel)
            if kernel.shape == (INPUT_SHAPE[0] * INPUT_SHAPE[1], len(self.class_names)):
                return kernel
        return None

    def kernels(self) -> list[tuple[str, np.ndarray]]:
        """``(label, kernel)`` for every layer with a kernel (weights of rank 2 or more)."""
        import keras

        return [(f"{layer.name} ({type(layer).__name__})", keras.ops.convert_to_numpy(w))
                for layer in self.network.layers for w in layer.weights if len(w.shape) >= 2]


def describe_conv(layer) -> str:
    kh, kw = layer.kernel_size
    return f"{layer.name} (Conv2D {kh}x{kw}, {layer.filters} filters)"
