"""Serving benchmark: latency and throughput of ``mnistlab serve`` under concurrent clients.

Starts ``mnistlab serve RUN`` on 127.0.0.1 (a free port) in its own process, then runs CLIENTS
clients on loopback, each sending its next ``POST /predict`` as soon as the last one is answered
(a closed loop, the hardest steady load for that many clients), until REQUESTS answers or
DURATION seconds. Prints p50 / p90 / p99 / max latency, throughput, errors and the server's
batching, and exits 1 when there were errors or p99 missed the target.

    python benchmarks/bench_serve.py runs/cnn                 # 50 clients, PNGs as the page sends them
    python benchmarks/bench_serve.py --payload json           # 28 x 28 pixels, no decoding
    python benchmarks/bench_serve.py --think-ms 100           # people drawing: ~a request per 100 ms each
    python benchmarks/bench_serve.py --server-args "--workers 2"   # two server processes

With ``--think-ms``, each client pauses a random time between requests (exponential with that
mean, seeded): people do not send in lockstep, and a fixed pause would keep 50 clients firing
together forever, measuring one synthetic burst instead of a crowd.

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
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _common import machine  # benchmarks/ is on sys.path when this runs as a script

WARMUP = 200  # requests answered before measuring (traces, caches, connection set-up)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("run", nargs="?", help="model to serve (default: untrained 'cnn' architecture)")
    p.add_argument("--clients", type=int, default=50, help="concurrent clients")
    p.add_argument("--requests", type=int, default=5000, help="stop after this many measured answers")
    p.add_argument("--duration", type=float, default=30.0, help="stop after this many seconds of measuring")
    p.add_argument("--payload", choices=("png", "png-canvas", "json"), default="png",
                   help="png: a drawing as the page sends it (56 x 56); png-canvas: the 280 x 280 canvas; "
                        "json: 784 pixels")
    p.add_argument("--think-ms", type=float, default=0.0,
                   help="mean random pause between a client's requests, ms (0: closed loop)")
    p.add_argument("--target-p99-ms", type=float, default=50.0, help="p99 latency target, ms")
    p.add_argument("--server-args", default="", help="extra `mnistlab serve` options, e.g. '--batch-wait-ms 2'")
    p.add_argument("--json-out", default=None, help="also write the results as JSON to this file")
    return p.parse_args()


def _stat(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()  # fields from state on


def cpu_seconds(pid: int | None = None) -> float:
    """User + system CPU time of process ``pid`` and its children (``--workers``), or of this process."""
    if pid is None:
        return time.process_time()
    pids = [pid] + [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and _ppid(int(p.name)) == pid]
    total = 0
    for each in pids:
        try:
            fields = _stat(each)
        except OSError:  # exited meanwhile
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / os.sysconf("SC_CLK_TCK")


def _ppid(pid: int) -> int | None:
    try:
        return int(_stat(pid)[1])
    except (OSError, IndexError, ValueError):
        return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def untrained_run(folder: Path) -> Path:
    """An untrained ``cnn`` in a run folder (same architecture, so the same cost per image)."""
    import keras

    from mnistlab import fileio, models

    model = models.build("cnn", seed=0)
    folder.mkdir(parents=True, exist_ok=True)
    with fileio.atomic_path(folder / "model.keras", suffix=".keras") as tmp:
        model.save(tmp)
    fileio.write_json(folder / "config.json", {"model": "cnn", "note": "untrained, for benchmarking"})
    del keras
    return folder


def payload(kind: str) -> tuple[bytes, str]:
    """A request body: a 7 drawn on the page's 280 x 280 canvas, sent as the page sends it (``png``:
    downscaled to 56 x 56), at full size (``png-canvas``), or as its 784 pixels (``json``)."""
    from PIL import Image, ImageDraw

    from mnistlab import preprocess

    image = Image.new("RGB", (280, 280), "white")
    ImageDraw.Draw(image).line([(80, 70), (200, 70), (120, 220)], fill="black", width=23, joint="curve")
    if kind == "png":
        image = image.resize((56, 56), Image.Resampling.BOX)  # static/app.js: SEND_SIDE
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    if kind.startswith("png"):
        return buf.getvalue(), "image/png"
    pixels = preprocess.preprocess(buf.getvalue()).reshape(-1).round(4).tolist()
    return json.dumps({"pixels": pixels}).encode(), "application/json"


async def wait_until_up(url: str, server: subprocess.Popen, timeout: float = 180) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient() as c:
        while time.monotonic() < deadline:
            if server.poll() is not None:
                raise SystemExit(f"the server exited with status {server.returncode}")
            try:
                if (await c.get(url + "/health")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.2)
    raise SystemExit(f"the server did not answer {url}/health within {timeout:.0f} s")


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


async def load(url: str, args: argparse.Namespace, body: bytes, kind: str, server_pid: int) -> dict:
    import httpx

    host, port = url.split("//")[1].split(":")
    raw = (f"POST /predict HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: {kind}\r\n"
           f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    latencies: list[float] = []
    errors: list[str] = []
    answered = 0
    state: dict = {"start": None, "stop": False}

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
                elif answered > WARMUP and state["start"]:
                    if ok:
                        latencies.append(t1 - t0)
                    if len(latencies) >= args.requests or t1 - state["start"] >= args.duration:
                        state["stop"] = True
                if args.think_ms:
                    await asyncio.sleep(pauses.exponential(args.think_ms) / 1000)
        finally:
            await connection.close()

    await asyncio.gather(*(one_client(i) for i in range(args.clients)))
    elapsed = time.perf_counter() - state["start"]
    client_cpu, server_cpu = cpu_seconds() - state["cpu"][0], cpu_seconds(server_pid) - state["cpu"][1]
    health = httpx.get(url + "/health").json()
    ms = np.array(latencies) * 1000
    return {
        "clients": args.clients, "payload": args.payload, "think_ms": args.think_ms,
        "server_args": args.server_args,
        "measured_requests": len(latencies), "seconds": round(elapsed, 2),
        "throughput_rps": round(len(latencies) / elapsed, 1),
        "latency_ms": {q: round(float(np.percentile(ms, p)), 1) for q, p in
                       (("p50", 50), ("p90", 90), ("p99", 99), ("max", 100))} if len(ms) else {},
        "errors": len(errors), "first_errors": errors[:3],
        "server_batches": health.get("batches"), "server_requests": health.get("requests"),
        "mean_batch": round(health["requests"] / max(health["batches"], 1), 1),
        "largest_batch": health.get("largest_batch"),
        "server_cpu_ms_per_request": round(1000 * server_cpu / max(len(latencies), 1), 2),
        "client_cpu_ms_per_request": round(1000 * client_cpu / max(len(latencies), 1), 2),
        "load_average_1min_after": round(os.getloadavg()[0], 2),
    }


def main() -> int:
    args = parse_args()
    with tempfile.TemporaryDirectory(prefix="mnistlab-bench-") as tmp:
        run = args.run or str(untrained_run(Path(tmp) / "cnn"))
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        command = [sys.executable, "-m", "mnistlab.cli", "serve", run, "--host", "127.0.0.1", "--port", str(port),
                   *args.server_args.split()]
        server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            asyncio.run(wait_until_up(url, server))
            body, kind = payload(args.payload)
            before = machine()
            result = asyncio.run(load(url, args, body, kind, server.pid))
            result["machine"] = {**before, "python": platform.python_version()}
        finally:
            server.terminate()
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                server.kill()
    lat = result["latency_ms"]
    m = result["machine"]
    print(f"{result['clients']} clients, {args.payload} payload, think {args.think_ms:g} ms (mean), "
          f"server args {args.server_args or '(none)'}, "
          f"{result['measured_requests']} requests in {result['seconds']} s")
    print(f"machine: {m['cpu']}, {m['cores']} cores, load average {m['load_average']} before; "
          f"TensorFlow {m['tensorflow']}, Python {m['python']}, {m['date']}")
    print(f"latency ms: p50 {lat.get('p50')}  p90 {lat.get('p90')}  p99 {lat.get('p99')}  max {lat.get('max')}")
    print(f"throughput: {result['throughput_rps']} requests/s   errors: {result['errors']}   "
          f"batches: mean {result['mean_batch']}, largest {result['largest_batch']}")
    print(f"CPU per request: server {result['server_cpu_ms_per_request']} ms, client {result['client_cpu_ms_per_request']} ms"
          f"   (load average {result['load_average_1min_after']} after)")
    for e in result["first_errors"]:
        print(f"  error: {e}")
    met = result["errors"] == 0 and lat and lat["p99"] <= args.target_p99_ms
    print(f"target p99 <= {args.target_p99_ms:g} ms with zero errors: {'met' if met else 'MISSED'}")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(result, indent=2) + "\n")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
