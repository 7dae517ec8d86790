"""Several independent trainings at once: one ``mnistlab train`` process per job, ``--jobs`` at a time,
or a ``--shard i/n`` of them per machine (machines sharing the output folder).

This is where most compute goes in practice (a zoo of models, the members of an ensemble), and
independent runs need no communication: each process gets ``cores / jobs`` threads, its lines of
output are prefixed with the job's name, and a run that was interrupted is resumed, one that is
finished is kept. Each job is an ordinary run folder, so ``--resume`` and every other command work on it.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from dataclasses import dataclass
from typing import Callable, Sequence

from mnistlab import runtime
from mnistlab.data import DataConfig
from mnistlab.errors import MnistlabError
from mnistlab.runs import RunFolder


@dataclass(frozen=True)
class Job:
    """One training: a name for its output lines and the run folder it writes."""

    name: str
    folder: RunFolder
    train_args: tuple[str, ...]  # `mnistlab train` arguments, without --out / --resume / --threads

    def done(self) -> bool:
        return self.folder.model_file.is_file() and self.folder.metrics_file.is_file()

    def argv(self, threads: int) -> list[str]:
        resume = ["--resume"] if self.folder.is_run() else []  # the same flags agree with the saved run
        return [sys.executable, "-m", "mnistlab.cli", "train", *self.train_args, *resume, "--out",
                str(self.folder.path), "--threads", str(threads), "--no-progress"]


def parse_shard(text: str | None) -> tuple[int, int]:
    """``"2/3"`` -> (1, 3): this machine takes every 3rd job starting with the 2nd."""
    if not text:
        return 0, 1
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        index = count = 0
    if not 1 <= index <= count:
        raise MnistlabError(f"--shard {text}: expected I/N with 1 <= I <= N, e.g. 1/2 on one machine and 2/2 on another")
    return index - 1, count


def check_jobs(jobs: int) -> None:
    if not 1 <= jobs <= 256:
        raise MnistlabError(f"--jobs {jobs}: expected an integer 1 .. 256")


def data_args(config: DataConfig) -> list[str]:
    """``DataConfig`` as ``mnistlab train`` flags, so every job reads the same data."""
    args = ["--dataset", config.dataset, "--validation-size", str(config.validation_size)]
    if config.data_dir:
        args += ["--data-dir", config.data_dir]
    if config.cache_dir:
        args += ["--cache-dir", config.cache_dir]
    if config.mirrors:
        args += ["--mirrors", ",".join(config.mirrors)]
    return args + ([] if config.download else ["--no-download"])


def run_jobs(jobs: Sequence[Job], parallel: int, shard: str | None = None,
             log: Callable[[str], None] = print) -> list[Job]:
    """Run this machine's share of ``jobs``, ``parallel`` processes at a time; return the jobs it ran
    or found done. A failed job is one clear error naming it (the others finish first)."""
    check_jobs(parallel)
    index, count = parse_shard(shard)
    mine = list(jobs)[index::count]
    todo = [job for job in mine if not job.done()]
    for job in mine:
        if job.done():
            log(f"[{job.name}] done already ({job.folder.path})")
    threads = max(1, runtime.cpu_count() // max(1, min(parallel, len(todo) or 1)))
    failed: list[str] = []
    lock = threading.Lock()
    pending = list(todo)

    def worker() -> None:
        while True:
            with lock:
                if not pending:
                    return
                job = pending.pop(0)
            proc = subprocess.Popen(job.argv(threads), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            assert proc.stdout is not None
            for line in proc.stdout:
                with lock:
                    log(f"[{job.name}] {line.rstrip()}")
            if proc.wait() != 0:
                with lock:
                    failed.append(f"{job.name} (exit {proc.returncode})")

    pool = [threading.Thread(target=worker, daemon=True) for _ in range(min(parallel, len(todo)))]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    if failed:
        raise MnistlabError(f"training failed for {', '.join(failed)}; their lines above say why "
                            f"(run the same command again to resume them)")
    return mine
