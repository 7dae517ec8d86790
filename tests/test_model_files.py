"""Model files are data: hostile SavedModels, .keras and .tflite files built here are refused
before anything in them runs, with one line naming the op, layer, member or tensor and why.

Each hostile file does what the issue found (a resource initializer copying a secret file, a
``tf.print`` appending to a file, an endless loop, a huge ``tf.fill``, a config that inflates
to gigabytes, a pickle renamed ``.keras``, a mutated flat buffer); each test asserts both the
refusal and that the harm did not happen.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

import _models
from mnistlab import convert, export, modelcheck
from mnistlab.errors import MnistlabError
from mnistlab.inference import predict_logits
from mnistlab.runs import RunFolder, load_predictor

SEED = 0


def _save_module(module, folder: Path) -> Path:
    import tensorflow as tf

    tf.saved_model.save(module, str(folder), signatures={"serving_default": module.serve})
    return folder


def _logits(x):
    """A clean linear read-out (Reshape, MatMul, Const): what the hostile part is added to."""
    import tensorflow as tf

    return tf.matmul(tf.reshape(x, (-1, 784)), tf.constant(np.zeros((784, 10), np.float32)))


def _serving_module(body):
    """A tf.Module whose serving function is ``body(x)`` -> logits (None, 10)."""
    import tensorflow as tf

    class Hostile(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec((None, 28, 28, 1), tf.float32)])
        def serve(self, x):
            return {"logits": body(x)}

    return Hostile()


# ---------------------------------------------------------------------------- SavedModel
def test_a_resource_initializer_that_copies_a_file_never_runs(tmp_path: Path):
    """TensorFlow runs resource initializers inside tf.saved_model.load: the check must come first."""
    import tensorflow as tf

    secret, stolen = tmp_path / "secret.txt", tmp_path / "stolen.txt"
    secret.write_text("password")

    class Copier(tf.saved_model.experimental.TrackableResource):
        def _create_resource(self):
            return tf.raw_ops.HashTableV2(key_dtype=tf.string, value_dtype=tf.string)

        def _initialize(self):
            tf.io.write_file(str(stolen), tf.io.read_file(str(secret)))

    module = _serving_module(lambda x: _logits(x))
    module.copier = Copier()
    folder = _save_module(module, tmp_path / "copier")
    stolen.unlink(missing_ok=True)  # saving ran the initializer once; loading must not
    with pytest.raises(MnistlabError, match=r"copier: refused, .* uses the op (ReadFile|WriteFile|HashTableV2) "):
        load_predictor(folder)
    assert not stolen.exists()


def test_a_print_to_a_file_is_refused(tmp_path: Path):
    import tensorflow as tf

    bashrc = tmp_path / ".bashrc"
    bashrc.write_text("# mine\n")

    def body(x):
        tf.raw_ops.PrintV2(input="echo pwned", output_stream=f"file://{bashrc}")
        return _logits(x)

    folder = _save_module(_serving_module(body), tmp_path / "printer")
    bashrc.write_text("# mine\n")  # tracing may have printed once
    with pytest.raises(MnistlabError, match="uses the op PrintV2"):
        load_predictor(folder)
    assert bashrc.read_text() == "# mine\n"


@pytest.mark.timeout(300)  # a safety net only: the loop must be refused before it is ever run
@pytest.mark.parametrize("kind", ["loop", "fill"])
def test_a_graph_that_would_hang_is_refused_before_running(tmp_path: Path, kind: str):
    import tensorflow as tf

    def loop(x):
        _, y = tf.while_loop(lambda i, y: True, lambda i, y: (i + 1, y), (tf.constant(0), tf.zeros((1, 10))))
        return y + _logits(x)

    def fill(x):  # noqa: E306
        return tf.reduce_sum(tf.fill([2 ** 20, 2 ** 20], 1.0)) + _logits(x)

    folder = _save_module(_serving_module(loop if kind == "loop" else fill), tmp_path / kind)
    op = "(While|StatelessWhile)" if kind == "loop" else "Fill \\(node 'Fill'\\)"
    with pytest.raises(MnistlabError, match=f"refused, function \\S+ uses the op {op}"):
        load_predictor(folder)


def test_a_huge_constant_and_a_wrong_signature_are_refused(tmp_path: Path):
    import tensorflow as tf

    big = np.zeros((2 ** 21,), np.float32)
    folder = _save_module(_serving_module(lambda x: _logits(x) + tf.reduce_sum(tf.constant(big))),
                          tmp_path / "big")
    with pytest.raises(MnistlabError, match="holds 2,097,152 values; expected at most 1,048,576"):
        load_predictor(folder)

    class Cifar(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec((None, 32, 32, 3), tf.float32)])
        def serve(self, x):
            return {"logits": _logits(x)}

    with pytest.raises(MnistlabError, match=r"serving_default maps \(-1, 32, 32, 3\) -> \(-1, 10\)"):
        load_predictor(_save_module(Cifar(), tmp_path / "cifar"))


def test_saver_ops_are_allowed_only_in_the_saver(tmp_path: Path):
    """The save/restore functions may use RestoreV2 and friends; a serving function may not."""
    import tensorflow as tf

    def body(x):
        tf.raw_ops.MergeV2Checkpoints(checkpoint_prefixes=[str(tmp_path / "a")], destination_prefix=str(tmp_path / "b"))
        return _logits(x)

    with pytest.raises(MnistlabError, match="uses the op MergeV2Checkpoints"):
        load_predictor(_save_module(_serving_module(body), tmp_path / "merger"))


# ---------------------------------------------------------------------------- .keras
def _small_config() -> dict:
    import keras
    from keras import layers

    model = keras.Sequential([keras.Input((28, 28, 1)), layers.Flatten(), layers.Dense(10)])
    return json.loads(json.dumps(keras.saving.serialize_keras_object(model)))


def _write_keras(path: Path, config: dict | str, extra: dict[str, bytes] | None = None) -> Path:
    """A .keras zip with this config (and members), deflated like Keras' own."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("metadata.json", json.dumps({"keras_version": "3.15.1"}))
        archive.writestr("config.json", config if isinstance(config, str) else json.dumps(config))
        for name, data in (extra or {}).items():
            archive.writestr(name, data)
    return path


def test_a_config_that_inflates_to_megabytes_is_refused_unread(tmp_path: Path):
    padded = json.dumps(_small_config()) + " " * (8 * 2 ** 20)  # valid JSON: 8 MiB of spaces
    path = _write_keras(tmp_path / "bomb.keras", padded)
    assert path.stat().st_size < 64 * 2 ** 10
    with pytest.raises(MnistlabError, match=r"bomb.keras: refused, member config.json inflates to 8,3\d\d,\d\d\d bytes"):
        load_predictor(path)


def test_a_pickle_renamed_keras_is_named_as_such(tmp_path: Path):
    import pickle

    path = tmp_path / "model.keras"
    path.write_bytes(pickle.dumps({"weights": [1, 2, 3]}, protocol=4))
    with pytest.raises(MnistlabError, match=r"model.keras: refused, not a .keras file \(a Python pickle\)"):
        load_predictor(path)


@pytest.mark.parametrize("layer, message", [
    ({"module": "keras.layers", "class_name": "TFSMLayer", "config": {"name": "sm", "filepath": "/tmp/x"}},
     "layer 'sm' is a TFSMLayer layer, which runs code or loads other files"),
    ({"module": "my_package", "class_name": "Evil", "config": {"name": "evil"}, "registered_name": "my>Evil"},
     "object 'evil' is a user-registered class 'my>Evil'"),
    ({"module": "os", "class_name": "system", "config": {"name": "cmd"}}, "object 'cmd' is os.system"),
    ({"module": "keras.layers", "class_name": "Conv3DTranspose", "config": {"name": "up"}},
     "layer 'up' is a Conv3DTranspose; expected one of Activation, Add"),
])
def test_layers_outside_the_allowlist_are_named(tmp_path: Path, layer: dict, message: str):
    config = _small_config()
    config["config"]["layers"].insert(2, layer)
    with pytest.raises(MnistlabError, match=f"refused, {message}"):
        load_predictor(_write_keras(tmp_path / "odd.keras", config))


def _tensor_references(config):
    """Every ``__keras_tensor__`` entry of a functional model's config (the wiring between layers)."""
    if isinstance(config, dict):
        if config.get("class_name") == modelcheck.KERAS_TENSOR:
            yield config
        for value in config.values():
            yield from _tensor_references(value)
    elif isinstance(config, list):
        for value in config:
            yield from _tensor_references(value)


def test_a_functional_models_wiring_loads_and_nothing_else_in_its_place(tmp_path: Path):
    """A shift-average model is functional: its config says which layer's output feeds each layer
    (``__keras_tensor__`` entries). Such a model loads and answers as saved; the same entry holding
    anything beyond a layer output's name, shape and dtype, or a ``__lambda__``, is refused."""
    import keras

    from mnistlab import models

    model = models.build("fast", seed=SEED, filters=(2, 2, 2))
    path = tmp_path / "model.keras"
    model.save(path)
    x = np.random.default_rng(0).random((3, 28, 28, 1), dtype=np.float32)
    np.testing.assert_allclose(load_predictor(path).logits(x), keras.ops.convert_to_numpy(model(x)), atol=1e-6)
    with zipfile.ZipFile(path) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    config = json.loads(members.pop("config.json"))
    members.pop("metadata.json")  # _write_keras writes its own
    assert len(list(_tensor_references(config))) >= 6  # input -> 4 shifts and the network, 5 views -> average
    for tamper, message in [
        (lambda ref: ref["config"].update(code="import os"), "holds more than a layer output's name, shape and dtype"),
        (lambda ref: ref["config"].update(keras_history=["input_layer", "0", 0]), "holds more than a layer output"),
        (lambda ref: ref.update(module="builtins"), "object is builtins.__keras_tensor__"),
        (lambda ref: ref.update(class_name="__lambda__"), r"object is __lambda__ \(a Python function\)"),
    ]:
        changed = json.loads(json.dumps(config))
        tamper(next(_tensor_references(changed)))
        odd = _write_keras(tmp_path / "odd.keras", changed, members)
        with pytest.raises(MnistlabError, match=f"odd.keras: refused, .*{message}"):
            load_predictor(odd)


def test_keras_own_refusals_name_the_layer_class_and_the_reason(tmp_path: Path):
    """Not Keras' outer "<class Sequential> could not be deserialized properly"."""
    config = _small_config()
    dense = next(layer for layer in config["config"]["layers"] if layer["class_name"] == "Dense")
    dense["config"]["activation"] = "evil_fn"
    with pytest.raises(MnistlabError, match=r"refused, config.json does not describe a buildable model \(Dense: "
                                            r"Could not interpret activation function identifier: evil_fn\)$"):
        load_predictor(_write_keras(tmp_path / "odd.keras", config))


def test_layers_that_would_allocate_gigabytes_are_refused_without_allocating(tmp_path: Path):
    """Two Dense(100000) layers: 10^10 weights (40 GB) counted without creating one."""
    import resource

    config = _small_config()
    dense = next(layer for layer in config["config"]["layers"] if layer["class_name"] == "Dense")
    dense.pop("build_config", None)
    wide = json.loads(json.dumps(dense))
    wide["config"].update(name="wide", units=100_000)
    config["config"]["layers"][2:2] = [wide, {**json.loads(json.dumps(wide)), "config": {**wide["config"], "name": "wider"}}]
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(MnistlabError, match=r"its layers would create 10,079,\d{3},\d{3} weights; expected at most"):
        load_predictor(_write_keras(tmp_path / "wide.keras", config))
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 500_000  # KiB: nothing near 40 GB
    import keras

    keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])  # a later model builds normally


def test_weights_that_declare_a_huge_shape_are_refused(tmp_path: Path):
    import h5py

    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as weights:
        weights.create_dataset("layers/dense/vars/0", shape=(2 ** 20, 2 ** 20), dtype="float32", chunks=(64, 64))
    path = _write_keras(tmp_path / "sparse.keras", _small_config(), {"model.weights.h5": buffer.getvalue()})
    with pytest.raises(MnistlabError, match="model.weights.h5 declares 1,099,511,627,776 weights"):
        load_predictor(path)


def test_unexpected_members_and_a_damaged_zip_are_refused(tmp_path: Path):
    path = _write_keras(tmp_path / "extra.keras", _small_config(), {"payload.py": b"import os"})
    with pytest.raises(MnistlabError, match="unexpected member 'payload.py'"):
        load_predictor(path)
    (tmp_path / "cut.keras").write_bytes(path.read_bytes()[:60])
    with pytest.raises(MnistlabError, match="cut.keras: refused, damaged .keras archive"):
        load_predictor(tmp_path / "cut.keras")


# ---------------------------------------------------------------------------- .tflite
@pytest.fixture(scope="module")
def tiny_tflite(tmp_path_factory) -> bytes:
    run = _models.untrained_run(tmp_path_factory.mktemp("tflite") / "tiny")
    return export.tflite_bytes(load_predictor(run, keras=True).keras_model)


def test_mutated_tflite_files_load_or_are_refused_in_one_line(tiny_tflite: bytes, tmp_path: Path):
    """Seeded byte mutations of a valid flat buffer: each loads and answers, or is refused with a
    MnistlabError; never another exception (the old code raised RuntimeError from allocate_tensors)."""
    rng = np.random.default_rng(SEED)
    outcomes = {"loaded": 0, "refused": 0}
    path = tmp_path / "model.tflite"
    for _ in range(150):
        data = bytearray(tiny_tflite)
        for at in rng.integers(0, len(data), size=int(rng.integers(1, 4))):
            data[at] = int(rng.integers(0, 256))
        path.write_bytes(bytes(data))
        try:
            predictor = load_predictor(path)
            assert predictor.logits(np.zeros((3, 28, 28, 1), np.float32)).shape == (3, 10)
            outcomes["loaded"] += 1
        except MnistlabError as exc:
            assert "\n" not in str(exc)
            outcomes["refused"] += 1
    assert outcomes["refused"] > 0 and outcomes["loaded"] > 0, outcomes


def test_tflite_control_flow_and_custom_ops_are_refused(tmp_path: Path):
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec((None, 28, 28, 1), tf.float32)])
    def looping(x):
        _, y = tf.while_loop(lambda i, y: i < 10 ** 9, lambda i, y: (i + 1, y + 1.0), (0, tf.zeros((1, 10))))
        return y + _logits(x)

    converter = tf.lite.TFLiteConverter.from_concrete_functions([looping.get_concrete_function()])
    (tmp_path / "loop.tflite").write_bytes(converter.convert())
    with pytest.raises(MnistlabError, match="loop.tflite: refused, .*(subgraphs|WHILE)"):
        load_predictor(tmp_path / "loop.tflite")


# ---------------------------------------------------------------------------- deadline
def test_a_first_call_past_its_deadline_is_refused():
    """The call blocks until the test releases it, so the deadline always passes first."""
    import threading

    release = threading.Event()
    try:
        with pytest.raises(MnistlabError, match="model.x: no answer for one image within 0.05 s; refused"):
            modelcheck.call_with_deadline(release.wait, 0.05, "model.x")
    finally:
        release.set()
    assert modelcheck.call_with_deadline(lambda: 7, 60, "fine") == 7
    with pytest.raises(MnistlabError, match=r"broken: fails on one blank image \(integer division"):
        modelcheck.call_with_deadline(lambda: 1 // 0 and None, 60, "broken")


# ---------------------------------------------------------------------------- a run's model.tflite
def untrained_run_model(tmp_path: Path) -> tuple[Path, RunFolder, np.ndarray, object]:
    """An untrained run's folder, its Keras model and 20 random images to check a conversion on."""
    pytest.importorskip("ai_edge_litert")
    run = _models.untrained_run(tmp_path / "run")
    images = np.random.default_rng(SEED).random((20, 28, 28, 1), dtype=np.float32)
    return run, RunFolder(run), images, load_predictor(run, keras=True).keras_model


def test_a_stale_or_swapped_tflite_is_ignored(tmp_path: Path):
    run, folder, images, model = untrained_run_model(tmp_path)
    check = folder.convert_to_tflite(model, images, log=lambda line: None)
    assert check["images"] == 20 and check["max_abs_probability_diff"] <= convert.TFLITE_TOLERANCE
    assert load_predictor(run).format == "tflite" and load_predictor(run / "model.keras").format == "keras"
    content = folder.tflite_file.read_bytes()
    folder.tflite_file.write_bytes(content[:-1] + bytes([content[-1] ^ 1]))  # swapped for another file
    assert load_predictor(run).format == "keras"
    folder.tflite_file.write_bytes(content)
    assert load_predictor(run).format == "tflite"
    model.layers[-1].bias.assign(np.ones(10, np.float32))
    folder.write_model(model)  # retrained: model.tflite is now stale
    assert load_predictor(run).format == "keras"


def test_the_tflite_check_compares_with_the_logits_training_already_has(tmp_path: Path):
    """Training passes its test logits instead of computing them again: the same check, and a wrong
    reference is caught (the file is not kept)."""
    _, folder, images, model = untrained_run_model(tmp_path)
    own = folder.convert_to_tflite(model, images, log=lambda line: None)
    logits = predict_logits(model, images)
    assert folder.convert_to_tflite(model, images, lambda line: None, logits) == own
    lines: list[str] = []
    assert folder.convert_to_tflite(model, images, lines.append, logits + 1.0 * (np.arange(10) == 3)) is None
    assert len(lines) == 1 and not folder.tflite_file.exists()


def test_a_failed_conversion_leaves_one_line_and_no_tflite(tmp_path: Path, monkeypatch):
    run = _models.untrained_run(tmp_path / "run")
    folder = RunFolder(run)
    folder.tflite_file.write_bytes(b"old")

    def broken(model, quantize=None, calibration=None):
        raise MnistlabError("TFLite conversion failed: no converter here")

    monkeypatch.setattr(convert, "tflite_bytes", broken)
    lines: list[str] = []
    assert folder.convert_to_tflite(load_predictor(run).keras_model, np.zeros((2, 28, 28, 1), np.float32),
                                    lines.append) is None
    assert lines == ["model.tflite not written (TFLite conversion failed: no converter here); "
                     "predict and serve will use model.keras"]
    assert not folder.tflite_file.exists() and load_predictor(run).format == "keras"


NO_TENSORFLOW = """
import json, sys
from mnistlab import predict, runs
predictor = runs.load_predictor(sys.argv[1])
results = predict.predict_files(predictor, [sys.argv[2]])
heavy = sorted(m for m in ("tensorflow", "keras", "jax", "torch") if m in sys.modules)
print(json.dumps({"format": predictor.format, "heavy": heavy, "results": results}))
"""


def test_predicting_from_a_run_with_its_tflite_imports_no_tensorflow(tmp_path: Path):
    """The predict path (load, preprocess, answer) of a run with a checked model.tflite runs on
    LiteRT alone, and answers as model.keras does."""
    pytest.importorskip("ai_edge_litert")
    import subprocess
    import sys

    from _models import SEVEN, draw
    from mnistlab import predict

    run = _models.untrained_run(tmp_path / "run")
    images = np.random.default_rng(SEED).random((20, 28, 28, 1), dtype=np.float32)
    assert RunFolder(run).convert_to_tflite(load_predictor(run).keras_model, images, log=lambda line: None)
    draw(SEVEN).save(tmp_path / "seven.png")
    child = subprocess.run([sys.executable, "-c", NO_TENSORFLOW, str(run), str(tmp_path / "seven.png")],
                           capture_output=True, text=True, timeout=300)
    assert child.returncode == 0, child.stderr[-2000:]
    answer = json.loads(child.stdout)
    assert answer["format"] == "tflite" and answer["heavy"] == []
    expected = predict.predict_files(load_predictor(run, keras=True), [tmp_path / "seven.png"])[0]
    assert answer["results"][0]["digit"] == expected["digit"]
    assert answer["results"][0]["probability"] == pytest.approx(expected["probability"], abs=1e-5)
