"""Shared by the benchmarks: the machine's description, real MNIST, and a table printer."""

from __future__ import annotations

import datetime
import os
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def machine() -> dict[str, Any]:
    """Date, CPU model, usable cores and load average: the context every number needs."""
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else platform.processor()
    import tensorflow as tf

    return {"date": datetime.date.today().isoformat(), "cpu": cpu, "cores": len(os.sched_getaffinity(0)),
            "load_average": [round(x, 2) for x in os.getloadavg()], "tensorflow": tf.__version__}


def load_mnist(data_dir: str | None):
    """Real MNIST with the course's split (55,000 train / 5,000 validation / 10,000 test)."""
    from mnistlab import data

    return data.load(data.DataConfig(data_dir=data_dir))


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table, numbers as given (format them before)."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
