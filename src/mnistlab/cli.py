"""The ``mnistlab`` command: parses options, calls the library, prints. Nothing else."""

from __future__ import annotations

import argparse
import json
import sys

from typing import TYPE_CHECKING, Callable, Sequence

from mnistlab import __version__
from mnistlab.config import add_argument, add_arguments, from_args, from_json, given
from mnistlab.errors import MnistlabError

if TYPE_CHECKING:
    from mnistlab.data import DataConfig

Handler = Callable[[argparse.Namespace], int]


def _data_config(args: argparse.Namespace) -> "DataConfig":
    from mnistlab.data import DataConfig

    return from_args(DataConfig, args)


def _saved_data_config(saved: dict, args: argparse.Namespace) -> "DataConfig":
    """A run's own data settings, with any data flags the user gave on top."""
    from mnistlab.data import DataConfig

    return from_args(DataConfig, args, base=from_json(DataConfig, saved["data"]))


# ---------------------------------------------------------------------------- data
def cmd_data_info(args: argparse.Namespace) -> int:
    from mnistlab import data

    summary = data.describe(data.load(_data_config(args)))
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"dataset: {summary['dataset']}")
    print(f"source:  {summary['source']} ({summary['data_dir']})")
    for name, s in summary["splits"].items():
        print(f"{name:<10} images {tuple(s['images'])} {s['dtype']}  labels {tuple(s['labels'])}  "
              f"pixel mean {s['pixel_mean']:.4f} std {s['pixel_std']:.4f}")
        print(f"{'':<10} label counts {' '.join(str(c) for c in s['label_counts'])}")
    return 0


def cmd_data_show(args: argparse.Namespace) -> int:
    from mnistlab import data

    ds = data.load(_data_config(args))
    split = ds.split(args.split)
    if not 0 <= args.index < len(split):
        raise MnistlabError(f"--index {args.index}: expected 0..{len(split) - 1} for the {args.split} split")
    image = split.images[args.index].reshape(data.IMAGE_SIDE, data.IMAGE_SIDE)
    for row in image:  # at most 80 columns: 28 values of two characters, or of three in two halves
        if args.raw:
            levels = [f"{round(v * 255):3d}" for v in row]
            print(" ".join(levels[:14]) + "\n  " + " ".join(levels[14:]))
        else:
            print(" ".join(str(min(9, round(v * 10))) if v else "." for v in row))
    label = int(split.labels[args.index])
    print(f"{args.split}[{args.index}] label={label} ({ds.facts.class_names[label]})")
    return 0


def cmd_data_grid(args: argparse.Namespace) -> int:
    from pathlib import Path

    from mnistlab import data, plots

    if Path(args.out).is_dir():  # checked before the data is loaded
        raise MnistlabError(f"--out {args.out}: is a folder; expected a PNG file name, e.g. {Path(args.out) / 'grid.png'}")
    ds = data.load(_data_config(args))
    split = ds.split(args.split)
    if not 1 <= args.count <= plots.MAX_GRID:
        raise MnistlabError(f"--count {args.count}: expected 1..{plots.MAX_GRID}")
    if not 0 <= args.index <= len(split) - args.count:
        raise MnistlabError(f"--index {args.index}: expected 0..{len(split) - args.count} for {args.count} images")
    sel = slice(args.index, args.index + args.count)
    titles = [f"label={ds.facts.class_names[int(y)]}" for y in split.labels[sel]]
    try:
        plots.save_figure(plots.image_grid(split.images[sel], titles), args.out)
    except OSError as exc:
        raise MnistlabError(f"--out {args.out}: cannot write ({exc.strerror or exc}); "
                            f"expected a PNG file path in a writable folder") from None
    print(f"wrote {args.out}")
    return 0


def cmd_data_download(args: argparse.Namespace) -> int:
    from mnistlab import data

    files = data.download(_data_config(args))
    for path in files.values():
        print(f"ok  {path}")
    return 0


def cmd_data_verify(args: argparse.Namespace) -> int:
    from mnistlab import data

    results = data.verify(_data_config(args))
    for path, ok in results.values():
        print(f"{'ok ' if ok else 'BAD'} {path}")
    if not all(ok for _, ok in results.values()):
        raise MnistlabError("some files do not match the known SHA-256 of their content; "
                            "delete them and run `mnistlab data download`")
    return 0


# ---------------------------------------------------------------------------- models, train, evaluate, zoo
def cmd_models(args: argparse.Namespace) -> int:
    from mnistlab import models, runtime
    from mnistlab.train import resolve_recipe

    for name, spec in models.MODELS.items():
        reported = f", course reported {spec.course_accuracy:.1%} ({spec.source})" if spec.course_accuracy else ""
        # the model and recipe `train` uses on this CPU (fast is narrower and longer in float32)
        recipe = resolve_recipe(name)
        here = models.precision_options(name, runtime.resolve_precision(recipe.precision))
        print(f"{name:<12} {models.build(name, **here).count_params():>10,} parameters  {spec.description}")
        print(f"{'':<12} mnistlab: {recipe.summary()}")
        print(f"{'':<12} course:   {spec.course.summary()}{reported}")
    return 0


def _arch_given(args: argparse.Namespace) -> dict:
    from mnistlab import models

    return {k: getattr(args, k) for k in models.builder_parameters() if getattr(args, k, None) is not None}


def cmd_train(args: argparse.Namespace) -> int:
    from mnistlab import data, models, runs, train
    from mnistlab.data import DataConfig

    folder = runs.RunFolder(args.out)
    config_given, recipe_given = given(train.TrainConfig, args), given(models.Recipe, args)
    arch_given, data_given = _arch_given(args), given(DataConfig, args)
    if args.resume:  # every check before any work
        settings = train.settings_to_resume(folder, args.model, config_given, recipe_given, arch_given, data_given)
        config, data_config = settings.train, settings.data
    else:
        if args.model is None:
            raise MnistlabError("train: expected a MODEL name (see `mnistlab models`) unless --resume")
        config, data_config = from_args(train.TrainConfig, args), from_args(DataConfig, args)
        settings = train.resolve_settings(args.model, config, recipe_given, arch_given, data_config)
    dataset = data.load(data_config)
    result = train.train(settings.model, dataset, folder.path, config, recipe_given, arch_given, data_config,
                         resume=args.resume)
    if result.chief:
        print(f"run saved in {args.out}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from mnistlab import data, evaluate, models, runs, runtime

    folder = runs.RunFolder(args.run)
    saved = folder.read_config()
    ds = data.load(_saved_data_config(saved, args))
    if args.untrained:
        runtime.configure_tensorflow(saved["train"]["seed"])
        model = models.build(saved["model"], **{k: tuple(v) if isinstance(v, list) else v
                                                for k, v in saved["arch"].items()})
    else:
        model = runs.load_model(args.run)
    temperature = 1.0 if args.untrained else folder.temperature()
    result = evaluate.evaluate_split(model, ds.split(args.split), temperature=temperature)
    label = "untrained " if args.untrained else ""
    print(f"Accuracy on {args.split.title()}-Set ({label}{saved['model']}): {result.accuracy:.2%} "
          f"({result.correct} / {len(result.labels)})   loss {result.loss:.4f}")
    print(f"Calibration: temperature {temperature:.3f}" + (" (fitted on validation)" if temperature != 1.0 else "")
          + f"; ECE {result.ece_uncalibrated:.2%} -> {result.ece:.2%}")
    kept = result.selective()
    print(f"Unsure: {1 - kept['kept']:.2%} of answers (4 or 9?); the rest {kept['accuracy_kept']:.2%} right, "
          f"{kept['errors_flagged']:.0%} of errors caught")
    print("Confusion Matrix:")
    print(evaluate.confusion_table(result.confusion, ds.facts.class_names))
    precision, recall = result.precision_recall()
    print("class      precision  recall")
    for name, p_, r_ in zip(ds.facts.class_names, precision, recall):
        print(f"{name[:10]:<10} {evaluate.format_rate(p_):>9} {evaluate.format_rate(r_):>7}")
    wrong = result.misclassified()
    print(f"misclassified: {len(wrong)}")
    for m in wrong[: args.show_errors]:
        print(f"index={m['index']} label={m['label']} prediction={m['prediction']} confidence={m['confidence']:.3f}")
    if not args.untrained:
        eval_path, csv_path = evaluate.write_reports(args.run, result, args.split)
        print(f"wrote {eval_path} and {csv_path}")
    return 0


def cmd_zoo(args: argparse.Namespace) -> int:
    from mnistlab import data, zoo

    from mnistlab import jobs

    names = tuple(args.models) if args.models else zoo.COURSE_MODELS
    zoo.check_zoo(names, args.max_epochs)
    jobs.check_jobs(args.jobs)
    jobs.parse_shard(args.shard)
    data_config = _data_config(args)
    rows = zoo.run_zoo(lambda: data.load(data_config), args.out, names, args.max_epochs, args.seed, data_config,
                       course=not args.own, jobs=args.jobs, shard=args.shard)
    print(zoo.results_markdown(rows))
    print(f"wrote {args.out}/results.md")
    return 0


def cmd_ensemble(args: argparse.Namespace) -> int:
    from mnistlab import data, ensemble, runs

    data_config = _saved_data_config(runs.RunFolder(args.runs[0]).read_config(), args)
    result = ensemble.evaluate_ensemble(args.runs, data.load(data_config).split(args.split))
    for run, accuracy in zip(args.runs, result.member_accuracies):
        print(f"{accuracy:.2%}  {run}")
    ev = result.evaluation
    print(f"ensemble of {len(args.runs)} on {args.split}: accuracy {ev.accuracy:.2%} "
          f"({ev.correct} / {len(ev.labels)})   loss {ev.loss:.4f}")
    return 0


# ---------------------------------------------------------------------------- plot, report
def _progress(message: str) -> None:
    """What a slow plot or report is doing, on stderr (stdout keeps only the result)."""
    print(message, file=sys.stderr, flush=True)


def cmd_plot(args: argparse.Namespace) -> int:
    from mnistlab import analysis, report

    path = report.draw(analysis.Run(args.run), args.kind, args.out, index=args.index, count=args.count,
                       layer=args.layer, channel=args.channel, log=_progress)
    print(f"wrote {path}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from mnistlab import analysis, report

    print(f"wrote {report.write_report(analysis.Run(args.run), args.out, index=args.index, log=_progress)}")
    return 0


def cmd_notebooks(args: argparse.Namespace) -> int:
    from mnistlab import lessons

    for path, status in lessons.copy_lessons(args.dir, force=args.force).items():
        print(f"{status:<9} {path}")
    print(f"open them with `jupyter lab {args.dir}` (pip install jupyterlab); "
          f"they find MNIST as `mnistlab data info` does")
    return 0


# ---------------------------------------------------------------------------- preprocess, predict, serve, export
def cmd_preprocess(args: argparse.Namespace) -> int:
    from mnistlab import preprocess

    preprocess.quiet_pillow_size_warning()
    image = preprocess.preprocess(args.image)
    if args.out is None:
        print(preprocess.ascii_art(image))
        return 0
    preprocess.save_seen(image, args.out, args.scale)
    print(f"wrote {args.out}: the 28 x 28 input the model sees" + (f", {args.scale} px per pixel" if args.scale > 1 else ""))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from mnistlab import predict, preprocess, runs

    preprocess.quiet_pillow_size_warning()
    predictor = runs.load_predictor(args.run)
    results = predict.predict_files(predictor, args.images, args.top)
    if args.json:
        print(json.dumps({"model": predictor.name, "format": predictor.format, "results": results}, indent=2))
    for r in results if not args.json else ():
        if "error" in r:
            print(f"error: {r['error']}")
            continue
        others = ", ".join(f"{t['digit']} ({t['probability']:.1%})" for t in r["top"][1:])
        print(f"{r['file']}: {predict.verdict(r)}" + (f"  then {others}" if others and not r["unsure"] else ""))
    return 1 if any("error" in r for r in results) else 0


def cmd_serve(args: argparse.Namespace) -> int:
    from mnistlab import serve

    serve.serve(args.run, from_args(serve.ServeConfig, args))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from mnistlab import export

    out = export.export(args.run, args.format, args.out, force=args.force, quantize=args.quantize)
    print(f"wrote {out} ({args.format}{' ' + args.quantize if args.quantize else ''}); "
          f"`mnistlab predict {out} IMG` uses it")
    check = export.read_check(out)
    if check:
        print(export.describe_check(check))
    return 0


# ---------------------------------------------------------------------------- parser
# Each command's arguments are added only when that command runs (or for the whole tree, with
# ``build_parser()``), so `mnistlab --help` and a one-image `predict` import nothing they do not use.
MODEL_HELP = "run folder, .keras file, SavedModel folder or .tflite file"
SPLITS = ("train", "validation", "test")


def _data_options(p: argparse.ArgumentParser) -> None:
    from mnistlab.data import DataConfig

    add_arguments(p, DataConfig)


def _args_data(p: argparse.ArgumentParser) -> None:
    data_cmds = p.add_subparsers(dest="data_command", required=True, metavar="DATA_COMMAND")
    q = data_cmds.add_parser("info", help="where the data came from, shapes, label counts, pixel mean/std")
    q.add_argument("--json", action="store_true", help="print JSON (default: False)")
    _data_options(q)
    q.set_defaults(handler=cmd_data_info)

    q = data_cmds.add_parser("show", help="print one image as numbers, with its label")
    q.add_argument("--split", default="test", choices=SPLITS, help="split (default: test)")
    q.add_argument("--index", type=int, default=0, help="image index in the split (default: 0)")
    q.add_argument("--raw", action="store_true", help="print 0-255 grey levels (two lines per row) instead of "
                   "tenths of [0, 1] (., 1 .. 9; default: False)")
    _data_options(q)
    q.set_defaults(handler=cmd_data_show)

    q = data_cmds.add_parser("grid", help="save a labelled grid of images as PNG")
    q.add_argument("--split", default="train", choices=SPLITS, help="split (default: train)")
    q.add_argument("--index", type=int, default=0, help="first image (default: 0)")
    q.add_argument("--count", type=int, default=25, help="number of images, at most 25 (default: 25)")
    q.add_argument("--out", default="grid.png", help="PNG file to write (default: grid.png)")
    _data_options(q)
    q.set_defaults(handler=cmd_data_grid)

    q = data_cmds.add_parser("download", help="download into the cache from the mirrors, verifying content")
    _data_options(q)
    q.set_defaults(handler=cmd_data_download)

    q = data_cmds.add_parser("verify", help="check the SHA-256 of the local files' decompressed content")
    _data_options(q)
    q.set_defaults(handler=cmd_data_verify)


def _args_models(p: argparse.ArgumentParser) -> None:
    p.set_defaults(handler=cmd_models)


def _args_train(p: argparse.ArgumentParser) -> None:
    """``train``: its flags are generated from TrainConfig, Recipe and the builders' signatures."""
    from mnistlab import models
    from mnistlab.train import TrainConfig

    example = models.recipe("cnn")

    def recipe_default(field) -> str:
        return f"the model's recipe, e.g. {getattr(example, field.name)} for cnn; `mnistlab models` lists them"

    p.add_argument("model", nargs="?", help="model name from `mnistlab models` (optional with --resume)")
    p.add_argument("--out", required=True, help="run folder to create, e.g. runs/cnn")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint; "
                   "refuses flags that would change the run (default: False)")
    add_arguments(p, TrainConfig, title="training")
    add_arguments(p, models.Recipe, default_text=recipe_default, title="recipe (overrides the model's)")
    group = p.add_argument_group("architecture (overrides the model's)")
    for name, annotation in models.builder_parameters().items():
        text, _, choices = models.ARCH_OPTIONS[name]
        add_argument(group, name, annotation, text, "the model's, see `mnistlab models`", choices)
    _data_options(p)
    p.set_defaults(handler=cmd_train)


def _args_evaluate(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="run folder written by `mnistlab train`")
    p.add_argument("--split", default="test", choices=SPLITS, help="split (default: test)")
    p.add_argument("--untrained", action="store_true", help="evaluate the same architecture before training (default: False)")
    p.add_argument("--show-errors", type=int, default=10, help="misclassified examples to print (default: 10)")
    p.add_argument("--dataset", default=None, help="override the run's data set (default: the run's)")
    p.add_argument("--data-dir", default=None, help="override the run's data folder (default: the run's)")
    p.set_defaults(handler=cmd_evaluate)


def _args_zoo(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="runs/zoo", help="folder for the runs and results.md (default: runs/zoo)")
    p.add_argument("--models", type=lambda s: s.split(","), default=None, help="comma-separated subset (default: all course models)")
    p.add_argument("--max-epochs", type=int, default=None, help="cap each run at this many epochs (default: no cap)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--own", action="store_true", help="use mnistlab's own settings instead of the course's (default: False)")
    p.add_argument("--jobs", type=int, default=1, help="models trained at once, one process each, the cores "
                   "shared among them (default: 1, in this process)")
    p.add_argument("--shard", default=None, metavar="I/N", help="train only every N-th model from the I-th: run "
                   "1/2 on one machine and 2/2 on another over a shared --out, then once more to tabulate "
                   "(default: all)")
    _data_options(p)
    p.set_defaults(handler=cmd_zoo)


def _args_ensemble(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folders written by `mnistlab train`, e.g. runs/best-s0 runs/best-s1")
    p.add_argument("--split", default="test", choices=SPLITS, help="split (default: test)")
    p.add_argument("--data-dir", default=None, help="override the first run's data folder (default: the run's)")
    p.set_defaults(handler=cmd_ensemble)


def _args_plot(p: argparse.ArgumentParser) -> None:
    from mnistlab.report import PLOT_KINDS

    p.description = "Kinds: " + "; ".join(f"{k}: {v.help}" for k, v in PLOT_KINDS.items())
    p.add_argument("run", metavar="RUN", help="run folder written by `mnistlab train`, e.g. runs/cnn")
    p.add_argument("kind", choices=tuple(PLOT_KINDS), metavar="KIND", help=f"one of {', '.join(PLOT_KINDS)}")
    p.add_argument("--index", type=int, default=None,
                   help="samples/errors: first test image; feature-maps: the test image (default: 0)")
    p.add_argument("--count", type=int, default=None, help="samples/errors: images in the grid, 1..25 (default: 25)")
    p.add_argument("--layer", default=None, help="filters/feature-maps: conv layer number, counting only Conv2D "
                   "layers (1 = first conv, 2 = second, as the course does), or a layer name (default: 1)")
    p.add_argument("--channel", type=int, default=None,
                   help="filters: input channel whose weights are drawn (default: 0)")
    p.add_argument("--out", default=None, help="PNG file to write (default: RUN/plots/KIND.png; "
                   "filters and feature-maps: RUN/plots/KIND-layerN.png)")
    p.set_defaults(handler=cmd_plot)


def _args_report(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", metavar="RUN", help="run folder written by `mnistlab train`, e.g. runs/cnn")
    p.add_argument("--index", type=int, default=0, help="test image whose feature maps are shown (default: 0)")
    p.add_argument("--out", default=None, help="HTML file to write (default: RUN/report.html)")
    p.set_defaults(handler=cmd_report)


def _args_preprocess(p: argparse.ArgumentParser) -> None:
    p.add_argument("image", metavar="IMG", help="picture of one digit: PNG, JPEG, BMP, GIF, TIFF or WebP, any size")
    p.add_argument("--out", default=None, help="PNG file to write (default: none, print the image as text)")
    p.add_argument("--scale", type=int, default=1, help="pixels per model pixel in --out (default: 1)")
    p.set_defaults(handler=cmd_preprocess)


def _args_predict(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", metavar="RUN", help=MODEL_HELP)
    p.add_argument("images", metavar="IMG", nargs="+", help="pictures of one digit each")
    p.add_argument("--top", type=int, default=3, help="digits listed per picture, 1..10 (default: 3)")
    p.add_argument("--json", action="store_true", help="print JSON (default: False)")
    p.set_defaults(handler=cmd_predict)


def _args_serve(p: argparse.ArgumentParser) -> None:
    from mnistlab.serve import ServeConfig

    p.add_argument("run", metavar="RUN", help=MODEL_HELP)
    add_arguments(p, ServeConfig)
    p.set_defaults(handler=cmd_serve)


def _args_export(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", metavar="RUN", help="run folder or .keras file")
    p.add_argument("--format", required=True, choices=("savedmodel", "tflite"), help="what to write (required)")
    p.add_argument("--out", default=None, help="folder to create, e.g. exports/cnn/1 (default: none; a float32 "
                   "--format tflite then goes into the run folder as model.tflite, which predict and serve use)")
    p.add_argument("--quantize", default=None, choices=("int8", "float16"),
                   help="tflite only: int8 weights and activations (calibrated on 500 training images) or "
                        "float16 weights (default: none, float32)")
    p.add_argument("--force", action="store_true", help="replace --out if it exists (default: False)")
    p.set_defaults(handler=cmd_export)


def _args_notebooks(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dir", default="mnistlab-lessons", help="folder to copy them into (default: mnistlab-lessons)")
    p.add_argument("--force", action="store_true", help="replace copies there that differ from the installed "
                   "lessons, e.g. your edits (default: False, refuse)")
    p.set_defaults(handler=cmd_notebooks)


# name -> (help, add its arguments, whether it needs TensorFlow loaded before it runs)
COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], bool]] = {
    "data": ("get, check and look at the data", _args_data, False),
    "models": ("list the models with parameter counts and both recipes", _args_models, True),
    "train": ("train a model; writes a run folder", _args_train, True),
    "evaluate": ("test accuracy, calibration, confusion matrix, precision/recall, errors", _args_evaluate, True),
    "zoo": ("train every course model at the course's settings; Markdown table", _args_zoo, True),
    "ensemble": ("average the class probabilities of several runs and evaluate", _args_ensemble, False),
    "plot": ("draw one picture of a run as PNG (in RUN/plots/)", _args_plot, True),
    "report": ("write RUN/report.html: config, metrics and every picture, self-contained", _args_report, True),
    "preprocess": ("show the 28 x 28 input the model would see for a picture", _args_preprocess, False),
    "predict": ("read the digit in each picture (exit 1 if any picture failed)", _args_predict, False),
    "serve": ("HTTP server: POST /predict, GET /health, /model, and a drawing page at /", _args_serve, False),
    "export": ("export a run as a TensorFlow SavedModel or a TFLite file", _args_export, True),
    "notebooks": ("copy the course's five lesson notebooks into a folder to work in", _args_notebooks, False),
}


def _extra_commands() -> dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], bool]]:
    """Commands whose parsers live in their own modules (kept out of this file)."""
    from mnistlab import robustness

    return {"robustness": (robustness.HELP, robustness.add_arguments_to, False)}


EXTRA_HELP = {"robustness": "accuracy on test sets unlike MNIST's: stroke width, resolution, rotation, slant, "
                            "drawn, photos, fonts, other writers"}  # shown without importing the module


class Parser(argparse.ArgumentParser):
    """argparse, with its errors as the project's: one line (``error: mnistlab train: argument
    --seed: invalid int value: '1e23'``) and exit status 2, no usage block."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"error: {self.prog}: {message}\n")


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The command tree; every option's help states its default. With ``only``, just that
    command's arguments are added (the others keep their name and help): what ``main`` needs."""
    parser = Parser(prog="mnistlab", description="Handwritten-digit recognition on MNIST-format data with TensorFlow 2 / Keras 3: "
                                     "data, the course's models, training, evaluation, pictures, serving, export. "
                                     "`mnistlab COMMAND --help` lists each command's options with defaults.")
    parser.add_argument("--version", action="version", version=f"mnistlab {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    table = {**COMMANDS, **(_extra_commands() if only in (None, "robustness") else
                            {"robustness": (EXTRA_HELP["robustness"], None, False)})}
    for name, (text, add, _) in table.items():
        p = commands.add_parser(name, help=text, description=text[0].upper() + text[1:] + ".")
        if add is not None and only in (None, name):
            add(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: run one command; a user error prints one line and exits 2."""
    from mnistlab import runtime

    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), "")
    args = build_parser(only=command).parse_args(argv)
    if COMMANDS.get(args.command, ("", None, True))[2]:  # TensorFlow's start-up noise muted, before the work
        runtime.import_tensorflow_quietly()
    try:
        return args.handler(args)
    except MnistlabError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # the last net: every module turns the OS errors it expects into MnistlabError
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"error: {where}{exc.strerror or exc}; check the path and its permissions", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
