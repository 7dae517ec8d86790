"""Start-up cost of the commands a user waits for: ``--help``, one-image ``predict``, and the
time until ``serve`` gives its first answer, on LiteRT (the run's ``model.tflite``) and on
TensorFlow (the same run without it), in the same run of this script.

Each command is a fresh process, run ``--repeats`` times; the table shows the median wall time
and the median peak RSS (``wait4``'s ``ru_maxrss`` of each command, run by a small launcher). ``serve`` is timed from
its start to the first answered ``POST /predict`` (polled every 20 ms); its RSS is read from
``/proc`` then, for the parent and, with ``--workers N``, for each worker. Issue 17's targets
on 2 cores: ``--help`` <= 0.3 s, one-image predict <= 1.5 s, a serve worker <= 150 MB.

    python benchmarks/bench_startup.py --run runs/fast                 # a trained run
    python benchmarks/bench_startup.py --repeats 1 --workers 2         # an untrained fast model
"""

from __future__ import annotations

import argparse
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from _common import describe, machine, table

SERVE_DEADLINE_S = 300.0  # a safety net: a server that never answers ends the measurement
POLL_S = 0.02


# Runs each command and reports its wall time and peak RSS. It is started before this script
# imports anything heavy: on Linux a child's ru_maxrss starts from its parent's resident size at
# fork, so children of a parent holding TensorFlow would all report its ~800 MB.
LAUNCHER = """
import json, os, subprocess, sys, time
for line in sys.stdin:
    command = json.loads(line)
    start = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    err = child.stderr.read()
    _, status, usage = os.wait4(child.pid, 0)
    print(json.dumps({"wall": time.perf_counter() - start, "rss_kib": usage.ru_maxrss,
                      "rc": os.waitstatus_to_exitcode(status), "stderr": err.decode(errors="replace")[-500:]}),
          flush=True)
"""


class Launcher:
    """A small process that runs commands for us and reports ``(wall s, peak RSS MiB)``."""

    def __init__(self) -> None:
        self._process = subprocess.Popen([sys.executable, "-c", LAUNCHER], stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, text=True)

    def timed(self, command: list[str]) -> tuple[float, float]:
        """One run of ``command``, which must succeed."""
        import json

        assert self._process.stdin and self._process.stdout
        self._process.stdin.write(json.dumps(command) + "\n")
        self._process.stdin.flush()
        result = json.loads(self._process.stdout.readline())
        if result["rc"] != 0:
            raise SystemExit(f"{' '.join(command)} failed ({result['rc']}): {result['stderr']}")
        return result["wall"], result["rss_kib"] / 1024

    def close(self) -> None:
        assert self._process.stdin
        self._process.stdin.close()
        self._process.wait(timeout=60)


def rss_mib(pid: int) -> float:
    """Resident memory of ``pid`` now (``/proc/PID/status`` VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_first_answer(mnistlab: list[str], run: Path, picture: bytes, workers: int) -> tuple[float, float, list[float]]:
    """``(seconds to the first answer, parent RSS MiB, [worker RSS MiB])`` of ``mnistlab serve``."""
    port = free_port()
    start = time.perf_counter()
    server = subprocess.Popen([*mnistlab, "serve", str(run), "--port", str(port), "--workers", str(workers)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while True:
            if server.poll() is not None:
                raise SystemExit(f"mnistlab serve {run} exited with {server.returncode}")
            if time.perf_counter() - start > SERVE_DEADLINE_S:
                raise SystemExit(f"mnistlab serve {run}: no answer within {SERVE_DEADLINE_S:.0f} s")
            request = urllib.request.Request(f"http://127.0.0.1:{port}/predict", data=picture,
                                             headers={"Content-Type": "image/png"})
            try:
                with urllib.request.urlopen(request, timeout=30) as response:
                    response.read()
                    break
            except OSError:  # not listening yet
                time.sleep(POLL_S)
        seconds = time.perf_counter() - start
        workers_rss = [rss_mib(pid) for pid in children(server.pid)] if workers > 1 else []
        return seconds, rss_mib(server.pid), workers_rss
    finally:
        server.terminate()
        server.wait(timeout=60)


def prepare(run: str | None, folder: Path) -> tuple[Path, Path]:
    """Two copies of one run: with a checked ``model.tflite`` (LiteRT) and without (TensorFlow)."""
    from mnistlab import convert, data, models
    from mnistlab.runs import RunFolder, load_predictor

    lite, tf_path = folder / "litert", folder / "tensorflow"
    files = RunFolder(lite)
    if run:
        shutil.copytree(run, lite)
    else:  # an untrained fast model: same arithmetic, same start-up
        lite.mkdir(parents=True)
        files.write_model(models.build("fast", seed=0))
        files.write_config({"model": "fast", "untrained": "benchmarks/bench_startup.py"})
    if files.read_tflite_check() is None:
        images = data.load(data.DataConfig()).test.images if run else _noise(64)
        convert.write_run_tflite(files, load_predictor(lite, keras=True).keras_model, images)
    shutil.copytree(lite, tf_path)
    RunFolder(tf_path).remove_tflite()
    return lite, tf_path


def _noise(n: int):
    import numpy as np

    return np.random.default_rng(0).random((n, 28, 28, 1), dtype=np.float32)


def seven_png(size: int = 140) -> bytes:
    """A 140 x 140 picture of a hand-drawn 7 (dark ink on white), as the issue timed."""
    import io

    from PIL import Image, ImageDraw

    image = Image.new("L", (size, size), 255)
    pen = ImageDraw.Draw(image)
    pen.line([(0.29 * size, 0.25 * size), (0.71 * size, 0.25 * size), (0.43 * size, 0.79 * size)], fill=0,
             width=max(2, size // 12))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--run", default=None, help="trained run folder (default: an untrained fast model)")
    parser.add_argument("--repeats", type=int, default=5, help="runs of each command (the median is shown)")
    parser.add_argument("--workers", type=int, default=1, help="serve --workers")
    parser.add_argument("--skip-serve", action="store_true", help="do not time serve")
    args = parser.parse_args()

    mnistlab = [sys.executable, "-m", "mnistlab.cli"]
    launcher = Launcher()  # first, while this process is small
    with tempfile.TemporaryDirectory(prefix="bench_startup_") as tmp:
        lite, tf_path = prepare(args.run, Path(tmp))
        picture = Path(tmp) / "seven.png"
        picture.write_bytes(seven_png())
        rows = []
        help_runs = [launcher.timed([*mnistlab, "--help"]) for _ in range(args.repeats)]
        rows.append(["--help", "-", *_median(help_runs)])
        for engine, run in (("LiteRT", lite), ("TensorFlow", tf_path)):
            runs = [launcher.timed([*mnistlab, "predict", str(run), str(picture)]) for _ in range(args.repeats)]
            rows.append(["predict 1 image", engine, *_median(runs)])
        serve_rows = []
        if not args.skip_serve:
            for engine, run in (("LiteRT", lite), ("TensorFlow", tf_path)):
                answers = [serve_first_answer(mnistlab, run, picture.read_bytes(), args.workers)
                           for _ in range(args.repeats)]
                workers = [max(w) for _, _, w in answers if w]
                serve_rows.append([f"serve --workers {args.workers}", engine,
                                   f"{statistics.median(a[0] for a in answers):.2f}",
                                   f"{statistics.median(a[1] for a in answers):.0f}",
                                   f"{statistics.median(workers):.0f}" if workers else "-"])
    launcher.close()
    info = machine()
    print(f"\n{describe(info)}  repeats {args.repeats}")
    print(table(["command", "engine", "median wall s", "median peak RSS MiB"], rows))
    if serve_rows:
        print()
        print(table(["command", "engine", "first answer s", "parent RSS MiB", "largest worker RSS MiB"], serve_rows))


def _median(runs: list[tuple[float, float]]) -> list[str]:
    return [f"{statistics.median(r[0] for r in runs):.2f}", f"{statistics.median(r[1] for r in runs):.0f}"]


if __name__ == "__main__":
    main()
