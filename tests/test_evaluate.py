"""Evaluation metrics against NumPy oracles, the evaluate/zoo/models/train CLI on tiny data."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from mnistlab import cli, zoo
from mnistlab.runs import RunFolder
from mnistlab.errors import MnistlabError
from mnistlab.evaluate import confusion_table, evaluate_logits, write_reports
from synthetic import synthetic_dataset, write_synthetic_idx


def test_metrics_match_numpy_oracle(tmp_path):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, 500)
    logits = rng.normal(size=(500, 10)).astype(np.float32)
    logits[np.arange(500), labels] += rng.uniform(0, 4, 500).astype(np.float32)  # mostly right
    result = evaluate_logits(logits, labels)
    predictions = logits.argmax(1)
    oracle = np.zeros((10, 10), int)
    np.add.at(oracle, (labels, predictions), 1)
    np.testing.assert_array_equal(result.confusion, oracle)
    assert result.accuracy == pytest.approx((predictions == labels).mean())
    shifted = logits - logits.max(1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(1, keepdims=True))
    assert result.loss == pytest.approx(-log_probs[np.arange(500), labels].mean(), rel=1e-5)
    precision, recall = result.precision_recall()
    for k in range(10):
        assert precision[k] == pytest.approx(((predictions == k) & (labels == k)).sum() / (predictions == k).sum())
        assert recall[k] == pytest.approx(((predictions == k) & (labels == k)).sum() / (labels == k).sum())
    wrong = result.misclassified()
    assert [w["index"] for w in wrong] == list(np.flatnonzero(predictions != labels))
    assert all(0 < w["confidence"] <= 1 for w in wrong)
    eval_path, csv_path = write_reports(tmp_path, result, "test")
    rows = list(csv.DictReader(csv_path.open()))
    assert len(rows) == len(wrong) and set(rows[0]) == {"index", "label", "prediction", "confidence"}
    saved = json.loads(eval_path.read_text())
    assert saved["confusion_matrix"] == oracle.tolist()


def test_confusion_table_lists_every_class():
    table = confusion_table(np.eye(10, dtype=int) * 7, tuple(str(d) for d in range(10)))
    lines = table.splitlines()
    assert len(lines) == 11 and lines[1].split()[:3] == ["0", "7", "0"]


def test_zoo_writes_results_table(tmp_path):
    rows = zoo.run_zoo(synthetic_dataset(), tmp_path, names=("softmax", "mlp"), max_epochs=1, log=[].append)
    assert [r["model"] for r in rows] == ["softmax", "mlp"]
    assert all(r["epochs"] == 1 for r in rows)  # capped from 150 and 40
    table = (tmp_path / "results.md").read_text()
    assert "| softmax |" in table and "90.7%" in table and "97.2%" in table


def test_zoo_cap_converts_steps_to_epochs():
    assert zoo.zoo_recipe("cnn-hvass", max_epochs=2) == {"epochs": 2}
    assert zoo.zoo_recipe("mlp2", max_epochs=50) == {}  # 10 epochs: under the cap


def test_zoo_checks_every_argument_before_training_and_continues_where_it_stopped(tmp_path):
    with pytest.raises(MnistlabError, match="unknown model 'nope'"):
        zoo.run_zoo(synthetic_dataset(), tmp_path / "z", names=("softmax", "nope"), max_epochs=1, log=[].append)
    assert not (tmp_path / "z").exists()  # softmax was not trained first
    first = zoo.run_zoo(synthetic_dataset(), tmp_path / "z", names=("softmax",), max_epochs=1, log=[].append)
    lines: list[str] = []
    again = zoo.run_zoo(synthetic_dataset(), tmp_path / "z", names=("softmax", "mlp"), max_epochs=1,
                        log=lines.append)
    assert lines[0].startswith("== softmax: done already") and again[0] == first[0]
    assert [r["model"] for r in again] == ["softmax", "mlp"]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return write_synthetic_idx(tmp_path_factory.mktemp("idx"))


def run_cli(*argv: str) -> int:
    return cli.main(list(argv))


def test_cli_train_evaluate_models(tiny_dir, tmp_path, capsys):
    run = tmp_path / "run"
    assert run_cli("train", "softmax", "--out", str(run), "--epochs", "3", "--data-dir", str(tiny_dir),
                   "--validation-size", "100", "--no-progress") == 0
    out = capsys.readouterr().out
    assert out.count("Train Epoch:") == 3 and "Train Finished takes:" in out and "Test Accuracy:" in out
    assert run_cli("evaluate", str(run)) == 0
    out = capsys.readouterr().out
    assert "Accuracy on Test-Set (softmax):" in out and "Confusion Matrix:" in out and "precision" in out
    assert (run / "misclassified-test.csv").is_file() and (run / "evaluation-test.json").is_file()
    assert run_cli("evaluate", str(run), "--untrained") == 0
    untrained = capsys.readouterr().out
    accuracy = float(untrained.split("):")[1].split("%")[0])
    assert accuracy < 40  # an untrained net is near chance
    assert run_cli("models") == 0
    listing = capsys.readouterr().out
    names = [line.split()[0] for line in listing.splitlines() if not line.startswith(" ")]
    assert names == ["softmax", "mlp", "mlp-sigmoid", "mlp2", "cnn-hvass", "cnn-deep", "cnn3", "cnn", "fast", "best"]
    assert "mnistlab: adamw 0.004 (onecycle), batch 128, 10 epochs" in listing  # cnn's own recipe
    assert "course:   rmsprop 0.001 (constant), batch 128, 10 epochs, rho 0.9" in listing  # mlp2's, from S0
    assert "7,850" in listing  # softmax: 784*10 + 10


@pytest.mark.parametrize("argv, message", [
    (["train", "nosuch", "--out", "X"], "unknown model 'nosuch'"),
    (["train", "mlp", "--out", "X", "--learning-rate", "-1"], "--learning-rate -1"),
    (["train", "mlp", "--out", "X", "--batch-size", "0"], "--batch-size 0"),
    (["train", "mlp", "--out", "X", "--filters", "8"], "no option filters"),
    (["evaluate", "/nonexistent/run"], "no such run folder"),
])
def test_cli_bad_options_are_one_line_errors(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert run_cli(*argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and message in err and "Traceback" not in err
    assert len(err.splitlines()) == 1
    assert not (tmp_path / "X").exists()


def _interrupt_when(proc: subprocess.Popen, marker: str) -> str:
    """Read the child's output; on the first line starting with ``marker`` send SIGINT; return all output."""
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith(marker):
            proc.send_signal(signal.SIGINT)
            break
    rest, _ = proc.communicate(timeout=240)
    return "".join(lines) + rest


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_ctrl_c_stops_the_cli_cleanly_and_resume_continues(tiny_dir, tmp_path):
    """A real SIGINT to a running `mnistlab train`, sent when its epoch-2 line is seen. The run is
    10,000 tiny epochs, so it cannot end before the signal lands however busy the machine is; the
    exact position and a bit-identical resume are tested in test_train.py."""
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "mnistlab.cli", "train", "mlp", "--out", str(run), "--epochs", "10000",
           "--data-dir", str(tiny_dir), "--validation-size", "100", "--no-progress", "--no-tensorboard"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    output = _interrupt_when(proc, "Train Epoch: 02")
    assert proc.returncode == 130, output
    assert "Traceback" not in output
    done = len(RunFolder(run).read_history())
    assert done >= 2 and not (run / "model.keras").exists()
    if (run / "checkpoints" / "interrupted.index").is_file():  # the signal landed mid-epoch
        assert f"interrupted in epoch {done + 1} after step" in output, output
        resumed = f"resumed from {run / 'checkpoints' / 'interrupted'}: epoch {done + 1}, step"
    else:  # in the last chunk of an epoch: stopped after it
        assert f"interrupted after epoch {done}: saved in" in output, output
        resumed = f"resumed from {run / 'checkpoints' / f'epoch-{done}'} after epoch {done}"
    proc = subprocess.Popen(cmd[:4] + ["--resume", "--out", str(run), "--no-progress"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env)
    output = _interrupt_when(proc, f"Train Epoch: {done + 1:02d}")
    assert proc.returncode == 130 and resumed in output, output
    rows = RunFolder(run).read_history()
    assert [r["epoch"] for r in rows] == list(range(1, len(rows) + 1)) and len(rows) > done  # none lost or repeated
