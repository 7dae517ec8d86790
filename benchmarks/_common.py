"""Shared by the benchmarks: the machine's description, real MNIST, and a table printer."""

from __future__ import annotations

import datetime
import os
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mnistlab import runtime  # noqa: E402  (sets TensorFlow's start-up variables, as the CLI does)

SIMD_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile", "amx_bf16", "amx_int8")


def cpu_model_and_flags() -> tuple[str, list[str]]:
    """The CPU's model name and which of ``SIMD_FLAGS`` it reports (Linux /proc/cpuinfo)."""
    info = Path("/proc/cpuinfo")
    if not info.exists():
        return platform.processor() or platform.machine(), []
    lines = info.read_text().splitlines()
    model = next((l.split(":", 1)[1].strip() for l in lines if l.startswith("model name")), platform.processor())
    flags = runtime.cpu_flags()  # the same flags `precision auto` decides by
    return model, [f for f in SIMD_FLAGS if f in flags]


def machine() -> dict[str, Any]:
    """Date, CPU model and SIMD flags, oneDNN, usable cores and load average: the context every number needs."""
    import tensorflow as tf

    from mnistlab import preprocess

    cpu, flags = cpu_model_and_flags()
    return {"date": datetime.date.today().isoformat(), "cpu": cpu, "simd": flags, "onednn": runtime.onednn_setting(),
            "onednn_isa_limit": runtime.onednn_isa_limit(), "cores": runtime.cpu_count(), "load_average": [round(x, 2) for x in os.getloadavg()],
            "tensorflow": tf.__version__, "picture_steps": "compiled" if preprocess._recipe is not None else "NumPy"}


def describe(info: dict[str, Any]) -> str:
    """One line to print beside every figure."""
    limit = f" (capped at {info['onednn_isa_limit']})" if info.get("onednn_isa_limit") else ""
    return (f"{info['date']}  {info['cpu']} ({' '.join(info['simd']) or 'no AVX2'})  oneDNN {info['onednn']}{limit}  "
            f"{info['cores']} cores  load {info['load_average']}  TF {info['tensorflow']}"
            + (f"  picture steps {info['picture_steps']}" if "picture_steps" in info else ""))


def load_mnist(data_dir: str | None):
    """Real MNIST with the course's split (55,000 train / 5,000 validation / 10,000 test)."""
    from mnistlab import data

    return data.load(data.DataConfig(data_dir=data_dir))


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table, numbers as given (format them before)."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
