"""mnistlab: handwritten-digit recognition on MNIST-format data with TensorFlow 2 / Keras 3."""

from mnistlab.errors import MnistlabError

__version__ = "0.1.0"
__all__ = ["MnistlabError", "__version__"]
