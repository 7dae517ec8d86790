"""mnistlab: handwritten-digit recognition on MNIST-format data with TensorFlow 2 / Keras 3."""

from mnistlab import runtime as _runtime
from mnistlab.errors import MnistlabError

_runtime.prepare_environment()  # before anything imports TensorFlow: oneDNN on every CPU (see runtime.py)

__version__ = "0.1.0"
__all__ = ["MnistlabError", "__version__"]
