"""Checks of untrusted model files *before* anything loads them: files are data, never code.

TensorFlow runs a SavedModel's resource initializers inside ``tf.saved_model.load``, Keras
builds every layer (allocating its weights) before it reads one, and TFLite allocates every
tensor in ``allocate_tensors``. So each format is parsed here first, with plain parsers, and
refused in one line naming the op, layer, member or tensor at fault:

- SavedModel: ``saved_model.pb`` is parsed and every node of the graph and of every library
  function must be an op of ``INFERENCE_OPS`` (what the registry's models export to: maths,
  convolutions, pooling, variable reads). File I/O (``ReadFile``, ``WriteFile``, ``PrintV2``
  to a file), Python calls, loops (``While``) and shape makers (``Fill``, ``Tile``) are not in
  it. The functions reached only from the saver (``saver_def``; TensorFlow Serving restores
  variables with them, ``tf.saved_model.load`` builds its own) may also use ``CHECKPOINT_OPS``.
  Constants and variables are bounded by ``MAX_PARAMETERS`` elements.
- ``.keras``: a zip whose members are only ``config.json``, ``metadata.json`` and
  ``model.weights.h5``, with bounded declared sizes (Python's zipfile stops at the declared
  size, so a member cannot inflate past it); every object in the config is a Keras built-in
  of ``KERAS_LAYERS`` (no ``Lambda``, no ``TFSMLayer``, nothing registered by a user); the
  weights and per-image activations its layers would create are counted without allocating
  them (``keras_model_size``) and bounded.
- ``.tflite``: the flat buffer is parsed; one subgraph, built-in ops of ``TFLITE_OPS`` only
  (no ``WHILE``/``IF``/custom ops), every tensor and buffer index in range, every tensor's
  per-image size bounded.

With no loops and bounded shapes, a model that passes runs in bounded time; ``call_with_deadline``
still gives its first call a deadline (``PROBE_SECONDS``).

This module imports nothing of the package but ``errors``; TensorFlow, Keras and h5py only
inside the functions that need them.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import re
import threading
import zipfile
from pathlib import Path
from typing import Any, Callable, Iterable

from mnistlab.errors import MnistlabError

MAX_PARAMETERS = 50_000_000  # weights of one model (200 MB of float32); the largest registry model has ~1.5M
MAX_ACTIVATIONS_PER_IMAGE = 2 ** 21  # elements of all intermediate tensors for one image (8 MB float32)
MAX_CONST_ELEMENTS = 2 ** 20  # one constant tensor in a graph (Keras exports only shapes and scalars)
PROBE_SECONDS = 60.0  # the first call on one blank image must answer within this
KERAS_MEMBER_BYTES = {"config.json": 4 * 2 ** 20, "metadata.json": 2 ** 16, "model.weights.h5": 4 * MAX_PARAMETERS + 2 ** 24}
ZIP_MAGIC = b"PK\x03\x04"
PICKLE_MAGIC = 0x80  # protocol 2+ pickles start with PROTO

# What the registry's models export to (tested: every model and pooling/activation variant), plus
# the element-wise maths and layout ops of other small classifiers. Nothing here reads or writes
# files, calls Python, loops, or makes a tensor larger than its inputs.
INFERENCE_OPS = frozenset("""
    Const Identity IdentityN NoOp Placeholder PlaceholderWithDefault StatefulPartitionedCall PartitionedCall
    VarHandleOp ReadVariableOp AssignVariableOp VarIsInitializedOp
    Conv2D DepthwiseConv2dNative MatMul BatchMatMulV2 BiasAdd FusedBatchNormV3 MaxPool AvgPool
    Relu Relu6 Elu Selu LeakyRelu Sigmoid Tanh Softplus Softsign Softmax LogSoftmax Erf Erfc
    AddV2 Add Sub Mul RealDiv Neg Rsqrt Sqrt Square Exp Log Log1p Abs Maximum Minimum Pow
    Mean Sum Max Min Prod ArgMax Cast Reshape Squeeze ExpandDims Shape Pack StridedSlice ConcatV2 Transpose
""".split())
# Ops of the standard save/restore functions that ``saver_def`` names.
CHECKPOINT_OPS = INFERENCE_OPS | frozenset("""
    SaveV2 RestoreV2 MergeV2Checkpoints ShardedFilename StringJoin StaticRegexFullMatch Select SelectV2
    DisableCopyOnRead
""".split())
SAVED_MODEL_TOP_OPS = frozenset("""Const NoOp Placeholder StatefulPartitionedCall PartitionedCall VarHandleOp
    ReadVariableOp AssignVariableOp VarIsInitializedOp Identity""".split())

KERAS_MODULES = {  # module -> the classes allowed from it (None: any class of that module)
    "keras": frozenset({"Sequential", "Functional", "Model", "DTypePolicy", "FloatDTypePolicy"}),
    "keras.src.models.functional": frozenset({"Functional"}),
    "keras.src.models.sequential": frozenset({"Sequential"}),
    "keras.initializers": None, "keras.regularizers": None, "keras.constraints": None,
}
KERAS_LAYERS = frozenset("""
    InputLayer Dense Conv2D DepthwiseConv2D SeparableConv2D MaxPooling2D AveragePooling2D
    GlobalAveragePooling2D GlobalMaxPooling2D Flatten Reshape Dropout SpatialDropout2D GaussianNoise
    BatchNormalization LayerNormalization Activation ReLU LeakyReLU ELU PReLU Softmax Rescaling
    Add Concatenate Multiply Average Maximum ZeroPadding2D Identity
""".split())
KERAS_TENSOR = "__keras_tensor__"  # in a functional model's config: which layer output feeds a layer
KERAS_SKIPPED_KEYS = ("compile_config",)  # never deserialized: models load with compile=False

TFLITE_OPS = frozenset("""
    CONV_2D DEPTHWISE_CONV_2D FULLY_CONNECTED BATCH_MATMUL MAX_POOL_2D AVERAGE_POOL_2D
    RELU RELU6 RELU_N1_TO_1 ELU LEAKY_RELU PRELU LOGISTIC TANH GELU HARD_SWISH SOFTMAX LOG_SOFTMAX
    ADD SUB MUL DIV NEG RSQRT SQRT SQUARE EXP LOG ABS MAXIMUM MINIMUM POW
    MEAN SUM REDUCE_MAX ARG_MAX CAST RESHAPE SQUEEZE EXPAND_DIMS SHAPE PACK STRIDED_SLICE CONCATENATION TRANSPOSE
    QUANTIZE DEQUANTIZE
""".split())


def refuse(path: Path | str, what: str) -> MnistlabError:
    """The one-line refusal every check raises."""
    return MnistlabError(f"{path}: refused, {what}")


def elements(shape: Iterable[int]) -> int:
    """Elements of a tensor of ``shape``; unknown (-1 / None) dimensions count as 1 (one image)."""
    return math.prod(max(int(d), 1) if d is not None else 1 for d in shape)


def first_line(exc: BaseException) -> str:
    """An exception's first line, for a one-line error."""
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:300]


def keras_reason(exc: BaseException) -> str:
    """Keras' innermost reason for refusing a config, with the class it was building: its outer
    message ("<class Sequential> could not be deserialized properly") names neither."""
    text = str(exc)
    reason = text.split("Exception encountered: ")[-1].strip()
    reason = reason.splitlines()[0] if reason else type(exc).__name__
    found = re.findall(r"deserializing class '(\w+)'|<class '[\w.]*?(\w+)'> could not be deserialized", text)
    names = [a or b for a, b in found]
    return (f"{names[-1]}: {reason}" if names and not reason.startswith("<class") else reason)[:300]


# ---------------------------------------------------------------------------- deadline
def call_with_deadline(call: Callable[[], Any], seconds: float, what: str) -> Any:
    """``call()`` on a daemon thread; its result, its exception, or a clear error after ``seconds``.

    A kernel cannot be interrupted, so a call past the deadline is left running: the command
    that gets the error ends, and the thread with it."""
    done = threading.Event()
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = call()
        except BaseException as exc:  # handed to the caller below
            box["error"] = exc
        finally:
            done.set()

    threading.Thread(target=run, name="mnistlab-probe", daemon=True).start()
    if not done.wait(seconds):
        raise MnistlabError(f"{what}: no answer for one image within {seconds:g} s; refused")
    if "error" in box:
        if isinstance(box["error"], MnistlabError):
            raise box["error"]
        raise MnistlabError(f"{what}: fails on one blank image ({first_line(box['error'])})")
    return box["value"]


# ---------------------------------------------------------------------------- .keras
def check_keras_file(path: Path) -> dict[str, Any]:
    """Check a ``.keras`` archive without loading it; its parsed ``config.json``."""
    with path.open("rb") as f:
        head = f.read(4)
    if head != ZIP_MAGIC:
        kind = "a Python pickle" if head[:1] == bytes([PICKLE_MAGIC]) else f"starts with {head!r}"
        raise refuse(path, f"not a .keras file ({kind}); expected a zip archive written by Keras 3 model.save")
    try:
        with zipfile.ZipFile(path) as archive:
            members = {info.filename: info for info in archive.infolist()}
            for name, info in members.items():
                if name not in KERAS_MEMBER_BYTES:
                    raise refuse(path, f"unexpected member {name!r}; expected only {', '.join(KERAS_MEMBER_BYTES)}")
                if info.file_size > KERAS_MEMBER_BYTES[name]:
                    raise refuse(path, f"member {name} inflates to {info.file_size:,} bytes; "
                                       f"expected at most {KERAS_MEMBER_BYTES[name]:,}")
            if "config.json" not in members:
                raise refuse(path, "no config.json in the archive; expected a Keras 3 model")
            config = json.loads(archive.read("config.json"))
            if "model.weights.h5" in members:
                _check_weights(path, archive)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, UnicodeDecodeError, json.JSONDecodeError, OSError,
            ValueError) as exc:  # h5py raises OSError / ValueError for a damaged HDF5 file
        raise refuse(path, f"damaged .keras archive ({first_line(exc)})") from None
    check_keras_config(path, config)
    return config


def _check_weights(path: Path, archive: zipfile.ZipFile) -> None:
    """The datasets of ``model.weights.h5`` (shapes read from its headers) hold at most
    ``MAX_PARAMETERS`` values: an HDF5 dataset can declare any shape in a few bytes."""
    import h5py

    sizes: list[int] = []
    with archive.open("model.weights.h5") as member, h5py.File(member, "r") as weights:
        weights.visititems(lambda name, item: sizes.append(item.size) if isinstance(item, h5py.Dataset) else None)
    if sum(sizes) > MAX_PARAMETERS:
        raise refuse(path, f"model.weights.h5 declares {sum(sizes):,} weights; expected at most {MAX_PARAMETERS:,}")


def check_keras_config(path: Path, config: Any, where: str = "config.json") -> None:
    """Every serialized object in the config is a Keras built-in this project allows."""
    if isinstance(config, list):
        for item in config:
            check_keras_config(path, item, where)
        return
    if not isinstance(config, dict):
        return
    if "class_name" in config:
        _check_keras_object(path, config)
        inner = config.get("config")
        if isinstance(inner, dict) and isinstance(inner.get("name"), str):
            where = f"layer {inner['name']!r}"
    for key, value in config.items():
        if key not in KERAS_SKIPPED_KEYS:
            check_keras_config(path, value, where)


def _check_keras_object(path: Path, obj: dict[str, Any]) -> None:
    name, module = obj.get("class_name"), obj.get("module")
    label = obj.get("config", {}).get("name") if isinstance(obj.get("config"), dict) else None
    label = f"{label!r} " if isinstance(label, str) else ""
    if name == KERAS_TENSOR and module is None:
        _check_tensor_reference(path, obj)
        return
    if obj.get("registered_name") not in (None, name):
        raise refuse(path, f"object {label}is a user-registered class {obj['registered_name']!r} "
                           f"(custom code); expected Keras built-in layers only")
    if module == "keras.layers":
        if name in ("Lambda", "TFSMLayer", "TorchModuleWrapper", "JaxLayer", "FlaxLayer"):
            raise refuse(path, f"layer {label}is a {name} layer, which runs code or loads other files; "
                               f"expected Keras built-in layers only")
        if name not in KERAS_LAYERS:
            raise refuse(path, f"layer {label}is a {name}; expected one of {', '.join(sorted(KERAS_LAYERS))}")
        return
    if module in KERAS_MODULES:
        allowed = KERAS_MODULES[module]
        if allowed is None or name in allowed:
            return
    what = f"{module}.{name}" if module else f"{name} (a Python function)" if str(name).startswith("__") else name
    raise refuse(path, f"object {label}is {what}, not a Keras built-in this project loads")


def _check_tensor_reference(path: Path, obj: dict[str, Any]) -> None:
    """A functional model's wiring: "the output of layer L" (``keras_history``: name, node, tensor
    index), with its shape and dtype. Keras looks the layer up by name; nothing is called. Any other
    key or value is refused, so the name cannot smuggle in one of the ``__lambda__``-like objects."""
    config, keys = obj.get("config"), set(obj) - {"class_name", "config", "module", "registered_name"}
    history = config.get("keras_history") if isinstance(config, dict) else None
    if (keys or obj.get("registered_name") is not None or not isinstance(config, dict)
            or not set(config) <= {"shape", "dtype", "keras_history", "sparse", "ragged"}
            or not (isinstance(history, list) and len(history) == 3 and isinstance(history[0], str)
                    and all(isinstance(i, int) and not isinstance(i, bool) for i in history[1:]))):
        raise refuse(path, f"a {KERAS_TENSOR} entry holds more than a layer output's name, shape and dtype")


def keras_model_size(config: dict[str, Any]) -> tuple[int, int]:
    """``(weights, per-image activations)`` of the model ``config`` describes, in elements,
    found by building it in a Keras ``StatelessScope`` that never creates the weights."""
    import keras
    from keras.src.backend.common import global_state  # the list of deferred variables (no public API)

    pending = list(global_state.get_global_attribute("uninitialized_variables", []) or [])
    try:
        with keras.StatelessScope(initialize_variables=False):
            # a deep copy: Keras' deserialization pops entries out of a functional model's config
            bare = copy.deepcopy({k: v for k, v in config.items() if k not in KERAS_SKIPPED_KEYS})
            model = keras.saving.deserialize_keras_object(bare, safe_mode=True)
            weights = sum(elements(v.shape) for v in model.weights)
            activations = 0
            for layer in getattr(model, "layers", []):
                with contextlib.suppress(AttributeError, ValueError, TypeError):  # no known shape: counts 0
                    activations += elements(tuple(layer.output.shape)[1:])
    finally:  # forget this model's deferred weights: a later scope would allocate them
        global_state.set_global_attribute("uninitialized_variables", pending)
    return weights, activations


def check_keras_size(path: Path, config: dict[str, Any]) -> None:
    """Refuse a config whose weights or activations would exceed the bounds."""
    try:
        weights, activations = keras_model_size(config)
    except MnistlabError:
        raise
    except Exception as exc:  # Keras' own refusals (unknown arguments, bad shapes...)
        raise refuse(path, f"config.json does not describe a buildable model ({keras_reason(exc)})") from None
    if weights > MAX_PARAMETERS:
        raise refuse(path, f"its layers would create {weights:,} weights; expected at most {MAX_PARAMETERS:,}")
    if activations > MAX_ACTIVATIONS_PER_IMAGE:
        raise refuse(path, f"its layers would output {activations:,} values per image; "
                           f"expected at most {MAX_ACTIVATIONS_PER_IMAGE:,}")


# ---------------------------------------------------------------------------- SavedModel
def check_saved_model(folder: Path) -> None:
    """Parse ``saved_model.pb`` and check every op, constant, variable and the signature."""
    from tensorflow.core.protobuf import saved_model_pb2

    saved = saved_model_pb2.SavedModel()
    try:
        saved.ParseFromString((folder / "saved_model.pb").read_bytes())
    except Exception as exc:  # protobuf's DecodeError, OSError
        raise refuse(folder, f"saved_model.pb is not a SavedModel ({first_line(exc)})") from None
    if len(saved.meta_graphs) != 1 or not saved.meta_graphs[0].HasField("object_graph_def"):
        raise refuse(folder, "not a TensorFlow 2 SavedModel with one graph; expected what "
                             "`mnistlab export --format savedmodel` writes")
    graph = saved.meta_graphs[0]
    _check_signature(folder, graph)
    functions = {f.signature.name: f for f in graph.graph_def.library.function}
    calls = {name: _called(f.node_def) for name, f in functions.items()}
    saver_nodes = {graph.saver_def.save_tensor_name.split(":")[0], graph.saver_def.restore_op_name.split(":")[0]}
    top = [n for n in graph.graph_def.node if n.name not in saver_nodes]
    roots = _called(top) | {name for name in graph.object_graph_def.concrete_functions}
    saver_reach = _reach(_called([n for n in graph.graph_def.node if n.name in saver_nodes]), calls)
    strict = _reach(roots | (set(functions) - saver_reach), calls)
    for node in graph.graph_def.node:
        allowed = CHECKPOINT_OPS if node.name in saver_nodes else SAVED_MODEL_TOP_OPS
        _check_node(folder, node, allowed, "the graph")
    for name, function in functions.items():
        allowed = INFERENCE_OPS if name in strict else CHECKPOINT_OPS
        for node in function.node_def:
            _check_node(folder, node, allowed, f"function {name}")
    _check_acyclic(folder, calls)
    _check_variables(folder)


def _check_signature(folder: Path, graph: Any) -> None:
    """``serving_default``: one float32 (-1, 28, 28, 1) input, one (-1, 10) output."""
    from tensorflow.core.framework import types_pb2

    signature = graph.signature_def.get("serving_default")
    if signature is None:
        raise refuse(folder, "no 'serving_default' signature; expected one (mnistlab export --format savedmodel writes it)")
    if len(signature.inputs) != 1 or len(signature.outputs) != 1:
        raise refuse(folder, f"serving_default takes {list(signature.inputs)} and gives {list(signature.outputs)}; "
                             f"expected one input and one output")
    (spec,), (out,) = signature.inputs.values(), signature.outputs.values()
    shapes = [tuple(d.size for d in t.tensor_shape.dim) for t in (spec, out)]
    if spec.dtype != types_pb2.DT_FLOAT or shapes[0][1:] != (28, 28, 1) or shapes[1][1:] != (10,):
        raise refuse(folder, f"serving_default maps {shapes[0]} -> {shapes[1]}; expected float32 "
                             f"(-1, 28, 28, 1) -> (-1, 10)")


def _called(nodes: Iterable[Any]) -> set[str]:
    """Names of the functions that ``nodes`` call through their attributes (``f``, branches...)."""
    names: set[str] = set()
    for node in nodes:
        for value in node.attr.values():
            if value.HasField("func"):
                names.add(value.func.name)
            names |= {f.name for f in value.list.func}
    return names


def _reach(start: set[str], calls: dict[str, set[str]]) -> set[str]:
    """Every function reachable from ``start`` through ``calls``."""
    seen, todo = set(), list(start)
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(calls.get(name, ()))
    return seen


def _check_acyclic(folder: Path, calls: dict[str, set[str]]) -> None:
    """No function calls itself, directly or not (recursion would be a loop)."""
    state: dict[str, int] = {}  # 1 visiting, 2 done

    def visit(name: str) -> None:
        state[name] = 1
        for callee in calls.get(name, ()):
            if state.get(callee) == 1:
                raise refuse(folder, f"function {callee} calls itself (a loop); expected a feed-forward graph")
            if callee not in state:
                visit(callee)
        state[name] = 2

    for name in calls:
        if name not in state:
            visit(name)


def _check_node(folder: Path, node: Any, allowed: frozenset[str], where: str) -> None:
    """The node's op is allowed and its constant or variable shape is bounded."""
    if node.op not in allowed:
        raise refuse(folder, f"{where} uses the op {node.op} (node {node.name!r}), which an MNIST classifier "
                             f"does not need; expected tensor maths only")
    if node.op == "Const" and "value" in node.attr:
        size = elements(d.size for d in node.attr["value"].tensor.tensor_shape.dim)
        if size > MAX_CONST_ELEMENTS:
            raise refuse(folder, f"constant {node.name!r} in {where} holds {size:,} values; "
                                 f"expected at most {MAX_CONST_ELEMENTS:,}")
    if node.op == "VarHandleOp" and "shape" in node.attr:
        size = elements(d.size for d in node.attr["shape"].shape.dim)
        if size > MAX_PARAMETERS:
            raise refuse(folder, f"variable {node.name!r} holds {size:,} values; expected at most {MAX_PARAMETERS:,}")


def _check_variables(folder: Path) -> None:
    """The checkpoint's variables (read from its index, nothing allocated) are bounded in all."""
    import tensorflow as tf

    prefix = folder / "variables" / "variables"
    if not Path(f"{prefix}.index").is_file():
        return
    try:
        shapes = tf.train.load_checkpoint(str(prefix)).get_variable_to_shape_map()
    except Exception as exc:  # tf.errors.DataLossError and friends
        raise refuse(folder, f"variables/ is not a readable checkpoint ({first_line(exc)})") from None
    total = sum(elements(shape) for shape in shapes.values())
    if total > MAX_PARAMETERS:
        raise refuse(folder, f"its variables hold {total:,} values; expected at most {MAX_PARAMETERS:,}")


# ---------------------------------------------------------------------------- TFLite
def _tflite_schema() -> Any:
    """The flat-buffer schema module of LiteRT, else of TensorFlow."""
    try:
        from ai_edge_litert import schema_py_generated as schema  # type: ignore[import-not-found]
    except ImportError:
        from tensorflow.lite.python import schema_py_generated as schema  # type: ignore[no-redef]
    return schema


def check_tflite(path: Path, content: bytes) -> None:
    """Parse a TFLite flat buffer: one subgraph, allowed built-in ops, indices in range, bounded tensors."""
    schema = _tflite_schema()
    if len(content) < 8 or content[4:8] != b"TFL3":
        raise refuse(path, "not a TFLite flat buffer (no TFL3 identifier); expected a .tflite model")
    try:
        _check_tflite_model(path, schema, schema.Model.GetRootAs(content, 0))
    except MnistlabError:
        raise
    except Exception as exc:  # offsets past the end: IndexError, struct.error...
        raise refuse(path, f"damaged TFLite flat buffer ({first_line(exc)})") from None


def _check_tflite_model(path: Path, schema: Any, model: Any) -> None:
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    if model.SubgraphsLength() != 1:
        raise refuse(path, f"{model.SubgraphsLength()} subgraphs (control flow); expected one feed-forward graph")
    codes = []
    for i in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(i)
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        op = names.get(builtin, f"#{builtin}")
        if op == "CUSTOM" or op not in TFLITE_OPS:
            label = f"custom op {code.CustomCode().decode(errors='replace')!r}" if op == "CUSTOM" else f"op {op}"
            raise refuse(path, f"uses the {label}, which an MNIST classifier does not need; "
                               f"expected TFLite built-in maths only")
        codes.append(op)
    graph, buffers = model.Subgraphs(0), model.BuffersLength()
    tensors = graph.TensorsLength()
    activations = 0
    for i in range(tensors):
        tensor = graph.Tensors(i)
        shape = tensor.ShapeSignatureAsNumpy() if tensor.ShapeSignatureLength() else tensor.ShapeAsNumpy()
        shape = [] if isinstance(shape, int) else [int(d) for d in shape]
        if not 0 <= tensor.Buffer() < max(buffers, 1):
            raise refuse(path, f"tensor {i} points at buffer {tensor.Buffer()} of {buffers}; damaged file")
        size = elements(shape[1:] if shape and shape[0] == -1 else shape)
        if size > MAX_PARAMETERS:
            raise refuse(path, f"tensor {i} holds {size:,} values; expected at most {MAX_PARAMETERS:,}")
        if tensor.Buffer() == 0 or model.Buffers(tensor.Buffer()).DataLength() == 0:
            activations += size
    if activations > MAX_ACTIVATIONS_PER_IMAGE:
        raise refuse(path, f"its tensors hold {activations:,} values per image; expected at most "
                           f"{MAX_ACTIVATIONS_PER_IMAGE:,}")
    ends = [graph.InputsAsNumpy(), graph.OutputsAsNumpy()]
    for i in range(graph.OperatorsLength()):
        op = graph.Operators(i)
        if not 0 <= op.OpcodeIndex() < len(codes):
            raise refuse(path, f"operator {i} has op code {op.OpcodeIndex()} of {len(codes)}; damaged file")
        ends += [op.InputsAsNumpy(), op.OutputsAsNumpy()]
    for indices in ends:
        if not isinstance(indices, int) and any(not -1 <= int(t) < tensors for t in indices):
            raise refuse(path, f"an operator names a tensor outside 0..{tensors - 1}; damaged file")
