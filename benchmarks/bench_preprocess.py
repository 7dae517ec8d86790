"""Time and memory of ``mnistlab.preprocess.preprocess`` per picture, from the drawing page's
56 x 56 PNG to a 108 MP camera JPEG.

    python benchmarks/bench_preprocess.py                  # all five pictures, 7 runs each
    python benchmarks/bench_preprocess.py --runs 3 --pictures page,phone

Each picture is written once to a temporary folder, then read by a child process of its own
(so one picture's peak memory is not another's): one untimed call, then ``--runs`` timed calls.
Reported per picture: the median and the fastest wall time of one call (decode, shrink, the
recipe), the child's peak resident memory (``ru_maxrss``) and how far it rose above what the
interpreter with mnistlab and Pillow loaded held before the first call.
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


def draw_seven(size: tuple[int, int], mode: str, paper, ink, box_share: float = 0.6) -> Image.Image:
    """A 7 drawn in the middle of a ``size`` sheet, its box ``box_share`` of the shorter side."""
    image = Image.new(mode, size, paper)
    side = box_share * min(size)
    left, top = (size[0] - side) / 2, (size[1] - side) / 2
    points = [(left + x * side, top + y * side) for x, y in SEVEN]
    ImageDraw.Draw(image).line(points, fill=ink, width=max(1, round(side / 12)), joint="curve")
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
    """What the drawing page sends: its 280 px canvas (black pen 1/12 of the side on white) at 56 x 56, RGBA."""
    canvas = draw_seven((280, 280), "RGBA", (255, 255, 255, 255), (0, 0, 0, 255), box_share=0.7)
    return _encode(canvas.resize((56, 56), Image.Resampling.BILINEAR), "PNG")


def _encode(image: Image.Image, fmt: str, **params) -> bytes:
    """``image`` as the bytes of a ``fmt`` file."""
    import io

    buf = io.BytesIO()
    image.save(buf, format=fmt, **params)
    return buf.getvalue()


PICTURES = {  # name -> (what it is, how to make its file's bytes)
    "page": ("the page's 56x56 PNG", page_png),
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
    p.add_argument("--runs", type=int, default=7, help="timed calls per picture (default: 7)")
    p.add_argument("--pictures", default=",".join(PICTURES),
                   help=f"comma-separated subset of {', '.join(PICTURES)} (default: all)")
    p.add_argument("--max-pixels", type=int, default=None,
                   help="preprocess's max_pixels (default: the CLI's, preprocess.MAX_PIXELS; the API passes 12000000)")
    p.add_argument("--json", default=None, help="also write the figures to this JSON file (default: none)")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)  # internal: measure one file
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


def measure_here(path: str, runs: int, max_pixels: int | None) -> dict:
    """In this (child) process: warm up, then time ``runs`` calls of preprocess on ``path``."""
    from mnistlab import preprocess

    limit = max_pixels or preprocess.MAX_PIXELS
    preprocess.preprocess(_encode(draw_seven((64, 64), "L", 255, 0), "PNG"))  # import Pillow's plugins, warm NumPy
    before_kb = peak_rss_kb(reset=True)
    times, outcome = [], "ok"
    for _ in range(runs + 1):
        start = time.perf_counter()
        try:
            preprocess.preprocess(path, max_pixels=limit)
        except preprocess.MnistlabError as exc:
            outcome = f"refused: {exc}"
        times.append((time.perf_counter() - start) * 1000)
    peak_kb = peak_rss_kb()
    return {"times_ms": times[1:], "first_ms": times[0], "before_mb": before_kb / 1024, "peak_mb": peak_kb / 1024,
            "outcome": outcome}


def measure(path: Path, runs: int, max_pixels: int | None) -> dict:
    """``measure_here`` in a fresh child process, so each picture's peak memory is its own."""
    command = [sys.executable, __file__, "--child", str(path), "--runs", str(runs)]
    if max_pixels:
        command += ["--max-pixels", str(max_pixels)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"the child measuring {path} failed:\n{done.stderr}")
    return json.loads(done.stdout.splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    """Write the pictures, measure each in its own process, print a table."""
    args = parse_args(argv)
    if args.child:
        print(json.dumps(measure_here(args.child, args.runs, args.max_pixels)))
        return 0
    from _common import describe, machine, table

    names = [n.strip() for n in args.pictures.split(",") if n.strip()]
    unknown = [n for n in names if n not in PICTURES]
    if unknown or args.runs < 1:
        print(f"error: --pictures {','.join(unknown)}: expected some of {', '.join(PICTURES)}; --runs >= 1",
              file=sys.stderr)
        return 2
    warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the 108 MP photo is meant to be big
    print(describe(machine()))
    rows, figures = [], {}
    with tempfile.TemporaryDirectory(prefix="bench-preprocess-") as folder:
        for name in names:
            what, make = PICTURES[name]
            path = Path(folder) / f"{name}.{'jpg' if 'JPEG' in what else 'png'}"
            path.write_bytes(make())
            with Image.open(path) as im:
                size, mode = im.size, im.mode
            r = measure(path, args.runs, args.max_pixels)
            figures[name] = {"what": what, "bytes": path.stat().st_size, "size": size, "mode": mode, **r}
            rows.append([what, f"{path.stat().st_size / 1024:,.0f} KB", f"{size[0] * size[1] / 1e6:.1f} MP {mode}",
                         f"{statistics.median(r['times_ms']):.1f}", f"{min(r['times_ms']):.1f}",
                         f"{r['peak_mb']:.0f}", f"+{r['peak_mb'] - r['before_mb']:.0f}", r["outcome"][:60]])
            path.unlink()
    print(table(["picture", "file", "pixels", "median ms", "fastest ms", "peak RSS MB", "above start MB", "result"],
                rows))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
