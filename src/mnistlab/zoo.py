"""Reproduce the course: train every course model at the course's settings and tabulate results."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Callable

from mnistlab import fileio, models
from mnistlab.data import DataConfig, Dataset
from mnistlab.train import TrainConfig, resolve_recipe, train

COURSE_MODELS = ("softmax", "mlp", "mlp-sigmoid", "mlp2", "cnn-hvass", "cnn-deep", "cnn3")


def zoo_config(name: str, max_epochs: int | None, seed: int, course: bool = True) -> TrainConfig:
    """Course (or mnistlab's own) settings for ``name``; with ``max_epochs``, a longer run is cut to that."""
    config = TrainConfig(course=course, seed=seed, progress=False)
    if max_epochs is not None and _epochs_of(resolve_recipe(name, config)) > max_epochs:
        return dataclasses.replace(config, epochs=max_epochs)
    return config


def _epochs_of(recipe: models.Recipe, n_train: int = 55_000) -> float:
    return recipe.steps * recipe.batch_size / n_train if recipe.steps else recipe.epochs


def run_zoo(data: Dataset, out: str | os.PathLike, names: tuple[str, ...] = COURSE_MODELS,
            max_epochs: int | None = None, seed: int = 0, data_config: DataConfig = DataConfig(),
            log: Callable[[str], None] = print, course: bool = True) -> list[dict]:
    """Train and test each model in ``names`` at course (or own) settings; return one result row each."""
    rows = []
    for name in names:
        config = zoo_config(name, max_epochs, seed, course)
        recipe = resolve_recipe(name, config)
        log(f"== {name}: {recipe.optimizer} lr={recipe.learning_rate} batch={recipe.batch_size} "
            + (f"steps={recipe.steps}" if recipe.steps else f"epochs={recipe.epochs}"))
        result = train(name, data, Path(out) / name, config, data_config=data_config, log=log)
        spec = models.spec(name)
        row = {"model": name, "params": result.metrics["params"],
               "epochs": round(result.metrics["steps"] * recipe.batch_size / len(data.train), 1),
               "steps": result.metrics["steps"], "train_seconds": result.metrics["train_seconds"],
               "test_accuracy": result.metrics["test_accuracy"], "course_accuracy": spec.course_accuracy,
               "capped": course and config.epochs is not None,
               "settings": f"{recipe.optimizer} {recipe.learning_rate:g}, batch {recipe.batch_size}"}
        fileio.write_json(Path(out) / name / "zoo.json", row)
        rows.append(row)
        fileio.write_text(Path(out) / "results.md", results_markdown(collect_rows(out)))
    return rows


def collect_rows(out: str | os.PathLike) -> list[dict]:
    """Every model's row found under ``out`` (also from earlier ``zoo`` calls), in registry order."""
    paths = {p.parent.name: p for p in Path(out).glob("*/zoo.json")}
    return [json.loads(paths[name].read_text()) for name in models.MODELS if name in paths]


def results_markdown(rows: list[dict]) -> str:
    """The results as a Markdown table."""
    lines = ["| model | params | settings | epochs | train time (s) | test accuracy | course reported |",
             "|---|---:|---|---:|---:|---:|---:|"]
    for r in rows:
        source = models.spec(r["model"]).source
        course = f"{r['course_accuracy']:.1%} ({source})" if r["course_accuracy"] else f"– ({source})"
        epochs = f"{r['epochs']:g}" + (" (capped)" if r.get("capped") else "")
        lines.append(f"| {r['model']} | {r['params']:,} | {r['settings']} | {epochs} | "
                     f"{r['train_seconds']:.0f} | {r['test_accuracy']:.2%} | {course} |")
    return "\n".join(lines) + "\n"
