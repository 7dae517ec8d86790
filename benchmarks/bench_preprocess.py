"""CPU time, wall time and memory of ``mnistlab.preprocess.preprocess`` per picture, from the
drawing page's 56 x 56 PNG to a 108 MP camera JPEG, beside the code as it was before its speed-up.

    python benchmarks/bench_preprocess.py                          # all six pictures, before and now
    python benchmarks/bench_preprocess.py --pictures page,small,phone --budget 5
    python benchmarks/bench_preprocess.py --before none --runs 3   # now only, quick

Each picture is written once to a temporary folder, then read by a child process of its own
(so one picture's peak memory is not another's): one untimed call, then at least ``--runs``
timed calls (more for cheap pictures, up to ``--budget`` seconds). Reported per picture: the
median CPU time of one call (``time.process_time``: what a call costs a core, whatever else the
machine runs), the fastest wall time, the child's peak resident memory and how far it rose above
what the interpreter with mnistlab and Pillow loaded held before the first call. With
``--before REV`` (default: the commit before the speed-up), the same child also loads
``src/mnistlab/preprocess.py`` as it was at REV (``git show``) and times it call for call,
alternating with today's, so both medians come from the same minutes of the same machine. Where
the compiled steps (``mnistlab._recipe``) are built, today's code is also timed on its NumPy
steps, alternating with the compiled ones the same way.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

from PIL import Image, ImageChops, ImageDraw

SEVEN = [(0.29, 0.25), (0.71, 0.25), (0.43, 0.79)]  # a 7's stroke, in [0, 1] box coordinates
BEFORE = "0f15ae4"  # the last commit of src/mnistlab/preprocess.py before the recipe was made ~2x cheaper


def draw_seven(size: tuple[int, int], mode: str, paper, ink, box_share: float = 0.6, pen: float | None = None,
               round_pen: bool = False) -> Image.Image:
    """A 7 drawn in the middle of a ``size`` sheet, its box ``box_share`` of the shorter side, the
    pen ``pen`` px wide (default: 1/12 of the box); ``round_pen``: round ends, as a browser's."""
    image = Image.new(mode, size, paper)
    side = box_share * min(size)
    left, top = (size[0] - side) / 2, (size[1] - side) / 2
    points = [(left + x * side, top + y * side) for x, y in SEVEN]
    width = max(1, round(pen or side / 12))
    canvas = ImageDraw.Draw(image)
    canvas.line(points, fill=ink, width=width, joint="curve")
    if round_pen:
        for x, y in points:
            canvas.ellipse([x - width / 2, y - width / 2, x + width / 2, y + width / 2], fill=ink)
    return image


def photo(size: tuple[int, int]) -> Image.Image:
    """A camera-like RGB photo of a 7 on paper: darker towards the bottom, sensor noise, a colour
    cast (the noise makes the JPEG as large as a real photo's, which is what its decoder pays for)."""
    grey = draw_seven(size, "L", 225, 40)
    shade = Image.linear_gradient("L").resize(size, Image.Resampling.BILINEAR)  # 0 at the top, 255 at the bottom
    shaded = Image.composite(grey.point(lambda v: int(v * 0.8)), grey, shade)
    noisy = ImageChops.add(shaded, Image.effect_noise(size, 12), offset=-128)  # noise is centred on 128
    return Image.merge("RGB", [noisy, noisy.point(lambda v: int(v * 0.97)), noisy.point(lambda v: int(v * 0.9))])


def page_png() -> bytes:
    """What the drawing page sends (static/app.js): its 280 px canvas, a round black pen 1/12 of the
    canvas wide on white, area-scaled to 56 x 56, an opaque RGBA PNG."""
    canvas = draw_seven((280, 280), "RGBA", (255, 255, 255, 255), (0, 0, 0, 255), box_share=0.7, pen=280 / 12,
                        round_pen=True)
    return _encode(canvas.resize((56, 56), Image.Resampling.BOX), "PNG")


def _encode(image: Image.Image, fmt: str, **params) -> bytes:
    """``image`` as the bytes of a ``fmt`` file."""
    import io

    buf = io.BytesIO()
    image.save(buf, format=fmt, **params)
    return buf.getvalue()


PICTURES = {  # name -> (what it is, how to make its file's bytes)
    "page": ("the page's 56x56 PNG", page_png),
    "small": ("140x140 photo PNG (RGB)", lambda: _encode(photo((140, 140)), "PNG")),
    "phone": ("12 MP phone JPEG (4000x3000, q90)", lambda: _encode(photo((4000, 3000)), "JPEG", quality=90)),
    "rgba": ("3460x3460 RGBA PNG, transparent canvas",
             lambda: _encode(draw_seven((3460, 3460), "RGBA", (0, 0, 0, 0), (0, 0, 0, 255)), "PNG")),
    "png39": ("39 MP PNG (7200x5400 RGB drawing)",
              lambda: _encode(draw_seven((7200, 5400), "RGB", (255, 255, 255), (0, 0, 0)), "PNG")),
    "camera": ("108 MP camera JPEG (12000x9000, q90)", lambda: _encode(photo((12000, 9000)), "JPEG", quality=90)),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The benchmark's options; every help text states its default."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=7, help="timed calls per picture, at least (default: 7)")
    p.add_argument("--budget", type=float, default=2.0,
                   help="seconds of timed calls per picture and recipe: cheap pictures get more calls, "
                        "up to 2,000 (default: 2)")
    p.add_argument("--before", default=BEFORE,
                   help=f"git revision whose preprocess.py is timed beside today's, or 'none' (default: {BEFORE}, "
                        "the commit before the speed-up)")
    p.add_argument("--pictures", default=",".join(PICTURES),
                   help=f"comma-separated subset of {', '.join(PICTURES)} (default: all)")
    p.add_argument("--max-pixels", type=int, default=None,
                   help="preprocess's max_pixels (default: the CLI's, preprocess.MAX_PIXELS; the API passes 12000000)")
    p.add_argument("--json", default=None, help="also write the figures to this JSON file (default: none)")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)  # internal: measure one file
    p.add_argument("--before-file", default=None, help=argparse.SUPPRESS)  # internal: the old module's source
    return p.parse_args(argv)


def peak_rss_kb(reset: bool = False) -> int:
    """This process's peak resident memory in KB (Linux's VmHWM: unlike ``ru_maxrss`` it is not
    inherited from the parent across exec); ``reset`` first lowers the peak to the current use."""
    status = Path("/proc/self/status")
    if not status.exists():  # not Linux: ru_maxrss (KB on Linux, bytes on macOS; close enough to report)
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if reset:
        Path("/proc/self/clear_refs").write_text("5")  # "5": reset the peak RSS to the current RSS
    line = next(l for l in status.read_text().splitlines() if l.startswith("VmHWM:"))
    return int(line.split()[1])


def load_module(path: str, name: str = "preprocess_before"):
    """The Python module in ``path`` (an old preprocess.py), imported under ``name``."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def timed(call) -> tuple[float, float, str]:
    """One call: (CPU ms, wall ms, outcome); a refusal is an outcome, not a failure."""
    from mnistlab.errors import MnistlabError

    outcome = "ok"
    cpu, wall = time.process_time(), time.perf_counter()
    try:
        call()
    except MnistlabError as exc:
        outcome = f"refused: {exc}"
    return (time.process_time() - cpu) * 1000, (time.perf_counter() - wall) * 1000, outcome


def measure_here(path: str, runs: int, budget: float, max_pixels: int | None, before_file: str | None) -> dict:
    """In this (child) process: warm up, time today's preprocess on ``path`` (CPU, wall, peak
    memory), then, with ``before_file``, the old one and today's again, call for call."""
    from mnistlab import preprocess

    limit = max_pixels or preprocess.MAX_PIXELS
    warm = _encode(draw_seven((64, 64), "L", 255, 0), "PNG")  # import Pillow's plugins, warm NumPy
    before = load_module(before_file) if before_file else None
    for module in (preprocess, before) if before else (preprocess,):
        module.preprocess(warm)
    before_kb = peak_rss_kb(reset=True)
    first_cpu, first_ms, outcome = timed(lambda: preprocess.preprocess(path, max_pixels=limit))
    calls = int(min(max(runs, budget * 1000 / max(first_ms, 1e-3)), 2000))
    now = [timed(lambda: preprocess.preprocess(path, max_pixels=limit)) for _ in range(calls)]
    peak_kb = peak_rss_kb()
    figures = {"calls": calls, "cpu_ms": [c for c, _, _ in now], "times_ms": [w for _, w, _ in now],
               "first_ms": first_ms, "first_cpu_ms": first_cpu, "before_mb": before_kb / 1024,
               "peak_mb": peak_kb / 1024, "outcome": outcome}
    compiled = preprocess._recipe
    if compiled is not None:
        def on_numpy() -> float:
            preprocess._recipe = None
            try:
                return timed(lambda: preprocess.preprocess(path, max_pixels=limit))[0]
            finally:
                preprocess._recipe = compiled

        pairs = [(on_numpy(), timed(lambda: preprocess.preprocess(path, max_pixels=limit))[0]) for _ in range(calls)]
        figures["paired_numpy_cpu_ms"] = [n for n, _ in pairs]
        figures["paired_compiled_cpu_ms"] = [c for _, c in pairs]
    if before:
        pairs = [(timed(lambda: before.preprocess(path, max_pixels=limit))[0],
                  timed(lambda: preprocess.preprocess(path, max_pixels=limit))[0]) for _ in range(calls)]
        figures["paired_before_cpu_ms"] = [b for b, _ in pairs]
        figures["paired_now_cpu_ms"] = [n for _, n in pairs]
    return figures


def measure(path: Path, runs: int, budget: float, max_pixels: int | None, before_file: Path | None) -> dict:
    """``measure_here`` in a fresh child process, so each picture's peak memory is its own."""
    command = [sys.executable, __file__, "--child", str(path), "--runs", str(runs), "--budget", str(budget)]
    if max_pixels:
        command += ["--max-pixels", str(max_pixels)]
    if before_file:
        command += ["--before-file", str(before_file)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"the child measuring {path} failed:\n{done.stderr}")
    return json.loads(done.stdout.splitlines()[-1])


def old_source(revision: str, folder: Path) -> Path | None:
    """preprocess.py as it was at ``revision``, written into ``folder``; None (with a note) if git
    cannot show it (not a clone, or a shallow one)."""
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(["git", "-C", str(root), "show", f"{revision}:src/mnistlab/preprocess.py"],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        print(f"note: --before {revision}: git cannot show that revision's preprocess.py "
              f"({done.stderr.strip() or 'no git'}); timing today's only", file=sys.stderr)
        return None
    path = folder / f"preprocess_{revision}.py"
    path.write_text(done.stdout)
    return path


def main(argv: list[str] | None = None) -> int:
    """Write the pictures, measure each in its own process, print a table."""
    args = parse_args(argv)
    if args.child:
        print(json.dumps(measure_here(args.child, args.runs, args.budget, args.max_pixels, args.before_file)))
        return 0
    from _common import describe, machine, table

    names = [n.strip() for n in args.pictures.split(",") if n.strip()]
    unknown = [n for n in names if n not in PICTURES]
    if unknown or args.runs < 1 or args.budget < 0:
        print(f"error: --pictures {','.join(unknown)}: expected some of {', '.join(PICTURES)}; --runs >= 1; "
              "--budget >= 0", file=sys.stderr)
        return 2
    warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the 108 MP photo is meant to be big
    print(describe(machine()))
    rows, figures = [], {}
    with tempfile.TemporaryDirectory(prefix="bench-preprocess-") as folder:
        before_file = old_source(args.before, Path(folder)) if args.before.lower() != "none" else None
        for name in names:
            what, make = PICTURES[name]
            path = Path(folder) / f"{name}.{'jpg' if 'JPEG' in what else 'png'}"
            path.write_bytes(make())
            with Image.open(path) as im:
                size, mode = im.size, im.mode
            r = measure(path, args.runs, args.budget, args.max_pixels, before_file)
            figures[name] = {"what": what, "bytes": path.stat().st_size, "size": size, "mode": mode, **r}
            then = paired = numpy_steps = "-"
            if "paired_numpy_cpu_ms" in r:
                slow, fast = statistics.median(r["paired_numpy_cpu_ms"]), statistics.median(r["paired_compiled_cpu_ms"])
                numpy_steps = f"{slow:.2f} ({slow / fast:.2f}x)"
            if "paired_before_cpu_ms" in r:
                old, new = statistics.median(r["paired_before_cpu_ms"]), statistics.median(r["paired_now_cpu_ms"])
                then, paired = f"{old:.2f}", f"{old / new:.2f}x ({new:.2f})"
            nbytes = path.stat().st_size
            rows.append([what, f"{nbytes:,} B" if nbytes < 10_000 else f"{nbytes / 1024:,.0f} KB",
                         f"{size[0]} x {size[1]} {mode}",
                         r["calls"], f"{statistics.median(r['cpu_ms']):.2f}", numpy_steps, then, paired,
                         f"{min(r['times_ms']):.1f}", f"{r['peak_mb']:.0f}", f"+{r['peak_mb'] - r['before_mb']:.0f}",
                         r["outcome"][:60]])
            path.unlink()
    print(table(["picture", "file", "pixels", "calls", "CPU ms (median)", "NumPy steps: CPU ms (compiled cheaper by)",
                 f"before: CPU ms ({args.before})",
                 "cheaper by (now, paired)", "fastest wall ms", "peak RSS MB", "above start MB", "result"], rows))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
