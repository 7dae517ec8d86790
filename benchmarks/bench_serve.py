"""Serving benchmark: latency, throughput and CPU per request of ``mnistlab serve`` under concurrent clients.

Starts ``mnistlab serve RUN`` on 127.0.0.1 (a free port) in its own process, then, for each
count in ``--clients``, runs that many clients on loopback, each sending its next ``POST
/predict`` as soon as the last one is answered (a closed loop, the hardest steady load for that
many clients), until REQUESTS answers or DURATION seconds. Prints the machine (CPU model, SIMD
flags, cores, load), then per count p50 / p90 / p99 / max latency, throughput, errors, the
server's batching, server and client CPU per request and the server's memory, and a Markdown
row per count. Exits 1 when there were errors or a p99 missed the target.

    python benchmarks/bench_serve.py runs/cnn --clients 50,100                 # PNGs as the page sends them
    python benchmarks/bench_serve.py runs/cnn --payload json --clients 50,100  # 28 x 28 pixels, no decoding
    python benchmarks/bench_serve.py runs/cnn --workers cores                  # one server process per core
    python benchmarks/bench_serve.py runs/cnn --costly-clients 10              # + 10 clients sending 12 MP photos
    python benchmarks/bench_serve.py runs/cnn --think-ms 100                   # people drawing
    python benchmarks/bench_serve.py runs/cnn --profile serve.svg              # py-spy flame graph of the server

With ``--think-ms``, each client pauses a random time between requests (exponential with that
mean, seeded): people do not send in lockstep, and a fixed pause would keep 50 clients firing
together forever, measuring one synthetic burst instead of a crowd. ``--costly-clients N`` adds
N clients sending issue 16's picture (a 46 KB RGBA PNG of 3,460 x 3,460 pixels) in a closed
loop; their answers are counted apart, the measured clients' latency is what they must not hurt.

Without RUN, an untrained model of the registry's ``cnn`` architecture is served (latency does
not depend on the weights).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

from _common import describe, machine, table  # benchmarks/ is on sys.path when this runs as a script

WARMUP = 200  # requests answered before measuring (traces, caches, connection set-up)
COSTLY_SIDE = 3460  # issue 16: a 46 KB RGBA PNG that decodes to 12 MP


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("run", nargs="?", help="model to serve (default: untrained 'cnn' architecture)")
    p.add_argument("--clients", default="50", help="concurrent clients; comma-separated counts run one after another")
    p.add_argument("--requests", type=int, default=5000, help="stop a count after this many measured answers")
    p.add_argument("--duration", type=float, default=30.0, help="stop a count after this many seconds of measuring")
    p.add_argument("--payload", choices=("png", "png-canvas", "json"), default="png",
                   help="png: a drawing as the page sends it (56 x 56 RGBA); png-canvas: the 280 x 280 canvas; "
                        "json: 784 pixels")
    p.add_argument("--think-ms", type=float, default=0.0,
                   help="mean random pause between a client's requests, ms (0: closed loop)")
    p.add_argument("--workers", default="1", help="server processes: a number, or 'cores' for one per usable core")
    p.add_argument("--costly-clients", type=int, default=0,
                   help="extra clients sending 3,460 x 3,460 RGBA PNGs meanwhile (not measured)")
    p.add_argument("--target-p99-ms", type=float, default=50.0, help="p99 latency target, ms")
    p.add_argument("--server-args", default="", help="extra `mnistlab serve` options, e.g. '--batch-wait-ms 2'")
    p.add_argument("--profile", default=None, metavar="FILE.svg|FILE.txt",
                   help="record the server with py-spy (pip install py-spy) during the first count's measuring")
    p.add_argument("--json-out", default=None, help="also write the results as JSON to this file")
    return p.parse_args()


# ---------------------------------------------------------------------------- the server process
def _stat(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()  # fields from state on


def _ppid(pid: int) -> int | None:
    try:
        return int(_stat(pid)[1])
    except (OSError, IndexError, ValueError):
        return None


def process_tree(pid: int) -> list[int]:
    """``pid`` and its children (``--workers`` processes)."""
    return [pid] + [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and _ppid(int(p.name)) == pid]


def cpu_seconds(pid: int | None = None) -> float:
    """User + system CPU time of process ``pid`` and its children, or of this process."""
    if pid is None:
        return time.process_time()
    return sum(cpu_by_process(pid).values())


def cpu_by_process(pid: int) -> dict[int, float]:
    """User + system CPU seconds of process ``pid`` and of each of its children."""
    out = {}
    for each in process_tree(pid):
        try:
            fields = _stat(each)
        except OSError:  # exited meanwhile
            continue
        out[each] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime
    return out


def memory_mb(pid: int) -> dict[str, float]:
    """Resident memory now and at its peak (VmRSS, VmHWM), MB, summed over the server's processes."""
    totals = {"rss": 0.0, "peak": 0.0}
    for each in process_tree(pid):
        try:
            lines = Path(f"/proc/{each}/status").read_text().splitlines()
        except OSError:
            continue
        for line in lines:
            key = {"VmRSS:": "rss", "VmHWM:": "peak"}.get(line.split(":")[0] + ":")
            if key:
                totals[key] += int(line.split()[1]) / 1024
    return {k: round(v, 1) for k, v in totals.items()}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def untrained_run(folder: Path) -> Path:
    """An untrained ``cnn`` in a run folder (same architecture, so the same cost per image)."""
    from mnistlab import fileio, models

    model = models.build("cnn", seed=0)
    folder.mkdir(parents=True, exist_ok=True)
    with fileio.atomic_path(folder / "model.keras", suffix=".keras") as tmp:
        model.save(tmp)
    fileio.write_json(folder / "config.json", {"model": "cnn", "note": "untrained, for benchmarking"})
    return folder


def workers(value: str) -> int:
    from mnistlab import runtime

    return runtime.cpu_count() if value == "cores" else int(value)


async def wait_until_up(url: str, server: subprocess.Popen, log: Path, processes: int = 1,
                        timeout: float = 180) -> None:
    """Until ``processes`` different server processes have answered /health (a fresh connection
    each time): clients that connect while a worker is still loading would all go to the ones
    already up and, keeping their connections alive, stay there for the whole measurement."""
    import httpx

    deadline, seen = time.monotonic() + timeout, set()
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the server exited with status {server.returncode}:\n{log.read_text()[-2000:]}")
        try:
            async with httpx.AsyncClient() as c:  # a new connection: the port's sockets share them out
                answer = await c.get(url + "/health")
            if answer.status_code == 200:
                seen.add(answer.json().get("pid"))
                if len(seen) >= processes:
                    return
        except httpx.TransportError:
            pass
        await asyncio.sleep(0.05)
    raise SystemExit(f"{len(seen)} of {processes} server processes answered {url}/health within {timeout:.0f} s")


# ---------------------------------------------------------------------------- payloads
def payload(kind: str) -> tuple[bytes, str]:
    """A request body: a 7 drawn on the page's 280 x 280 canvas (opaque RGBA, as a canvas' PNG is),
    sent as the page sends it (``png``: downscaled to 56 x 56), at full size (``png-canvas``), or as
    its 784 pixels (``json``)."""
    from PIL import Image, ImageDraw

    from mnistlab import preprocess

    image = Image.new("RGBA", (280, 280), "white")
    ImageDraw.Draw(image).line([(80, 70), (200, 70), (120, 220)], fill="black", width=23, joint="curve")
    if kind == "png":
        image = image.resize((56, 56), Image.Resampling.BOX)  # static/app.js: SEND_SIDE
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    if kind.startswith("png"):
        return buf.getvalue(), "image/png"
    pixels = preprocess.preprocess(buf.getvalue()).reshape(-1).round(4).tolist()
    return json.dumps({"pixels": pixels}).encode(), "application/json"


def costly_payload() -> bytes:
    """Issue 16's costly picture: a 7 on a transparent 3,460 x 3,460 RGBA canvas (about 46 KB)."""
    from PIL import Image, ImageDraw

    image = Image.new("RGBA", (COSTLY_SIDE, COSTLY_SIDE), (255, 255, 255, 0))
    ImageDraw.Draw(image).line([(1000, 900), (2500, 900), (1500, 2800)], fill=(0, 0, 0, 255), width=280)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def request_bytes(host: str, port: int, body: bytes, kind: str) -> bytes:
    return (f"POST /predict HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: {kind}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


class Connection:
    """One keep-alive HTTP/1.1 connection speaking just enough HTTP for this benchmark.

    httpx costs 4-6 ms of CPU per request on a 2-CPU machine, more than the server it measures,
    so the clients here send prebuilt request bytes and read the status line, headers and
    ``Content-Length`` body with asyncio streams (well under 0.5 ms per request).
    """

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, raw: bytes) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        self.writer.write(raw)
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = dict(line.split(":", 1) for line in lines[1:] if ":" in line)
        length = int(next((v for k, v in headers.items() if k.strip().lower() == "content-length"), "0"))
        body = await self.reader.readexactly(length)
        if any(k.strip().lower() == "connection" and v.strip().lower() == "close" for k, v in headers.items()):
            await self.close()
        return status, body

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(Exception):
                await self.writer.wait_closed()
        self.reader = self.writer = None


# ---------------------------------------------------------------------------- the load
async def load(url: str, args: argparse.Namespace, clients: int, raw: bytes, costly: bytes | None,
               server_pid: int, profile: str | None) -> dict:
    """One closed-loop run of ``clients`` measured clients (plus the costly ones); its figures."""
    import httpx

    host, port = url.split("//")[1].split(":")
    latencies: list[float] = []
    errors: list[str] = []
    costly_answers: Counter = Counter()
    answered = 0
    state: dict = {"start": None, "stop": False, "spy": None}

    async def one_client(number: int) -> None:
        nonlocal answered
        connection = Connection(host, int(port))
        pauses = np.random.default_rng([0, number])
        try:
            while not state["stop"]:
                t0 = time.perf_counter()
                try:
                    status, answer = await asyncio.wait_for(connection.request(raw), 30)
                    ok = status == 200
                    if not ok:
                        errors.append(f"HTTP {status}: {answer[:120]!r}")
                except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, ValueError) as exc:
                    ok = False
                    errors.append(f"{type(exc).__name__}: {exc}")
                    await connection.close()
                t1 = time.perf_counter()
                answered += 1
                if answered == WARMUP:
                    state["start"] = t1
                    state["cpu"] = (cpu_seconds(), cpu_seconds(server_pid))
                    state["cpu_by_process"] = cpu_by_process(server_pid)
                    state["spy"] = start_profile(profile, server_pid, args.duration)
                elif answered > WARMUP and state["start"]:
                    if ok:
                        latencies.append(t1 - t0)
                    if len(latencies) >= args.requests or t1 - state["start"] >= args.duration:
                        state["stop"] = True
                if args.think_ms:
                    await asyncio.sleep(pauses.exponential(args.think_ms) / 1000)
        finally:
            await connection.close()

    async def costly_client() -> None:
        assert costly is not None
        connection = Connection(host, int(port))
        try:
            while not state["stop"]:
                try:
                    status, _ = await asyncio.wait_for(connection.request(costly), 60)
                    costly_answers[str(status)] += 1
                except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, ValueError) as exc:
                    costly_answers[type(exc).__name__] += 1
                    await connection.close()
        finally:
            await connection.close()

    memory_before = memory_mb(server_pid)
    await asyncio.gather(*(one_client(i) for i in range(clients)),
                         *(costly_client() for _ in range(args.costly_clients if costly else 0)))
    elapsed = time.perf_counter() - state["start"]
    client_cpu, server_cpu = cpu_seconds() - state["cpu"][0], cpu_seconds(server_pid) - state["cpu"][1]
    busy = {p: s - state["cpu_by_process"].get(p, 0.0) for p, s in cpu_by_process(server_pid).items()}
    if state["spy"] is not None:
        state["spy"].wait()
    health = httpx.get(url + "/health").json()
    ms = np.array(latencies) * 1000
    return {
        "clients": clients, "payload": args.payload, "think_ms": args.think_ms, "costly_clients": args.costly_clients,
        "server_args": args.server_args,
        "measured_requests": len(latencies), "seconds": round(elapsed, 2),
        "throughput_rps": round(len(latencies) / elapsed, 1),
        "latency_ms": {q: round(float(np.percentile(ms, p)), 1) for q, p in
                       (("p50", 50), ("p90", 90), ("p99", 99), ("max", 100))} if len(ms) else {},
        "errors": len(errors), "first_errors": errors[:3], "costly_answers": dict(costly_answers),
        "server_batches": health.get("batches"), "server_requests": health.get("requests"),
        "mean_batch": round(health["requests"] / max(health["batches"], 1), 1),
        "largest_batch": health.get("largest_batch"),
        "server_cpu_ms_per_request": round(1000 * server_cpu / max(len(latencies), 1), 2),
        "client_cpu_ms_per_request": round(1000 * client_cpu / max(len(latencies), 1), 2),
        "server_busy_share_by_process": [round(busy[p] / max(elapsed, 1e-9), 2) for p in sorted(busy)],
        "server_memory_mb": {"before": memory_before, "after": memory_mb(server_pid)},
        "load_average_1min_after": round(os.getloadavg()[0], 2),
    }


def start_profile(out: str | None, pid: int, seconds: float) -> subprocess.Popen | None:
    """py-spy recording the server (and its workers) for the measuring window, if asked for."""
    if not out:
        return None
    spy = shutil.which("py-spy")
    if spy is None:
        raise SystemExit("--profile needs py-spy: pip install py-spy")
    return subprocess.Popen([spy, "record", "-o", out, "--pid", str(pid), "--subprocesses", "--nonblocking",
                             "--duration", str(max(1, int(seconds))), "--rate", "200",
                             *(["--format", "raw"] if out.endswith(".txt") else [])],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


# ---------------------------------------------------------------------------- report
def report(r: dict, target_ms: float) -> bool:
    """Print one count's figures; True when it met the target with zero errors."""
    lat, mem = r["latency_ms"], r["server_memory_mb"]
    print(f"\n{r['clients']} clients, {r['payload']} payload, think {r['think_ms']:g} ms (mean), "
          f"{r['costly_clients']} costly clients, server args {r['server_args'] or '(none)'}: "
          f"{r['measured_requests']} requests in {r['seconds']} s")
    print(f"latency ms: p50 {lat.get('p50')}  p90 {lat.get('p90')}  p99 {lat.get('p99')}  max {lat.get('max')}")
    print(f"throughput: {r['throughput_rps']} requests/s   errors: {r['errors']}   "
          f"batches: mean {r['mean_batch']}, largest {r['largest_batch']}")
    print(f"CPU per request: server {r['server_cpu_ms_per_request']} ms, client {r['client_cpu_ms_per_request']} ms"
          f"   (load average {r['load_average_1min_after']} after)")
    print("server processes busy (share of one core, parent first): "
          + " / ".join(f"{x:.0%}" for x in r["server_busy_share_by_process"]))
    print(f"server memory MB: {mem['before']['rss']} before, {mem['after']['rss']} after, peak {mem['after']['peak']}")
    if r["costly_answers"]:
        print(f"costly pictures answered: {r['costly_answers']}")
    for e in r["first_errors"]:
        print(f"  error: {e}")
    met = bool(r["errors"] == 0 and lat and lat["p99"] <= target_ms)
    print(f"target p99 <= {target_ms:g} ms with zero errors: {'met' if met else 'MISSED'}")
    return met


def main() -> int:
    from mnistlab import runtime

    args = parse_args()
    counts = [int(c) for c in args.clients.split(",") if c.strip()]
    runtime.import_tensorflow_quietly()  # machine() asks TensorFlow its version: no start-up noise here
    info = {**machine(), "python": platform.python_version()}
    print(f"machine: {describe(info)}, Python {info['python']}")
    n_workers = workers(args.workers)
    server_args = f"--workers {n_workers} {args.server_args}".strip()
    results: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="mnistlab-bench-") as tmp:
        run = args.run or str(untrained_run(Path(tmp) / "cnn"))
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        command = [sys.executable, "-m", "mnistlab.cli", "serve", run, "--host", "127.0.0.1", "--port", str(port),
                   *server_args.split()]
        log = Path(tmp) / "server.log"  # a file, not a pipe: a pipe nobody reads would stall the server
        with log.open("w") as log_file:
            server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log_file, text=True)
        try:
            asyncio.run(wait_until_up(url, server, log, n_workers))
            body, kind = payload(args.payload)
            raw = request_bytes("127.0.0.1", port, body, kind)
            costly = request_bytes("127.0.0.1", port, costly_payload(), "image/png") if args.costly_clients else None
            args.server_args = server_args
            for i, clients in enumerate(counts):
                results.append(asyncio.run(load(url, args, clients, raw, costly, server.pid,
                                                args.profile if i == 0 else None)))
                results[-1]["machine"] = info
        finally:
            server.terminate()
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
    met = [report(r, args.target_p99_ms) for r in results]
    print()
    print(table(["clients", "payload", "workers", "p50 ms", "p99 ms", "requests/s", "server CPU ms/request", "errors"],
                [[r["clients"], r["payload"], n_workers, r["latency_ms"].get("p50"), r["latency_ms"].get("p99"),
                  r["throughput_rps"], r["server_cpu_ms_per_request"], r["errors"]] for r in results]))
    print(f"\n{describe(info)}")
    if args.profile:
        print(f"profile: {args.profile}")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(results, indent=2) + "\n")
    return 0 if all(met) else 1


if __name__ == "__main__":
    sys.exit(main())
