"""mnistlab: handwritten-digit recognition on MNIST-format data with TensorFlow 2 / Keras 3.

The course in a few lines (each function has a docstring with an example; the CLI calls them)::

    import mnistlab
    data = mnistlab.load_data("mnist")                     # .train / .validation / .test, next_batch(100)
    mnistlab.model_names()                                 # the registry: softmax, mlp, ..., cnn, fast, best
    result = mnistlab.train_model("cnn-hvass", data, "runs/hvass", epochs=2)
    mnistlab.evaluate_run("runs/hvass").accuracy
    mnistlab.plot("runs/hvass", "confusion")               # a matplotlib Figure, inline in Jupyter
    mnistlab.predict_images("runs/hvass", ["seven.png"])   # digit, calibrated probability, unsure?

Also: ``build_model``, ``preprocess_image``, ``evaluate_robustness``, ``load_predictor``,
``export_model``, ``write_report``. Importing mnistlab
loads no TensorFlow; it sets TensorFlow's start-up variables first (oneDNN on every CPU, see
``mnistlab.runtime``).
"""

from mnistlab import runtime as _runtime
from mnistlab.errors import MnistlabError

_runtime.prepare_environment()  # before anything imports TensorFlow: oneDNN on every CPU (see runtime.py)

from mnistlab.api import (build_model, evaluate_robustness, evaluate_run, export_model, load_data,  # noqa: E402
                          load_predictor, model_names, plot, predict_images, preprocess_image, train_model,
                          write_report)

__version__ = "0.1.0"
__all__ = ["MnistlabError", "__version__", "build_model", "evaluate_robustness", "evaluate_run", "export_model",
           "load_data", "load_predictor", "model_names", "plot", "predict_images", "preprocess_image", "train_model",
           "write_report"]
