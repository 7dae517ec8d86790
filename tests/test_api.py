"""The Python API that ``import mnistlab`` gives a notebook: the course's steps in a few lines, the
same numbers as the CLI."""

from __future__ import annotations

import json
import pydoc
import subprocess
import sys

import numpy as np
import pytest

import mnistlab
from mnistlab import cli
from mnistlab.errors import MnistlabError
from synthetic import write_synthetic_idx


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return write_synthetic_idx(tmp_path_factory.mktemp("idx"))


@pytest.fixture(scope="module")
def data(tiny_dir):
    return mnistlab.load_data("mnist", data_dir=str(tiny_dir), validation_size=100)


def test_load_data_gives_the_course_splits(data, tiny_dir):
    assert (len(data.train), len(data.validation), len(data.test)) == (500, 100, 200)
    assert data.train.images.shape == (500, 28, 28, 1) and data.train.num_examples == 500
    flat = mnistlab.load_data("mnist", data_dir=str(tiny_dir), validation_size=100, one_hot=True, flatten=True)
    assert flat.train.images.shape == (500, 784) and flat.train.labels.shape == (500, 10)
    np.testing.assert_array_equal(flat.train.labels.argmax(1), data.train.labels)


def test_next_batch_walks_shuffled_passes_like_tf1(tiny_dir):
    split = mnistlab.load_data("mnist", data_dir=str(tiny_dir), validation_size=100).train
    seen = []
    for _ in range(5):  # 5 x 100 = one pass of 500
        images, labels = split.next_batch(100)
        assert images.shape == (100, 28, 28, 1) and labels.shape == (100,)
        seen.append(images.reshape(100, -1))
    assert split.epochs_completed == 1
    flat = np.concatenate(seen)
    order = [np.flatnonzero((split.images.reshape(500, -1) == row).all(1))[0] for row in flat]
    assert sorted(order) == list(range(500)) and order != list(range(500))  # every image once, shuffled
    images, _ = split.next_batch(450)
    images, _ = split.next_batch(100)  # 50 from the end of pass 2, 50 from the start of pass 3
    assert split.epochs_completed == 2 and images.shape[0] == 100
    again = mnistlab.load_data("mnist", data_dir=str(tiny_dir), validation_size=100).train
    np.testing.assert_array_equal(again.next_batch(100)[0].reshape(100, -1), seen[0])  # same seed, same batches
    with pytest.raises(MnistlabError, match="next_batch\\(0\\)"):
        split.next_batch(0)


def test_train_evaluate_plot_and_predict_in_a_few_lines(data, tiny_dir, tmp_path, capsys):
    run = tmp_path / "hvass"
    result = mnistlab.train_model("cnn-hvass", data, run, epochs=2, batch_size=32, filters=(4, 8), fc_units=(16,),
                                  seed=3, tensorboard=False, log=lambda line: None)
    assert [row["epoch"] for row in result.history] == [1, 2]
    saved = json.loads((run / "config.json").read_text())
    assert saved["arch"]["filters"] == [4, 8] and saved["recipe"]["epochs"] == 2 and saved["train"]["seed"] == 3
    evaluation = mnistlab.evaluate_run(run)
    assert evaluation.accuracy == pytest.approx(result.metrics["test_accuracy"])
    assert cli.main(["evaluate", str(run)]) == 0  # the CLI says the same
    assert f"{evaluation.accuracy:.2%}" in capsys.readouterr().out
    figure = mnistlab.plot(run, "confusion")
    assert type(figure).__module__.startswith("mnistlab") and hasattr(figure, "_repr_png_")
    model = mnistlab.build_model("cnn-hvass", filters=(4, 8), fc_units=(16,))
    assert model.count_params() == result.metrics["params"]


def test_preprocess_image_gives_the_models_input():
    from _models import SEVEN, draw

    seen = mnistlab.preprocess_image(np.asarray(draw(SEVEN).convert("L"), np.float32) / 255)
    assert seen.shape == (28, 28, 1) and seen.max() == pytest.approx(1.0)


def test_unknown_options_are_refused():
    with pytest.raises(MnistlabError, match="train_model: unknown option nope"):
        mnistlab.train_model("softmax", None, "x", nope=1)


def test_help_lists_the_api_and_import_loads_nothing_heavy():
    text = pydoc.render_doc(mnistlab)
    for name in mnistlab.__all__:
        assert name in text
    probe = "import sys, mnistlab\nprint(sorted(m for m in ('tensorflow', 'keras', 'numpy', 'matplotlib') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "[]"
    assert list(mnistlab.model_names())[:3] == ["softmax", "mlp", "mlp-sigmoid"]
