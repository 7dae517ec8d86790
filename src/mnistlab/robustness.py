"""How well a model reads digits unlike MNIST's: accuracy on every shift set, as one table.

``load_sets`` builds the sets of ``mnistlab.shifts`` (or reads them from ``<cache>/shifts/``, keyed
by the seed, size and a digest of the generators' and preprocessing's code and of the source
digits, so a stale set is never reused), ``evaluate_robustness`` scores one model on them and
``table`` lays the results of several models side by side, held-out sets apart. A digit that
preprocessing refused counts as an error: the user got no answer. ``add_command`` registers
``mnistlab robustness RUN [RUN ...]``.

Nothing here imports TensorFlow at module level: the CLI builds its parser from this file.
"""

from __future__ import annotations

import argparse
import hashlib
import zipfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from mnistlab import fileio, shifts
from mnistlab.config import POSITIVE, SEED, add_arguments, from_args, option
from mnistlab.data import DataConfig

CACHE_SUBDIR = "shifts"
TOP_ERRORS = 3  # most frequent (label -> prediction) pairs kept per set


@dataclass(frozen=True)
class RobustConfig:
    """Which shift sets, how big, from which seed, and whether to cache them."""

    n: int = option(2000, "images per set: a seeded subset of the 10,000 MNIST test digits, the same "
                    "for every set (other-writers has 1,797 at most)", check=POSITIVE)
    seed: int = option(0, "seed of every set", check=SEED)
    sets: tuple[str, ...] = option((), "set names, empty for all (listed above; clean is the reference row)")
    levels: tuple[str, ...] = option((), "only sets of these levels (moderate, severe, external), empty for all; "
                                     "clean is always kept")
    held_out: bool = option(True, "include the held-out sets (fonts-*, other-writers); --no-held-out when "
                            "choosing a recipe, so they stay unseen")
    cache: bool = option(True, "keep built sets in <cache>/shifts (a few MB each)")


@dataclass(frozen=True)
class Row:
    """One model on one set. ``accuracy`` is None when the set is unavailable (``note`` says why)."""

    set: str
    family: str
    level: str
    held_out: bool
    n: int
    correct: int
    refused: int  # digits preprocessing refused, counted as errors
    accuracy: float | None
    top_errors: tuple[tuple[int, int, int], ...]  # (label, prediction, count), most frequent first
    note: str


# ---------------------------------------------------------------------------- building and caching
def _digest(*parts: bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(hashlib.sha256(part).digest())
    return h.hexdigest()[:16]


def _code_digest() -> bytes:
    """The generators' and preprocessing's source: a changed recipe must not reuse old sets."""
    from mnistlab import preprocess

    return b"".join(Path(m.__file__).read_bytes() for m in (shifts, preprocess))


def _source_digest(spec: shifts.ShiftSet, test_digest: Any) -> bytes:
    """What the set is made from: the test digits, or the fonts found, or scikit-learn's version."""
    if spec.source == "mnist-test":
        return test_digest()
    if spec.source == "fonts":
        paths, _ = shifts.find_fonts(dict(spec.params)["style"])
        return "\n".join(str(p) for p in paths).encode()
    try:
        import sklearn
        return sklearn.__version__.encode()
    except ImportError:
        return b"none"


def cache_file(folder: Path, spec: shifts.ShiftSet, n: int, seed: int, digest: str) -> Path:
    """Where set ``spec`` of ``n`` images from ``seed`` is kept."""
    return folder / f"{spec.name}-n{n}-seed{seed}-{digest}.npz"


def _read_cached(path: Path) -> shifts.ShiftData | None:
    """A cached set, or None when missing or damaged (it is then rebuilt)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as f:
            images = (f["images"].astype(np.float32) / 255)[..., None]
            return shifts.ShiftData(images, f["labels"].astype(np.int64), str(f["note"]))
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):
        return None


def _write_cached(path: Path, built: shifts.ShiftData) -> None:
    pixels = np.round(built.images[..., 0] * 255).astype(np.uint8)  # exact: sets are 8-bit levels
    with fileio.atomic_path(path, suffix=".npz") as tmp:
        np.savez_compressed(tmp, images=pixels, labels=built.labels.astype(np.uint8), note=np.str_(built.note))


def load_sets(specs: Sequence[shifts.ShiftSet], config: RobustConfig = RobustConfig(),
              data_config: DataConfig = DataConfig()) -> list[tuple[shifts.ShiftSet, shifts.ShiftData | shifts.Unavailable]]:
    """Build (or read from the cache) each set; a set this machine cannot build comes back as
    its ``Unavailable`` error instead of being dropped. MNIST loads only if a set needs it."""
    from mnistlab import data

    loaded: dict[str, Any] = {}  # this call's MNIST test split and its digest, read once

    def test() -> tuple[np.ndarray, np.ndarray]:
        if "test" not in loaded:
            split = data.load(replace(data_config, validation_size=0)).test  # only the test file matters
            loaded["test"] = (split.images, split.labels)
        return loaded["test"]

    def test_digest() -> bytes:
        if "digest" not in loaded:
            images, labels = test()
            loaded["digest"] = _digest(images.tobytes(), labels.tobytes()).encode()
        return loaded["digest"]

    folder = data.cache_root(data_config) / CACHE_SUBDIR
    code = _code_digest() if config.cache else b""
    out: list[tuple[shifts.ShiftSet, shifts.ShiftData | shifts.Unavailable]] = []
    for spec in specs:
        try:
            path = None
            if config.cache:
                digest = _digest(code, spec.key().encode(), _source_digest(spec, test_digest))
                path = cache_file(folder, spec, config.n, config.seed, digest)
            built = _read_cached(path) if path else None
            if built is None:
                built = shifts.build_set(spec, config.n, config.seed, test() if spec.source == "mnist-test" else None)
                if path:
                    _write_cached(path, built)
            out.append((spec, built))
        except shifts.Unavailable as exc:
            out.append((spec, exc))
    return out


# ---------------------------------------------------------------------------- scoring
def score(spec: shifts.ShiftSet, built: shifts.ShiftData | shifts.Unavailable, predictions: np.ndarray | None) -> Row:
    """One set's row from predicted classes ``(N,)`` (refused digits count as errors)."""
    if isinstance(built, shifts.Unavailable):
        return Row(spec.name, spec.family, spec.level, spec.held_out, 0, 0, 0, None, (), f"unavailable: {built}")
    right = (predictions == built.labels) & ~built.refused
    wrong = ~right & ~built.refused
    pairs, counts = np.unique(np.stack([built.labels[wrong], predictions[wrong]], 1), axis=0, return_counts=True) \
        if wrong.any() else (np.zeros((0, 2), int), np.zeros(0, int))
    order = np.argsort(-counts, kind="stable")[:TOP_ERRORS]
    top = tuple((int(pairs[i, 0]), int(pairs[i, 1]), int(counts[i])) for i in order)
    n = len(built.labels)
    return Row(spec.name, spec.family, spec.level, spec.held_out, n, int(right.sum()), int(built.refused.sum()),
               float(right.mean()) if n else None, top, built.note)


def evaluate_robustness(predictor_or_run: Any, sets: Sequence[tuple[shifts.ShiftSet, Any]]) -> list[Row]:
    """Score a ``Predictor`` (or a run folder / model file, opened by ``runs.load_predictor``) on
    ``sets`` from ``load_sets``: one ``Row`` per set, in order."""
    from mnistlab.inference import Predictor

    if not isinstance(predictor_or_run, Predictor):
        from mnistlab import runs

        predictor_or_run = runs.load_predictor(predictor_or_run)
    rows = []
    for spec, built in sets:
        predictions = None
        if not isinstance(built, shifts.Unavailable):
            predictions = predictor_or_run.logits(built.images).argmax(axis=1)
        rows.append(score(spec, built, predictions))
    return rows


def worst(rows: Sequence[Row], held_out: bool = False, level: str | None = None) -> Row | None:
    """The row with the lowest accuracy among the (not) held-out sets, optionally of one level."""
    pool = [r for r in rows if r.accuracy is not None and r.held_out == held_out and r.set != "clean"
            and (level is None or r.level == level)]
    return min(pool, key=lambda r: r.accuracy) if pool else None


# ---------------------------------------------------------------------------- printing
def _percent(row: Row) -> str:
    return "unavailable" if row.accuracy is None else f"{100 * row.accuracy:.2f}"


def _errors(row: Row) -> str:
    return ", ".join(f"{a}→{b} ×{c}" for a, b, c in row.top_errors) or "-"


def table(results: dict[str, list[Row]]) -> str:
    """A Markdown table: one row per set (held-out sets last), one accuracy column (%) per model;
    with one model, its most frequent errors too. Then the worst set of each kind per model."""
    names = list(results)
    first = results[names[0]]
    single = len(names) == 1
    headers = ["set", "level", "n", "refused"] + [f"{n} %" for n in names] + (["most frequent errors"] if single else [])
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    for held_out in (False, True):
        for i, row in enumerate(first):
            if row.held_out != held_out:
                continue
            name = row.set + (" (held out)" if held_out else "")
            cells = [name, row.level, str(row.n) if row.accuracy is not None else "-", str(row.refused)]
            cells += [_percent(results[n][i]) for n in names]
            if single:
                cells.append(_errors(row) if row.accuracy is not None else row.note)
            lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    for name in names:
        lines.append(summary(name, results[name]))
    unavailable = [r for r in first if r.accuracy is None]
    lines += [f"{r.set}: {r.note}" for r in unavailable]
    return "\n".join(lines)


def summary(name: str, rows: Sequence[Row]) -> str:
    """One line: the worst moderate, severe and held-out set of one model."""
    parts = []
    for label, held_out, level in (("worst moderate", False, "moderate"), ("worst severe", False, "severe"),
                                   ("worst held-out", True, None)):
        row = worst(rows, held_out, level)
        if row is not None:
            parts.append(f"{label}: {row.set} {_percent(row)} % ({_errors(row)})")
    return f"{name}: " + "; ".join(parts)


# ---------------------------------------------------------------------------- command line
def run(paths: Sequence[str], config: RobustConfig, data_config: DataConfig) -> dict[str, list[Row]]:
    """Open every model first (a bad path fails before any set is built), then score each."""
    from mnistlab import runs

    predictors = {str(p): runs.load_predictor(p) for p in paths}
    specs = shifts.select(config.sets, config.levels, config.held_out)
    sets = load_sets(specs, config, data_config)
    return {name: evaluate_robustness(p, sets) for name, p in predictors.items()}


def cmd_robustness(args: argparse.Namespace) -> int:
    config = from_args(RobustConfig, args)
    data_config = from_args(DataConfig, args)  # no --dataset: the sets are made from MNIST's digits
    shifts.select(config.sets, config.levels, config.held_out)  # names checked before any model loads
    results = run(args.runs, config, data_config)
    print(table(results))
    if args.json:
        fileio.write_json(args.json, {"config": asdict(config), "results":
                                      {name: [asdict(r) for r in rows] for name, rows in results.items()}})
        print(f"wrote {args.json}")
    return 0


HELP = ("accuracy on test sets unlike MNIST's: stroke width, resolution, rotation, slant, drawn, photos, "
        "fonts, other writers")


def add_command(commands: argparse._SubParsersAction) -> None:
    """Register ``mnistlab robustness RUN [RUN ...]`` on the CLI's subcommands."""
    add_arguments_to(commands.add_parser("robustness", help=HELP))


def add_arguments_to(p: argparse.ArgumentParser) -> None:
    """The arguments of ``mnistlab robustness`` (the CLI adds them when that command runs)."""
    width = max(len(s.name) for s in shifts.SETS)
    listing = "\n".join(f"  {s.name:<{width}}  {s.level:<8}  {s.about}" + (" (held out)" if s.held_out else "")
                        for s in shifts.SETS)
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.description = ("Accuracy of each RUN on every shift set (a table; the worst set of each kind below it)."
                     "\n\nsets:\n" + listing)
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folders or model files (.keras, SavedModel, .tflite)")
    p.add_argument("--json", default=None, help="also write every row as JSON to this file (default: none)")
    add_arguments(p, RobustConfig, title="sets")
    add_arguments(p, DataConfig, skip=("dataset", "validation_size"), title="data")
    p.set_defaults(handler=cmd_robustness)
