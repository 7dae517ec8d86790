"""oneDNN off vs on, for every registry model: seconds for one training epoch and the test accuracy
after it, each setting in its own process (TensorFlow reads ``TF_ENABLE_ONEDNN_OPTS`` once, when it
loads), in one run; plus "same seed => same numbers" with oneDNN on (two runs, identical metrics).

TensorFlow turns oneDNN on by itself only on CPUs with AVX512_VNNI, AVX512_BF16, AVX_VNNI or AMX;
mnistlab sets it on everywhere (``mnistlab.runtime``). On a CPU that TensorFlow already enables,
"on" is what it would do anyway; the "off" column is its Eigen kernels.

    python benchmarks/bench_onednn.py --data-dir /work/shared/datasets              # every model
    python benchmarks/bench_onednn.py --data-dir /work/shared/datasets --models fast,cnn
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import describe, machine, table

CHILD = """
import json, sys
from mnistlab import data, models, runs, train
ds = data.load(data.DataConfig(data_dir=sys.argv[1] or None))
name, out = sys.argv[2], sys.argv[3]
train.train(name, ds, out, train.TrainConfig(progress=False, tensorboard=False), {"epochs": 1}, log=lambda s: None)
folder = runs.RunFolder(out)
print(json.dumps({"seconds": folder.read_timing()["epoch_seconds"][0], **folder.read_metrics()}))
"""


def one_epoch(data_dir: str | None, name: str, onednn: str, out: Path) -> dict:
    env = {**os.environ, "TF_ENABLE_ONEDNN_OPTS": onednn, "TF_CPP_MIN_LOG_LEVEL": "2"}
    done = subprocess.run([sys.executable, "-c", CHILD, data_dir or "", name, str(out)], capture_output=True,
                          text=True, env=env, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data-dir", default=None, help="folder with MNIST (else $MNISTLAB_DATA_DIR / cache)")
    parser.add_argument("--models", default="all", help="comma-separated registry models, or 'all'")
    args = parser.parse_args()
    from mnistlab import models

    names = list(models.MODELS) if args.models == "all" else args.models.split(",")
    info = machine()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_onednn_") as tmp:
        for name in names:
            off = one_epoch(args.data_dir, name, "0", Path(tmp) / f"{name}-off")
            on = one_epoch(args.data_dir, name, "1", Path(tmp) / f"{name}-on")
            rows.append([name, f"{off['seconds']:.1f}", f"{on['seconds']:.1f}", f"{off['seconds'] / on['seconds']:.2f}x",
                         f"{off['test_accuracy']:.2%}", f"{on['test_accuracy']:.2%}"])
            print(rows[-1], flush=True)
        again = [one_epoch(args.data_dir, "fast", "1", Path(tmp) / f"fast-again-{i}") for i in range(2)]
    same = [{k: v for k, v in r.items() if k != "seconds"} for r in again]  # timing is not a result
    same = same[0] == same[1]
    print(f"\n{describe(info)}  (TensorFlow's own oneDNN choice for this CPU: "
          f"{'on' if {'avx512_vnni', 'avx512_bf16', 'avx_vnni', 'amx_tile'} & set(info['simd']) else 'off'})")
    print(table(["model", "s/epoch oneDNN off", "s/epoch on", "speed-up", "test acc. off", "test acc. on"], rows))
    print(f"same seed, oneDNN on, `fast` twice: metrics {'identical' if same else 'DIFFERENT'} "
          f"(test loss {again[0]['test_loss']!r} / {again[1]['test_loss']!r})")


if __name__ == "__main__":
    start = time.perf_counter()
    main()
    print(f"(benchmark wall time {time.perf_counter() - start:.0f} s)")
