"""Scoring models on the shift sets: counts against hand-made predictions, the cache, unavailable
sets reported instead of dropped, the table, the command, and (slow, real MNIST) the oracle that
the shifts do shift: a trained model is clearly worse on severe sets than on clean digits.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

import _models
from mnistlab import robustness, shifts
from mnistlab.data import DataConfig
from mnistlab.errors import MnistlabError
from mnistlab.inference import Predictor

CHEAP = ("clean", "lowres-8", "blur-moderate", "offcentre-moderate")  # no preprocessing: fast to build


def constant_predictor(digit: int) -> Predictor:
    """A Predictor that always answers ``digit``: its accuracy is the share of that label."""
    def call(x: np.ndarray) -> np.ndarray:
        logits = np.zeros((len(x), 10), np.float32)
        logits[:, digit] = 1
        return logits
    return Predictor("always-" + str(digit), "keras", Path("."), None, {}, call)


def data_config(tiny_mnist_dir: Path, tmp_path: Path) -> DataConfig:
    return DataConfig(data_dir=str(tiny_mnist_dir), cache_dir=str(tmp_path / "cache"), validation_size=10, download=False)


# ---------------------------------------------------------------------------- scoring
def test_score_counts_refused_digits_as_errors_and_names_the_top_errors():
    images = np.ones((6, 28, 28, 1), np.float32)
    images[5] = 0  # refused by preprocessing
    built = shifts.ShiftData(images, np.array([1, 1, 8, 8, 8, 2]))
    row = robustness.score(shifts.get("clean"), built, np.array([1, 7, 1, 1, 8, 2]))
    assert (row.n, row.correct, row.refused) == (6, 2, 1)
    assert row.accuracy == pytest.approx(2 / 6)
    assert row.top_errors == ((8, 1, 2), (1, 7, 1))  # the refused 2 is not an error of the model


def test_evaluate_robustness_against_a_known_predictor(tiny_mnist_dir: Path, tmp_path: Path):
    config = robustness.RobustConfig(n=20, sets=CHEAP)
    sets = robustness.load_sets(shifts.select(config.sets), config, data_config(tiny_mnist_dir, tmp_path))
    rows = robustness.evaluate_robustness(constant_predictor(3), sets)
    assert [r.set for r in rows] == list(CHEAP)
    for row, (_, built) in zip(rows, sets):
        assert row.accuracy == pytest.approx(np.mean(built.labels == 3))  # the tiny labels cycle 0-9: 0.1
        assert row.n == 20 and row.refused == 0
    assert robustness.worst(rows) is not None and robustness.worst(rows).set != "clean"


# ---------------------------------------------------------------------------- cache
def test_sets_are_cached_exactly_and_rebuilt_when_damaged(tiny_mnist_dir: Path, tmp_path: Path):
    config = robustness.RobustConfig(n=20, sets=("clean", "offcentre-moderate"))
    dc = data_config(tiny_mnist_dir, tmp_path)
    first = robustness.load_sets(shifts.select(config.sets), config, dc)
    files = sorted((tmp_path / "cache" / robustness.CACHE_SUBDIR).glob("*.npz"))
    assert [f.name.split("-n20-")[0] for f in files] == ["clean", "offcentre-moderate"]
    again = robustness.load_sets(shifts.select(config.sets), config, dc)
    for (_, a), (_, b) in zip(first, again):
        np.testing.assert_array_equal(a.images, b.images)
        np.testing.assert_array_equal(a.labels, b.labels)
    fresh = robustness.load_sets(shifts.select(config.sets), robustness.RobustConfig(n=20, sets=config.sets, cache=False), dc)
    np.testing.assert_array_equal(fresh[1][1].images, first[1][1].images)  # cached == built
    files[1].write_bytes(b"not a zip file")
    rebuilt = robustness.load_sets(shifts.select(config.sets), config, dc)
    np.testing.assert_array_equal(rebuilt[1][1].images, first[1][1].images)
    other_seed = robustness.load_sets(shifts.select(config.sets), robustness.RobustConfig(n=20, seed=1, sets=config.sets), dc)
    assert not np.array_equal(other_seed[1][1].images, first[1][1].images)
    assert len(list((tmp_path / "cache" / robustness.CACHE_SUBDIR).glob("*.npz"))) == 4
    assert not list((tmp_path / "cache" / robustness.CACHE_SUBDIR).glob("*.part"))


def test_an_unavailable_set_is_reported_not_dropped(tiny_mnist_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(shifts, "find_fonts", lambda style, dirs=(), half="": ([], ["fonts-comic-neue"]))
    config = robustness.RobustConfig(n=20, sets=("clean", "fonts-hand"))
    sets = robustness.load_sets(shifts.select(config.sets), config, data_config(tiny_mnist_dir, tmp_path))
    rows = robustness.evaluate_robustness(constant_predictor(0), sets)
    assert rows[1].set == "fonts-hand" and rows[1].accuracy is None
    assert rows[1].note == "unavailable: no hand fonts of the test half installed; apt-get install fonts-comic-neue"
    text = robustness.table({"a": rows})
    assert "| fonts-hand (held out) | moderate | - | 0 | unavailable |" in text
    assert "fonts-hand: unavailable: no hand fonts of the test half installed" in text


# ---------------------------------------------------------------------------- table
def row(name: str, accuracy: float, held_out: bool = False, level: str = "moderate") -> robustness.Row:
    return robustness.Row(name, "x", level, held_out, 100, round(accuracy * 100), 0, accuracy, ((8, 1, 5),), "")


def test_table_puts_held_out_sets_last_and_names_the_worst():
    a = [row("clean", 0.99, level="none"), row("fonts-hand", 0.80, held_out=True), row("thick-moderate", 0.95),
         row("blur-severe", 0.90, level="severe")]
    b = [row("clean", 0.995, level="none"), row("fonts-hand", 0.85, held_out=True), row("thick-moderate", 0.97),
         row("blur-severe", 0.93, level="severe")]
    text = robustness.table({"runs/cnn": a, "runs/best": b})
    lines = text.splitlines()
    assert lines[0] == "| set | level | n | refused | runs/cnn % | runs/best % |"
    assert [l.split(" | ")[0] for l in lines[2:6]] == ["| clean", "| thick-moderate", "| blur-severe",
                                                        "| fonts-hand (held out)"]
    assert "| thick-moderate | moderate | 100 | 0 | 95.00 | 97.00 |" in lines
    assert ("runs/cnn: worst moderate: thick-moderate 95.00 % (8→1 ×5); worst severe: blur-severe 90.00 % "
            "(8→1 ×5); worst held-out: fonts-hand 80.00 % (8→1 ×5)") in lines
    single = robustness.table({"runs/cnn": a})
    assert single.splitlines()[0].endswith("| runs/cnn % | most frequent errors |")


# ---------------------------------------------------------------------------- command
def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mnistlab")
    robustness.add_command(p.add_subparsers(dest="command", required=True))
    return p


def test_command_prints_the_table_and_writes_json(tiny_mnist_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture):
    run = _models.untrained_run(tmp_path / "tiny-run")
    args = parser().parse_args(["robustness", str(run), "--n", "20", "--sets", "clean,lowres-8",
                                "--data-dir", str(tiny_mnist_dir), "--cache-dir", str(tmp_path / "cache"),
                                "--no-download", "--json", str(tmp_path / "out.json")])
    assert args.handler(args) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == f"| set | level | n | refused | {run} % | most frequent errors |"
    assert "| lowres-8 | severe | 20 | 0 |" in out
    saved = json.loads((tmp_path / "out.json").read_text())
    assert saved["config"]["n"] == 20 and [r["set"] for r in saved["results"][str(run)]] == ["clean", "lowres-8"]


@pytest.mark.parametrize("argv, message", [
    (["--sets", "nope"], r"^--sets: unknown set 'nope'"),
    (["--levels", "hard"], r"^--levels: unknown level 'hard'"),
    (["--n", "0"], r"^--n 0: expected a positive number"),
])
def test_command_rejects_bad_flags_in_one_line(argv, message, tmp_path: Path):
    args = parser().parse_args(["robustness", str(tmp_path / "no-such-run"), *argv])
    with pytest.raises(MnistlabError, match=message):
        args.handler(args)


def test_command_names_a_missing_run(tmp_path: Path):
    args = parser().parse_args(["robustness", str(tmp_path / "no-such-run"), "--sets", "clean"])
    with pytest.raises(MnistlabError, match="no-such-run"):
        args.handler(args)


def test_help_lists_every_set():
    lines = parser()._subparsers._group_actions[0].choices["robustness"].format_help().splitlines()
    for spec in shifts.SETS:
        assert any(line.split()[:2] == [spec.name, spec.level] for line in lines if line.startswith("  ")), spec.name


# ---------------------------------------------------------------------------- real MNIST
SEVERE = ("thin-severe", "thick-severe", "lowres-8", "blur-severe", "rotate-severe", "shear-severe",
          "squeeze-severe", "small-severe", "offcentre-severe", "drawn-severe")


@pytest.mark.slow
@pytest.mark.integration
def test_a_trained_model_is_clearly_worse_on_severe_sets(real_mnist, tmp_path_factory, tmp_path: Path):
    folder = _models.trained_run(real_mnist, tmp_path_factory)
    config = robustness.RobustConfig(n=500, sets=("clean",) + SEVERE, cache=False)
    sets = [(spec, shifts.build_set(spec, config.n, config.seed, (real_mnist.test.images, real_mnist.test.labels)))
            for spec in shifts.select(config.sets)]
    rows = {r.set: r for r in robustness.evaluate_robustness(folder, sets)}
    clean = rows["clean"].accuracy
    assert clean > 0.94
    drops = {name: clean - rows[name].accuracy for name in SEVERE}
    assert np.mean(list(drops.values())) > 0.08, drops  # the shifts shift (seen: 0.19 on average)
    assert sum(d > 0.02 for d in drops.values()) >= 7, drops  # most of them, not one outlier (seen: 8 of 10)
