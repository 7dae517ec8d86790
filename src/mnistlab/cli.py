"""The ``mnistlab`` command: parses options, calls the library, prints. Nothing else."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Callable, Sequence

from mnistlab import __version__
from mnistlab.config import add_arguments, from_args
from mnistlab.data import DataConfig
from mnistlab.errors import MnistlabError

Handler = Callable[[argparse.Namespace], int]


def _data_config(args: argparse.Namespace) -> DataConfig:
    return from_args(DataConfig, args)


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
    for row in image:
        if args.raw:
            print(" ".join(f"{round(v * 255):3d}" for v in row))
        else:
            print(" ".join(f"{v:.1f}" if v else "  0" for v in row))
    label = int(split.labels[args.index])
    print(f"{args.split}[{args.index}] label={label} ({ds.facts.class_names[label]})")
    return 0


def cmd_data_grid(args: argparse.Namespace) -> int:
    from mnistlab import data, plots

    ds = data.load(_data_config(args))
    split = ds.split(args.split)
    if not 1 <= args.count <= plots.MAX_GRID:
        raise MnistlabError(f"--count {args.count}: expected 1..{plots.MAX_GRID}")
    if not 0 <= args.index <= len(split) - args.count:
        raise MnistlabError(f"--index {args.index}: expected 0..{len(split) - args.count} for {args.count} images")
    sel = slice(args.index, args.index + args.count)
    titles = [f"label={ds.facts.class_names[int(y)]}" for y in split.labels[sel]]
    plots.image_grid(split.images[sel], titles, args.out)
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


# ---------------------------------------------------------------------------- parser
def _add_data_options(p: argparse.ArgumentParser) -> None:
    add_arguments(p, DataConfig)


def build_parser() -> argparse.ArgumentParser:
    """The whole command tree; every option's help states its default."""
    parser = argparse.ArgumentParser(prog="mnistlab", description=__doc__.splitlines()[0].replace("The ``mnistlab`` command: ", "mnistlab: handwritten digits with TensorFlow 2 / Keras 3 — "),
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--version", action="version", version=f"mnistlab {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    data_p = commands.add_parser("data", help="get, check and look at the data")
    data_cmds = data_p.add_subparsers(dest="data_command", required=True, metavar="DATA_COMMAND")

    p = data_cmds.add_parser("info", help="where the data came from, shapes, label counts, pixel mean/std")
    p.add_argument("--json", action="store_true", help="print JSON (default: False)")
    _add_data_options(p)
    p.set_defaults(handler=cmd_data_info)

    p = data_cmds.add_parser("show", help="print one image as numbers, with its label")
    p.add_argument("--split", default="test", choices=("train", "validation", "test"), help="split (default: test)")
    p.add_argument("--index", type=int, default=0, help="image index in the split (default: 0)")
    p.add_argument("--raw", action="store_true", help="print 0-255 grey levels instead of [0, 1] (default: False)")
    _add_data_options(p)
    p.set_defaults(handler=cmd_data_show)

    p = data_cmds.add_parser("grid", help="save a labelled grid of images as PNG")
    p.add_argument("--split", default="train", choices=("train", "validation", "test"), help="split (default: train)")
    p.add_argument("--index", type=int, default=0, help="first image (default: 0)")
    p.add_argument("--count", type=int, default=25, help="number of images, at most 25 (default: 25)")
    p.add_argument("--out", default="grid.png", help="PNG file to write (default: grid.png)")
    _add_data_options(p)
    p.set_defaults(handler=cmd_data_grid)

    p = data_cmds.add_parser("download", help="download into the cache from the mirrors, verifying content")
    _add_data_options(p)
    p.set_defaults(handler=cmd_data_download)

    p = data_cmds.add_parser("verify", help="check the SHA-256 of the local files' decompressed content")
    _add_data_options(p)
    p.set_defaults(handler=cmd_data_verify)

    for register in _EXTRA_COMMANDS:
        register(commands)
    return parser


# Other modules' commands register here (one function per command group), keeping this file thin.
_EXTRA_COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = []


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: run one command; a user error prints one line and exits 2."""
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except MnistlabError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
