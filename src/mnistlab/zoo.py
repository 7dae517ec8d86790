"""Reproduce the course: train every course model at the course's settings and tabulate results."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

from mnistlab import fileio, models
from mnistlab.config import from_json
from mnistlab.data import DataConfig, Dataset
from mnistlab.errors import MnistlabError
from mnistlab.jobs import Job, data_args, run_jobs
from mnistlab.runs import RunFolder
from mnistlab.train import TrainConfig, resolve_recipe, train

COURSE_MODELS = ("softmax", "mlp", "mlp-sigmoid", "mlp2", "cnn-hvass", "cnn-deep", "cnn3")
ZOO_FILE = "zoo.json"  # in each model's run folder: its row of the table


def zoo_recipe(name: str, max_epochs: int | None, course: bool = True) -> dict[str, int]:
    """Recipe overrides for ``name`` in the zoo: with ``max_epochs``, a longer recipe is cut to that."""
    if max_epochs is not None and _epochs_of(resolve_recipe(name, course)) > max_epochs:
        return {"epochs": max_epochs}
    return {}


def _epochs_of(recipe: models.Recipe, n_train: int = 55_000) -> float:
    return recipe.steps * recipe.batch_size / n_train if recipe.steps else recipe.epochs


def check_zoo(names: tuple[str, ...], max_epochs: int | None) -> None:
    """Every argument checked before any training: unknown models, a bad cap."""
    for name in names:
        models.spec(name)
    if max_epochs is not None and max_epochs < 1:
        raise MnistlabError(f"--max-epochs {max_epochs}: expected a positive integer")


def zoo_jobs(names: tuple[str, ...], out: str | os.PathLike, max_epochs: int | None, seed: int,
             data_config: DataConfig, course: bool = True) -> list[Job]:
    """One ``mnistlab train`` job per model, for ``--jobs`` / ``--shard``."""
    jobs = []
    for name in names:
        args = [name, "--seed", str(seed), *(["--course"] if course else [])]
        args += [f"--{k}={v}" for k, v in zoo_recipe(name, max_epochs, course).items()]
        jobs.append(Job(name, RunFolder(Path(out) / name), tuple(args + data_args(data_config))))
    return jobs


def zoo_row(name: str, folder: RunFolder, course: bool, capped: bool) -> dict:
    """A model's row of the table, from its finished run folder (written into it as zoo.json)."""
    metrics, timing = folder.read_metrics(), folder.read_timing()
    recipe = from_json(models.Recipe, folder.read_config()["recipe"])
    row = {"model": name, "params": metrics["params"],
           "epochs": round(metrics["steps"] * recipe.batch_size / metrics["train_images"], 1),
           "steps": metrics["steps"], "train_seconds": timing.get("train_seconds"),
           "test_accuracy": metrics["test_accuracy"], "course_accuracy": models.spec(name).course_accuracy,
           "capped": course and capped,
           "settings": f"{recipe.optimizer} {recipe.learning_rate:g}, batch {recipe.batch_size}"}
    fileio.write_json(folder.path / ZOO_FILE, row)
    return row


def run_zoo(data: Dataset | Callable[[], Dataset], out: str | os.PathLike, names: tuple[str, ...] = COURSE_MODELS,
            max_epochs: int | None = None, seed: int = 0, data_config: DataConfig = DataConfig(),
            log: Callable[[str], None] = print, course: bool = True, jobs: int = 1,
            shard: str | None = None) -> list[dict]:
    """Train and test each model in ``names`` at course (or own) settings; return one result row each.

    ``data`` is the data set, or a function loading it (not called when the models train in other
    processes: ``jobs`` > 1 or a ``shard``). Run again into the same ``out``, it keeps the models
    already done and resumes an interrupted one."""
    check_zoo(names, max_epochs)
    if jobs > 1 or shard:
        done = run_jobs(zoo_jobs(names, out, max_epochs, seed, data_config, course), jobs, shard, log)
        rows = [zoo_row(job.name, job.folder, course, bool(zoo_recipe(job.name, max_epochs, course))) for job in done]
    else:
        rows = []
        for name in names:
            folder = RunFolder(Path(out) / name)
            if folder.model_file.is_file() and folder.metrics_file.is_file():
                log(f"== {name}: done already ({folder.path})")
            else:
                overrides = zoo_recipe(name, max_epochs, course)
                log(f"== {name}: {resolve_recipe(name, course, overrides).summary()}")
                data = data() if callable(data) else data
                train(name, data, folder.path, TrainConfig(course=course, seed=seed, progress=False), overrides,
                      data_config=data_config, log=log, resume=folder.is_run())
            rows.append(zoo_row(name, folder, course, bool(zoo_recipe(name, max_epochs, course))))
    fileio.write_text(Path(out) / "results.md", results_markdown(collect_rows(out)))
    return rows


def collect_rows(out: str | os.PathLike) -> list[dict]:
    """Every model's row found under ``out`` (also from earlier ``zoo`` calls), in registry order."""
    paths = {p.parent.name: p for p in Path(out).glob(f"*/{ZOO_FILE}")}
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
