"""Evaluation metrics against NumPy oracles, the evaluate/zoo/models/train CLI on tiny data."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from mnistlab import cli, zoo
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
    config = zoo.zoo_config("cnn-hvass", max_epochs=2, seed=0)
    assert config.course and config.epochs == 2
    assert zoo.zoo_config("mlp2", max_epochs=50, seed=0).epochs is None  # 10 epochs: under the cap


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
    assert (run / "misclassified.csv").is_file() and (run / "evaluation.json").is_file()
    assert run_cli("evaluate", str(run), "--untrained") == 0
    untrained = capsys.readouterr().out
    accuracy = float(untrained.split("):")[1].split("%")[0])
    assert accuracy < 40  # an untrained net is near chance
    assert run_cli("models") == 0
    listing = capsys.readouterr().out
    for name in ("softmax", "mlp", "mlp-sigmoid", "mlp2", "cnn-hvass", "cnn-deep", "cnn3", "cnn"):
        assert f"\n{name} " in listing
    assert "7,850" in listing  # softmax: 784*10 + 10


@pytest.mark.parametrize("argv, message", [
    (["train", "nosuch", "--out", "X"], "unknown model 'nosuch'"),
    (["train", "mlp", "--out", "X", "--learning-rate", "-1"], "--learning-rate -1"),
    (["train", "mlp", "--out", "X", "--batch-size", "0"], "--batch-size 0"),
    (["train", "mlp", "--out", "X", "--filters", "8"], "no option filters"),
    (["evaluate", "/nonexistent/run"], "expected a run folder"),
])
def test_cli_bad_options_are_one_line_errors(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert run_cli(*argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and message in err and "Traceback" not in err
    assert len(err.splitlines()) == 1
    assert not (tmp_path / "X").exists()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_ctrl_c_saves_checkpoint_and_resume_finishes(tiny_dir, tmp_path):
    """A real SIGINT to a running `mnistlab train`, then `--resume` to the end."""
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "mnistlab.cli", "train", "mlp", "--out", str(run), "--epochs", "40",
           "--data-dir", str(tiny_dir), "--validation-size", "100", "--no-progress", "--no-tensorboard"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines = []
    deadline = time.monotonic() + 240
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("Train Epoch: 02"):
            proc.send_signal(signal.SIGINT)
            break
        assert time.monotonic() < deadline
    rest, _ = proc.communicate(timeout=120)
    output = "".join(lines) + rest
    assert proc.returncode == 130, output
    assert "interrupted: checkpoint saved" in output and "--resume" in output
    assert "Traceback" not in output
    assert not (run / "model.keras").exists()
    done = subprocess.run(cmd[:4] + ["--resume", "--out", str(run), "--no-progress"], capture_output=True,
                          text=True, env=env, timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "resumed from" in done.stdout and "Train Epoch: 40" in done.stdout
    assert (run / "model.keras").is_file()
    history = (run / "history.csv").read_text().splitlines()
    assert len(history) == 41  # header + 40 epochs, none lost or repeated
