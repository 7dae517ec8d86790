"""Inference speed and training memory: images/s at batch 1000, one-image latency p50/p99, test
accuracy and file size per engine, and peak RSS of a training run.

Each model (a trained run's ``model.keras`` with ``--run``, else untrained registry models: same
arithmetic, same speed, accuracy meaningless) is timed on every ``--engines`` entry: Keras through
one compiled graph (``inference.compile_inference``, as evaluate/predict/serve call it), and the
same model converted to TFLite (``convert.tflite_bytes``: float32, float16 weights, full int8
calibrated on 500 training images) on LiteRT with XNNPACK, every core for batches of 1000 and
one thread for one image, called directly as ``Predictor`` does. "change" is the test accuracy
against Keras' in percentage points (issue 13's target: int8 >= 2x Keras' images/s, <= 0.05
points lost, one-image p50 <= 0.3 ms). Peak memory is the maximum resident set size
(``ru_maxrss``) of a child process that loads MNIST and trains ``--train-model``.

    python benchmarks/bench_inference.py --data-dir /work/shared/datasets --run runs/cnn --skip-memory
    python benchmarks/bench_inference.py --models fast --engines keras,tflite-int8 --skip-memory
    pip install onnxruntime==1.31.1 tf2onnx==1.17.0   # then also: --engines keras,tflite,tflite-int8,onnx,onnx-int8
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import describe, machine, table

BATCH = 1000  # images per call for throughput
SINGLE_CALLS = 300  # one-image calls timed for the latency percentiles

MEMORY_CHILD = """
import sys
from mnistlab import data, train
ds = data.load(data.DataConfig(data_dir=sys.argv[1] or None))
train.train(sys.argv[2], ds, sys.argv[3], train.TrainConfig(progress=False, tensorboard=False),
            {"epochs": int(sys.argv[4])}, log=lambda s: None)
"""


def inference(call, images: np.ndarray, single=None) -> dict[str, float]:
    """Throughput of ``call`` (images -> logits) at ``BATCH`` and single-image latency percentiles
    (milliseconds) of ``single`` (default: ``call``), each called directly as predict/serve do."""
    single = single or call
    batch = images[:BATCH]
    call(batch)  # warm-up: traces the graph / allocates the tensors
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        call(batch)
        times.append(time.perf_counter() - t0)
    one = [images[i:i + 1] for i in range(SINGLE_CALLS)]
    single(one[0])
    latencies = []
    for x in one:
        t0 = time.perf_counter()
        single(x)
        latencies.append((time.perf_counter() - t0) * 1000)
    return {"images_per_s": BATCH / statistics.median(times), "p50_ms": float(np.percentile(latencies, 50)),
            "p99_ms": float(np.percentile(latencies, 99))}


def onnx_engine(model, dataset, folder: Path, int8: bool) -> tuple:
    """ONNX Runtime (its MLAS kernels use AVX512-VNNI / AVX-VNNI for int8 where the CPU has them):
    the float32 TFLite file converted by tf2onnx, and for ``int8`` quantized statically (QDQ,
    uint8 activations x int8 weights, ONNX Runtime's recommended pairing on x86) on 500
    training images. Needs ``pip install onnxruntime tf2onnx`` (not a mnistlab dependency)."""
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from mnistlab import convert
    from mnistlab.export import CALIBRATION_IMAGES
    from mnistlab.inference import default_threads

    lite, path = folder / "onnx.tflite", folder / "model.onnx"
    lite.write_bytes(convert.tflite_bytes(model))
    subprocess.run([sys.executable, "-m", "tf2onnx.convert", "--tflite", str(lite), "--output", str(path),
                    "--opset", "17"], check=True, capture_output=True)
    name = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_inputs()[0].name
    if int8:
        calibration = iter(dataset.train.images[:CALIBRATION_IMAGES, None])

        class Reader(CalibrationDataReader):
            def get_next(self):
                image = next(calibration, None)
                return None if image is None else {name: image}

        quant_pre_process(str(path), str(folder / "pre.onnx"), skip_symbolic_shape=True)
        path = folder / "model-int8.onnx"
        quantize_static(str(folder / "pre.onnx"), str(path), Reader(), quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)

    def session(threads: int):
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        run = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]).run
        return lambda x: run(None, {name: np.ascontiguousarray(x, np.float32)})[0]

    return session(default_threads()), session(1), path.stat().st_size


def engines(model, dataset, names: list[str], folder: Path) -> dict[str, tuple]:
    """``engine -> (batch call, one-image call, model bytes)``: Keras through one compiled graph
    (``inference.compile_inference``), and the model converted to TFLite (float32, float16, int8
    calibrated on 500 training images) on LiteRT's XNNPACK: every core for batches, one thread
    for one image (an interpreter per thread count)."""
    from mnistlab import convert
    from mnistlab.export import CALIBRATION_IMAGES
    from mnistlab.inference import compile_inference, default_threads, tflite_predictor

    found = {}
    for name in names:
        if name == "keras":
            call = compile_inference(model)
            found[name] = (call, call, None)
            continue
        if name in ("onnx", "onnx-int8"):
            found[name] = onnx_engine(model, dataset, folder, int8=name == "onnx-int8")
            continue
        quantize = {"tflite": None, "tflite-float16": "float16", "tflite-int8": "int8"}[name]
        content = convert.tflite_bytes(model, quantize, dataset.train.images[:CALIBRATION_IMAGES])
        path = folder / f"{name}.tflite"
        path.write_bytes(content)
        found[name] = (tflite_predictor(path, threads=default_threads()).call, tflite_predictor(path, threads=1).call,
                       len(content))
    return found


def peak_training_rss_mb(data_dir: str | None, model: str, epochs: int) -> float:
    """Peak RSS (MiB) of a child process that loads MNIST and trains ``model``."""
    with tempfile.TemporaryDirectory(prefix="bench_mem_") as tmp:
        subprocess.run([sys.executable, "-c", MEMORY_CHILD, data_dir or "", model, f"{tmp}/run", str(epochs)],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # Linux reports KiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data-dir", default=None, help="folder with MNIST (else $MNISTLAB_DATA_DIR / cache)")
    parser.add_argument("--models", default="fast,cnn,best", help="comma-separated registry models to time")
    parser.add_argument("--run", default=None, help="time this run's model.keras instead (one model)")
    parser.add_argument("--engines", default="keras,tflite,tflite-float16,tflite-int8",
                        help="comma-separated: keras, tflite (float32), tflite-float16, tflite-int8 (LiteRT), "
                             "onnx, onnx-int8 (ONNX Runtime; needs onnxruntime and tf2onnx installed)")
    parser.add_argument("--train-model", default="fast", help="model whose training run's peak memory is measured")
    parser.add_argument("--train-epochs", type=int, default=1, help="epochs of that training run")
    parser.add_argument("--skip-memory", action="store_true", help="do not measure training memory")
    args = parser.parse_args()

    from _common import load_mnist

    from mnistlab import models
    from mnistlab.runs import load_model
    from mnistlab.runtime import configure_tensorflow

    configure_tensorflow(0)
    dataset = load_mnist(args.data_dir)
    images, labels = dataset.test.images, dataset.test.labels
    info = machine()
    targets = [(args.run, load_model(args.run))] if args.run else [(n, models.build(n)) for n in args.models.split(",")]
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_inference_") as tmp:
        for name, model in targets:
            keras_accuracy = None
            for engine, (call, single, size) in engines(model, dataset, args.engines.split(","), Path(tmp)).items():
                r = inference(call, images, single)
                accuracy = float((np.concatenate([call(images[i:i + BATCH]) for i in range(0, len(images), BATCH)])
                                  .argmax(1) == labels).mean())
                keras_accuracy = accuracy if engine == "keras" else keras_accuracy
                change = f"{100 * (accuracy - keras_accuracy):+.2f}" if keras_accuracy is not None else "-"
                rows.append([name, engine, f"{model.count_params():,}", f"{size:,}" if size else "-",
                             f"{r['images_per_s']:,.0f}", f"{r['p50_ms']:.3f}", f"{r['p99_ms']:.3f}",
                             f"{accuracy:.2%}", change])
                print(rows[-1], flush=True)
    print(f"\n{describe(info)}")
    print(table(["model", "engine", "params", "file bytes", f"images/s (batch {BATCH})", "1-image p50 ms",
                 "1-image p99 ms", "test accuracy", "change (points)"], rows))
    if not args.skip_memory:
        mb = peak_training_rss_mb(args.data_dir, args.train_model, args.train_epochs)
        print(f"peak RSS of `mnistlab train {args.train_model} --epochs {args.train_epochs}` (data load + training): "
              f"{mb:,.0f} MiB")


if __name__ == "__main__":
    main()
