"""The model registry: name -> a small Keras builder, its architecture defaults, and two recipes.

Every model maps ``(None, 28, 28, 1)`` float32 in [0, 1] to ``(None, 10)`` *logits*; the loss
applies a numerically stable softmax cross-entropy (``from_logits=True``), so the NaN that S1
gets from ``log(softmax)`` cannot happen. Each entry carries the course's training settings
(``--course``, ``zoo``) and mnistlab's own, and the accuracy the course reported.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from mnistlab.config import FRACTION, NON_NEGATIVE, Check, all_positive, check_value, option, required
from mnistlab.errors import MnistlabError

if TYPE_CHECKING:  # Keras is imported inside the builders: listing models or parsing flags stays light
    import keras

INPUT_SHAPE = (28, 28, 1)
NUM_CLASSES = 10
ACTIVATIONS = ("relu", "sigmoid", "tanh", "elu", "gelu")
POOLINGS = ("max", "avg", "stride", "none")  # stride: stride-2 convolution instead of pooling
INITS = ("glorot_uniform", "he_normal", "random_normal", "truncated_normal", "zeros")
OPTIMIZERS = ("sgd", "momentum", "adam", "adamw", "rmsprop", "adadelta")
AUGMENTATIONS = ("none", "affine", "robust")  # augment.POLICIES, by name
# Keras mixed-precision policies, and "auto": mixed_bfloat16 on a CPU with native BF16 (AVX512_BF16 or
# AMX), float32 anywhere else (emulated bfloat16 is many times slower), resolved by runtime.resolve_precision.
PRECISIONS = ("float32", "auto", "mixed_bfloat16", "mixed_float16")
SCHEDULES = ("constant", "cosine", "onecycle", "step")


def _initializer(name: str, seed: int | None = None) -> "keras.initializers.Initializer":
    import keras

    """Keras initializer by name; ``random_normal`` is TF1's N(0, 1), as S1/S2 used (it hurts)."""
    if name == "random_normal":
        return keras.initializers.RandomNormal(stddev=1.0, seed=seed)
    if name == "truncated_normal":  # the TF1 tutorials' weight_variable: stddev 0.1
        return keras.initializers.TruncatedNormal(stddev=0.1, seed=seed)
    if name not in INITS:
        raise MnistlabError(f"--init {name!r}: expected one of {', '.join(INITS)}")
    return keras.initializers.get(name)


def _check_choice(flag: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise MnistlabError(f"--{flag} {value!r}: expected one of {', '.join(choices)}")


def _dense_head(units: tuple[int, ...], activation: str, dropout: float, init: str) -> list[Any]:
    """[Dense(u) -> activation -> dropout]* -> Dense(10) logits: the end of every model."""
    from keras import layers

    head: list[Any] = []
    for width in units:
        head.append(layers.Dense(width, activation=activation, kernel_initializer=_initializer(init)))
        if dropout:
            head.append(layers.Dropout(dropout))
    # float32 logits whatever the precision policy: the softmax cross-entropy stays exact under mixed precision
    return head + [layers.Dense(NUM_CLASSES, kernel_initializer=_initializer(init), name="logits", dtype="float32")]


def mlp(hidden: tuple[int, ...] = (256,), activation: str = "relu", input_dropout: float = 0.0,
        dropout: float = 0.0, init: str = "glorot_uniform") -> "keras.Model":
    """Flatten -> [Dense(hidden) -> activation -> dropout]* -> Dense(10). ``hidden=()`` is softmax regression."""
    import keras
    from keras import layers

    _check_choice("activation", activation, ACTIVATIONS)
    stack: list[Any] = [keras.Input(INPUT_SHAPE), layers.Flatten()]
    if input_dropout:
        stack.append(layers.Dropout(input_dropout))
    return keras.Sequential(stack + _dense_head(hidden, activation, dropout, init))


def convnet(filters: tuple[int, ...] = (32, 64), kernel_size: int = 5, fc_units: tuple[int, ...] = (1024,),
            activation: str = "relu", pooling: str = "max", act_after_pool: bool = False,
            conv_dropout: float = 0.0, dropout: float = 0.0, batchnorm: bool = False,
            init: str = "glorot_uniform", convs: tuple[int, ...] = (1,), first_stride: int = 1,
            shift_average: bool = False, whitened_stem: bool = False) -> "keras.Model":
    """[[Conv(k x k, f, same) -> act]*c -> 2x2 pool -> dropout]* -> Flatten -> [Dense -> act -> dropout]* -> Dense(10).

    One stage per entry of ``filters``; ``convs`` gives each stage's number of convolutions (one
    value applies to every stage), VGG-style. ``act_after_pool`` pools before the activation
    (S4's order; identical for relu + max); ``pooling="stride"`` makes each stage's last
    convolution stride 2 instead of pooling; ``"none"`` keeps 28 x 28. ``first_stride=2``: the
    very first convolution has stride 2 and its stage no pooling (the cheapest way down to 14 x 14).
    ``shift_average``: answer with ``with_shift_average`` (test-time augmentation; training is unchanged).
    ``whitened_stem``: the first convolution is fixed, not trained (no bias, ``WHITENED_STEM``): ``train``
    sets its filters from the training images' patches (``whitening_filters``), and with nothing to
    train below it the step skips the second convolution's backward pass to its input.
    """
    _check_choice("activation", activation, ACTIVATIONS)
    _check_choice("pooling", pooling, POOLINGS)
    if len(convs) not in (1, len(filters)) or min(convs, default=0) < 1:
        raise MnistlabError(f"--convs {','.join(map(str, convs))}: expected one count >= 1, or one per "
                            f"stage of --filters ({len(filters)})")
    if whitened_stem:
        check_whitened_stem(filters, kernel_size)
    import keras
    from keras import layers

    stack: list[Any] = [keras.Input(INPUT_SHAPE)]
    for stage, (f, n_convs) in enumerate(zip(filters, convs * len(filters) if len(convs) == 1 else convs)):
        stem = stage == 0 and first_stride > 1  # this stage went down by its first conv's stride
        for i in range(n_convs):
            last = i == n_convs - 1
            fused = not batchnorm and not (act_after_pool and last)  # activation inside Conv2D
            stride = first_stride if stem and i == 0 else 2 if pooling == "stride" and last and not stem else 1
            fixed = whitened_stem and stage == 0 and i == 0  # filters set by train (whiten_stem), never trained
            stack.append(layers.Conv2D(f, kernel_size, strides=stride,
                                       padding="same", activation=activation if fused else None,
                                       use_bias=not (batchnorm or fixed), kernel_initializer=_initializer(init),
                                       trainable=not fixed, name=WHITENED_STEM if fixed else None))
            if batchnorm:
                stack.append(layers.BatchNormalization(momentum=0.9))  # 0.99 lags badly in short runs
            if not fused and not last:
                stack.append(layers.Activation(activation))
        pool = None if stem else {"max": layers.MaxPooling2D, "avg": layers.AveragePooling2D}.get(pooling)
        pool_layers = [pool(2, padding="same")] if pool else []
        act_layers = [] if fused else [layers.Activation(activation)]
        stack += pool_layers + act_layers if act_after_pool else act_layers + pool_layers
        if conv_dropout:
            stack.append(layers.Dropout(conv_dropout))
    stack.append(layers.Flatten())
    network = keras.Sequential(stack + _dense_head(fc_units, activation, dropout, init))
    return with_shift_average(network) if shift_average else network


WHITENED_STEM = "whitened_stem"  # the layer name of a fixed, whitened first convolution
WHITENING_IMAGES, WHITENING_EPS = 5000, 5e-4  # images the patch statistics come from; eigenvalue floor
WHITENING_BLOCK = 250  # images per block of patches: the first call costs 0.04 s, not 0.2-0.3 s (page faults)


def whitening_filters(images: np.ndarray, count: int, size: int = 3, stride: int = 1,
                      eps: float = WHITENING_EPS) -> np.ndarray:
    """``count`` filters ``(size, size, channels, count)`` that whiten the images' ``size`` x ``size``
    patches: the top ``count / 2`` eigenvectors of their (uncentred) second-moment matrix, each
    divided by the square root of its eigenvalue, and their negatives, so that a ReLU after them
    keeps both signs (airbench's whitened first layer). Patches are cut as a "same" convolution with
    ``stride`` cuts them, from the first ``WHITENING_IMAGES`` images; the same images give the same filters."""
    images = images[:WHITENING_IMAGES]
    channels = images.shape[3] if images.ndim == 4 else 1
    moment, count_patches = np.zeros((size * size * channels,) * 2), 0
    for start in range(0, len(images), WHITENING_BLOCK):  # in blocks: a few MB at a time, not ~100 MB at once
        x = np.asarray(images[start:start + WHITENING_BLOCK], np.float64).reshape(-1, *images.shape[1:3], channels)
        pads = [max((-(-side // stride) - 1) * stride + size - side, 0) for side in x.shape[1:3]]
        x = np.pad(x, ((0, 0), (pads[0] // 2, pads[0] - pads[0] // 2), (pads[1] // 2, pads[1] - pads[1] // 2), (0, 0)))
        patches = np.lib.stride_tricks.sliding_window_view(x, (size, size), axis=(1, 2))[:, ::stride, ::stride]
        patches = patches.transpose(0, 1, 2, 4, 5, 3).reshape(-1, size * size * channels)  # (h, w, c) order
        moment += patches.T @ patches
        count_patches += len(patches)
    values, vectors = np.linalg.eigh(moment / count_patches)
    top = np.argsort(values)[::-1][:count // 2]
    scaled = vectors[:, top] / np.sqrt(values[top] + eps)
    return np.concatenate([scaled, -scaled], axis=1).reshape(size, size, channels, count).astype(np.float32)


def check_whitened_stem(filters: tuple[int, ...], kernel_size: int) -> None:
    """A whitened stem's filters are patch directions and their negatives: an even count, at most two
    per pixel of a patch (one-channel images)."""
    if filters[0] % 2 or filters[0] > 2 * kernel_size ** 2:
        raise MnistlabError(f"--whitened-stem with --filters {filters[0]},...: the stem's filters are patch "
                            f"directions and their negatives; expected an even count up to "
                            f"{2 * kernel_size ** 2} for {kernel_size} x {kernel_size} patches")


def whiten_stem(model: "keras.Model", images: np.ndarray) -> bool:
    """Set the filters of ``model``'s whitened stem (if it has one) from ``images``; True if it has."""
    layer = next((la for la in network_of(model).layers if la.name == WHITENED_STEM), None)
    if layer is None:
        return False
    size, stride = layer.kernel_size[0], layer.strides[0]
    layer.kernel.assign(whitening_filters(images, layer.filters, size, stride))
    return True


SHIFTS = ((0, 1), (0, -1), (1, 0), (-1, 0))  # (down, right) pixels: the four one-pixel moves
NETWORK = "network"  # the name of the trained network inside a shift-average model


def with_shift_average(network: "keras.Model") -> "keras.Model":
    """A model answering with ``network``'s logits averaged over the image and its four one-pixel
    shifts (test-time augmentation, as the CIFAR-10 speed records use it: a digit moved by a pixel is
    the same digit, and the average of five views misses fewer). Each shift is a frozen 3 x 3
    depthwise convolution whose kernel has one 1 (zeros enter at the edge, as MNIST's border is
    black), so the model holds built-in layers only and exports like any other. It costs five
    forward passes per image at inference; training trains ``network`` alone (``network_of``)."""
    import keras
    from keras import layers

    inputs = keras.Input(INPUT_SHAPE)
    network.name = NETWORK  # type: ignore[misc]
    views = [inputs]
    for dy, dx in SHIFTS:
        kernel = [[[[1.0 if (i, j) == (1 - dy, 1 - dx) else 0.0]] for j in range(3)] for i in range(3)]
        views.append(layers.DepthwiseConv2D(3, padding="same", use_bias=False, trainable=False,
                                            depthwise_initializer=keras.initializers.Constant(kernel),
                                            name=f"shift_{dy}_{dx}".replace("-", "m"))(inputs))
    return keras.Model(inputs, layers.Average(name="shift_average")([network(view) for view in views]))


def network_of(model: "keras.Model") -> "keras.Model":
    """The network that training trains and that the plots look into: ``model`` itself, or the one
    inside a ``with_shift_average`` model."""
    for layer in getattr(model, "layers", ()):
        if layer.name == NETWORK and hasattr(layer, "layers"):
            return layer
    return model


# Help text, check and choices of each builder option (their types and defaults are the builders').
ARCH_OPTIONS: dict[str, tuple[str, Check | None, tuple[str, ...] | None]] = {
    "hidden": ("MLP hidden layer widths, e.g. 625,625 ('' = none: softmax regression)",
               (all_positive, "positive layer widths, e.g. 256 or 625,625"), None),
    "filters": ("conv filters per stage, e.g. 16,36 (more entries = more stages)",
                (lambda v: 1 <= len(v) <= 8 and all_positive(v) and max(v) <= 4096,
                 "1 to 8 filter counts, each 1 .. 4096, e.g. 16,36"), None),
    "convs": ("convolutions per stage (one value for every stage, or one per --filters entry), e.g. 2 or 1,2,2",
              (lambda v: len(v) >= 1 and all(1 <= c <= 8 for c in v), "counts 1 .. 8, e.g. 2 or 1,2,2"), None),
    "kernel_size": ("conv kernel size, pixels", (lambda v: 1 <= v <= 28, "an integer 1 .. 28"), None),
    "fc_units": ("CNN fully-connected widths, e.g. 128 or 1024,256 ('' = none)",
                 (all_positive, "positive layer widths, e.g. 128 or 1024,256"), None),
    "activation": ("activation", None, ACTIVATIONS),
    "pooling": ("downsampling: max, avg, stride (stride-2 conv) or none", None, POOLINGS),
    "act_after_pool": ("apply the activation after pooling (S4's order)", None, None),
    "dropout": ("dropout rate after hidden/fc layers (1 - keep_prob)", FRACTION, None),
    "input_dropout": ("MLP dropout rate on the input", FRACTION, None),
    "conv_dropout": ("dropout rate after each conv stage", FRACTION, None),
    "batchnorm": ("batch normalisation after each convolution", None, None),
    "init": ("weight initialisation (random_normal = TF1's N(0, 1), shows why it hurts)", None, INITS),
    "first_stride": ("stride of the first convolution; 2 replaces the first stage's pooling",
                     (lambda v: v in (1, 2), "1 or 2"), None),
    "whitened_stem": ("fix the first convolution instead of training it: its filters are the whitened main "
                      "directions of the training images' patches and their negatives (airbench); it saves "
                      "the backward pass below the second convolution", None, None),
    "shift_average": ("answer with the logits averaged over the image and its four 1-pixel shifts (test-time "
                      "augmentation: 5 forward passes per answer; training is unchanged)", None, None),
}


@dataclass(frozen=True)
class Recipe:
    """How to train: optimizer, learning rate and schedule, batch, length, regularisation.

    The one definition of these settings: each registry entry has two (the course's and
    mnistlab's own), and ``mnistlab train`` turns every field into a flag that overrides it."""

    optimizer: str = required("optimizer", choices=OPTIMIZERS)
    learning_rate: float = required("peak learning rate", check=(lambda v: 0 < v < 100, "a positive number below 100"))
    batch_size: int = required("images per step", check=(lambda v: 1 <= v <= 65536, "an integer 1 .. 65536"))
    epochs: int = option(0, "passes over the training split (ignored when --steps > 0)", check=NON_NEGATIVE)
    steps: int = option(0, "optimizer steps, the course's iterations; 0 = use --epochs", check=NON_NEGATIVE)
    schedule: str = option("constant", "learning-rate schedule (step: x gamma each epoch)", choices=SCHEDULES)
    gamma: float = option(0.7, "step schedule: learning-rate factor per epoch (pytorch/examples' StepLR)",
                          check=(lambda v: 0 < v <= 1, "a factor 0 < gamma <= 1"))
    rho: float = option(0.9, "RMSProp decay (TF1's RMSPropOptimizer(lr, 0.9)), or the momentum of 'momentum'",
                        check=FRACTION)
    weight_decay: float = option(0.0, "decoupled weight decay (adamw)", check=(lambda v: 0 <= v < 1, "0 <= value < 1"))
    label_smoothing: float = option(0.0, "label smoothing of the training targets", check=FRACTION)
    augment: str = option("none", "augmentation on the fly: affine (rotation, scale, shift, elastic), robust "
                                  "(also slant, aspect, pen width, low resolution, blur, noise), none",
                          choices=AUGMENTATIONS)
    fonts: float = option(0.0, "add digits set in the training half of the installed fonts (shifts.FONTS), this "
                               "share of the training split (0.1: 5,500 more); the benchmark's font sets are the "
                               "other half; 0 = off", check=FRACTION)
    clean_epochs: int = option(0, "with --augment: train the last N epochs on the images as they are", check=NON_NEGATIVE)
    ema: float = option(0.0, "keep an exponential moving average of the weights with this momentum (e.g. 0.99) "
                             "and end with it; 0 = off", check=FRACTION)
    towers: int = option(1, "split each batch into this many parts, computed side by side, each on cores / towers "
                            "threads (2 cores: one each): the same gradient, summed in another order; models "
                            "without batch norm", check=(lambda v: 1 <= v <= 64, "an integer 1 .. 64"))
    precision: str = option("float32", "compute precision: float32; auto (mixed_bfloat16 on CPUs with AVX512_BF16 "
                                       "or AMX, float32 elsewhere); mixed_bfloat16; mixed_float16 (GPUs). Logits "
                                       "and loss stay float32; the saved model is float32", choices=PRECISIONS)

    def summary(self) -> str:
        """One line: ``adamw 0.004 (onecycle), batch 128, 8 epochs, label smoothing 0.1``."""
        length = f"{self.steps} steps" if self.steps else f"{self.epochs} epoch{'s' if self.epochs != 1 else ''}"
        extras = [f"{name.replace('_', ' ')} {value:g}" for name, value in
                  (("weight_decay", self.weight_decay), ("label_smoothing", self.label_smoothing)) if value]
        if self.ema:
            extras.append(f"weight average {self.ema:g}")
        if self.precision != "float32":
            extras.append(f"precision {self.precision}")
        if self.towers > 1:
            extras.append(f"{self.towers} towers")
        if self.optimizer in ("rmsprop", "momentum"):
            extras.insert(0, f"rho {self.rho:g}")
        if self.schedule == "step":
            extras.insert(0, f"gamma {self.gamma:g}")
        if self.fonts:
            extras.append(f"font digits {self.fonts:g}")
        if self.augment != "none":
            extras.append(f"{self.augment} augmentation" + (f", last {self.clean_epochs} epochs clean"
                                                            if self.clean_epochs else ""))
        return ", ".join([f"{self.optimizer} {self.learning_rate:g} ({self.schedule})", f"batch {self.batch_size}",
                          length, *extras])


@dataclass(frozen=True)
class ModelSpec:
    """One registry entry: a builder with its architecture defaults and its two recipes."""

    builder: Callable[..., "keras.Model"]
    arch: dict[str, Any]  # keyword defaults for the builder
    course: Recipe  # the course's settings (``--course``, ``zoo``)
    default: Recipe  # mnistlab's own settings
    course_accuracy: float | None  # test accuracy the course reported at its settings
    source: str  # where in the course notes it comes from
    description: str = ""
    float32_arch: dict[str, Any] = field(default_factory=dict)  # arch changes where precision resolves to float32
    float32_recipe: dict[str, Any] = field(default_factory=dict)  # recipe changes where it resolves to float32


MODELS: dict[str, ModelSpec] = {
    "softmax": ModelSpec(
        mlp, dict(hidden=()),
        course=Recipe("sgd", 0.01, 50, epochs=150),  # S1: 150 epochs, batch 50, GD 0.01 -> 90.7%
        default=Recipe("adam", 0.002, 128, epochs=30, schedule="cosine"),
        course_accuracy=0.907, source="S0/S1", description="784->10 softmax regression"),
    "mlp": ModelSpec(
        mlp, dict(hidden=(256,)),
        course=Recipe("adam", 0.01, 50, epochs=40),  # S1: 97.2% test
        default=Recipe("adamw", 0.002, 128, epochs=30, schedule="cosine", weight_decay=0.05,
                       label_smoothing=0.1),
        course_accuracy=0.972, source="S1", description="784->256 relu->10"),
    "mlp-sigmoid": ModelSpec(
        mlp, dict(hidden=(625,), activation="sigmoid"),
        course=Recipe("sgd", 0.05, 128, epochs=10),  # S0: 10 epochs -> 90.5%
        default=Recipe("adam", 0.001, 128, epochs=20, schedule="cosine"),
        course_accuracy=0.905, source="S0", description="784->625 sigmoid->10"),
    "mlp2": ModelSpec(
        mlp, dict(hidden=(625, 625), input_dropout=0.2, dropout=0.5),  # keep 0.8 input / 0.5 hidden
        course=Recipe("rmsprop", 0.001, 128, epochs=10, rho=0.9),  # S0: 97.9%
        default=Recipe("adamw", 0.001, 128, epochs=30, schedule="cosine", weight_decay=0.05),
        course_accuracy=0.979, source="S0", description="784->625->625->10, dropout"),
    "cnn-hvass": ModelSpec(
        convnet, dict(filters=(16, 36), kernel_size=5, fc_units=(128,), act_after_pool=True),
        course=Recipe("adam", 1e-4, 64, steps=10_000),  # S4: 98.8% after 10,000 iterations
        default=Recipe("adam", 2e-3, 128, epochs=10, schedule="onecycle"),
        course_accuracy=0.988, source="S4", description="conv5x5x16-pool-conv5x5x36-pool-fc128"),
    "cnn-deep": ModelSpec(
        convnet, dict(filters=(32, 64), kernel_size=5, fc_units=(1024,), dropout=0.5),
        course=Recipe("adam", 1e-4, 100, steps=30_000),  # S3: 30,000 steps of 100 -> ~99.2%
        default=Recipe("adam", 1e-3, 128, epochs=10, schedule="onecycle"),
        course_accuracy=0.992, source="S3",  # S2 trains the same net with Adam 1e-3, batch 128
        description="conv5x5x32-pool-conv5x5x64-pool-fc1024-dropout"),
    "cnn3": ModelSpec(
        convnet, dict(filters=(32, 64, 128), kernel_size=3, fc_units=(625,), conv_dropout=0.2, dropout=0.5),
        course=Recipe("rmsprop", 0.001, 128, epochs=10, rho=0.9),  # S0
        default=Recipe("adam", 2e-3, 128, epochs=10, schedule="onecycle"),
        course_accuracy=None, source="S0", description="3x (conv3x3 32/64/128-pool-dropout)-fc625"),
    "cnn": ModelSpec(
        convnet, dict(filters=(32, 64, 128), kernel_size=3, fc_units=(), batchnorm=True, dropout=0.0,
                      conv_dropout=0.0),
        course=Recipe("adam", 1e-3, 128, epochs=10),
        # Robust to other people's handwriting (benchmarks/bench_robust.py): the 'robust' augmentation for
        # 8 epochs, then 2 on the images as they are. Seeds 0/1: 99.56/99.58 % MNIST test; seed 0: every
        # moderate shift set >= 98.4 %, other writers (held out) 97.22 % (the affine 8-epoch cnn: 99.48 %,
        # 95.05 %). README "Anyone's handwriting", measured 2026-12-01.
        default=Recipe("adamw", 4e-3, 128, epochs=10, schedule="onecycle", weight_decay=0.05,
                       label_smoothing=0.1, augment="robust", clean_epochs=2),
        course_accuracy=None, source="mnistlab",
        description="default: 3x (conv3x3 BN relu pool) 32/64/128 -> 10, one-cycle AdamW, robust augmentation"),
    # Time-to-99% on a 2-core CPU (benchmarks/bench_fast.py, --ablations for each choice): no batch
    # norm (it doubled the epoch), narrow 3x3 convs, the first with stride 2 instead of a pooled stage
    # at 28 x 28, 2 x 2 average pooling (max pooling needed 380 steps for the same seeds), 350 steps of
    # 128 (0.81 epoch) of one-cycle Adam at a high peak rate, label smoothing, bfloat16 where the CPU
    # computes it natively (AMX / AVX512_BF16; float32 elsewhere), and answers averaged over 1-pixel
    # shifts, which let training stop sooner; the first convolution fixed to whitening filters
    # (airbench), which skips the backward pass below the second. README "Speed".
    # Seeds 0-5, measured 2026-12-03 on an AMX Xeon: 99.14-99.23 % test in bfloat16; float32 (its
    # widths below) 99.02-99.16 % with oneDNN capped at AVX2 and 99.04-99.14 % at AVX-512 (330 steps:
    # 98.98 % for an AVX-512 seed; max pooling at 350 steps: README "Speed").
    "fast": ModelSpec(
        convnet, dict(filters=(16, 32, 64), kernel_size=3, fc_units=(), pooling="avg", first_stride=2,
                      shift_average=True, whitened_stem=True),
        course=Recipe("adam", 3e-2, 128, steps=320, schedule="onecycle", label_smoothing=0.1, precision="auto",
                       towers=2),
        default=Recipe("adam", 3e-2, 128, steps=320, schedule="onecycle", label_smoothing=0.1, precision="auto",
                       towers=2),
        # In float32 (CPUs without native bfloat16) conv 2 and 3 are narrower, 24 and 48: a third fewer
        # multiply-adds; in bfloat16 the narrower net left a seed at 99.01 % (README "Speed"). Float32
        # trains 350 steps: 320 left seed 4 at 98.94-98.95 % (2026-12-04, AMD Zen 4, oneDNN capped at
        # AVX2 and at AVX-512); in bfloat16 320 kept seeds 0-11 at 99.07-99.22 % there. Two towers (each
        # batch as two halves side by side, one thread an op): 2.2-2.3 s against 3.0-3.5 s for one on that
        # CPU, seeds 0-5 at 99.04-99.22 % (bfloat16), 99.00-99.13 % (float32, AVX2 kernels).
        float32_arch=dict(filters=(16, 24, 48)), float32_recipe=dict(steps=350),
        course_accuracy=None, source="mnistlab",
        description="fast: conv3x3 16 stride 2 (whitened, fixed) | 32 | 64 avg-pooled -> 10 (24 | 48 in float32), "
                    "320 steps one-cycle Adam (350 in float32) in two towers, bfloat16 where native, shift-averaged answers"),
    # Best single-model accuracy: VGG-style stages (one conv at 28x28, two at 14x14 and 7x7) with
    # batch norm, a dropout fc layer, trained on the robust augmentation (augment.py), the last two
    # epochs on the images as they are: 99.75 % MNIST test (seed 0; the affine augmentation gave
    # 99.70-99.74 % over 4 seeds). 28 epochs took 56 min on 2 shared cores (the affine ones: 23-25 min).
    "best": ModelSpec(
        convnet, dict(filters=(32, 64, 128), convs=(1, 2, 2), kernel_size=3, fc_units=(256,), dropout=0.4,
                      batchnorm=True),
        course=Recipe("adam", 3e-3, 128, epochs=28, schedule="onecycle", label_smoothing=0.1, augment="robust",
                      clean_epochs=2),
        default=Recipe("adam", 3e-3, 128, epochs=28, schedule="onecycle", label_smoothing=0.1, augment="robust",
                       clean_epochs=2),
        course_accuracy=None, source="mnistlab",
        description="best: conv3x3 32 | 64x2 | 128x2, BN, pooled -> fc256 dropout, robust augmentation, 28 epochs"),
}


def spec(name: str) -> ModelSpec:
    """The registry entry ``name``, or a clear error listing the models."""
    if name not in MODELS:
        raise MnistlabError(f"unknown model {name!r}; expected one of {', '.join(MODELS)}")
    return MODELS[name]


def arch_options(name: str) -> dict[str, Any]:
    """The builder's full keyword defaults for ``name``, the registry's overriding its own."""
    entry = spec(name)
    params = inspect.signature(entry.builder).parameters
    return {**{k: p.default for k, p in params.items()}, **entry.arch}


def precision_options(name: str, precision: str) -> dict[str, Any]:
    """The registry's architecture changes for ``name`` at a resolved ``precision``: a model may be
    narrower where it trains in float32, so that CPUs without native bfloat16 keep its speed."""
    return dict(spec(name).float32_arch) if precision == "float32" else {}


def precision_recipe(name: str, precision: str) -> dict[str, Any]:
    """The registry's recipe changes for ``name`` at a resolved ``precision`` (Recipe fields): a model
    may need more steps where it trains in float32, whose rounding differs from bfloat16's."""
    return dict(spec(name).float32_recipe) if precision == "float32" else {}


def builder_parameters() -> dict[str, Any]:
    """Every architecture option of every builder: name -> type annotation (the builders'
    signatures are the one definition; ``mnistlab train`` makes a flag of each)."""
    found: dict[str, Any] = {}
    for builder in dict.fromkeys(entry.builder for entry in MODELS.values()):
        for name, param in inspect.signature(builder).parameters.items():
            # annotations are strings here (postponed evaluation); only builtins appear in them
            found.setdefault(name, eval(param.annotation, {}) if isinstance(param.annotation, str) else param.annotation)
    return found


def check_options(name: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """The model's options with ``overrides`` applied and checked; an option it has no use for is an error."""
    options = arch_options(name)
    unknown = sorted(set(overrides) - set(options))
    if unknown:
        raise MnistlabError(
            f"model {name!r} has no option {', '.join(unknown)}; its options are {', '.join(options)}")
    for key, value in overrides.items():
        _, check, choices = ARCH_OPTIONS[key]
        check_value(key, value, check, choices)
    merged = {**options, **overrides}
    if merged.get("whitened_stem"):  # an option that constrains another: checked before any work too
        check_whitened_stem(merged["filters"], merged["kernel_size"])
    return merged


def check_towers(name: str, options: dict[str, Any], towers: int, batch_size: int) -> None:
    """``towers`` > 1 splits each batch: only for a model whose layers see each image alone (batch norm,
    the builders' ``batchnorm`` option, would normalise each part by the part's own statistics). Checked
    from the options, without building: TensorFlow's thread pools are sized after this, before it starts."""
    if towers == 1:
        return
    if batch_size < towers:
        raise MnistlabError(f"--towers {towers} with --batch-size {batch_size}: expected at most one tower per image")
    if options.get("batchnorm"):
        raise MnistlabError(f"--towers {towers}: model {name!r} has batch normalization, whose statistics would "
                            f"differ between a batch and its parts; expected --towers 1 for it")


def build(name: str, seed: int | None = None, **overrides: Any) -> "keras.Model":
    """Build model ``name`` with architecture ``overrides`` (e.g. ``filters=(8, 16)``).

    An option the model has no use for (``filters`` on an MLP) is an error, not ignored.
    """
    options = check_options(name, overrides)
    if seed is not None:
        import keras

        keras.utils.set_random_seed(seed)
    model = spec(name).builder(**options)
    model.name = name  # type: ignore[misc]
    return model


def recipe(name: str, course: bool = False) -> Recipe:
    """The course's or mnistlab's training settings for ``name``."""
    entry = spec(name)
    return entry.course if course else entry.default
