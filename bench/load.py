"""Load for the overhead benchmark: the request it sends, a raw keep-alive client, wrk, and /proc readings."""

from __future__ import annotations

import asyncio
import gc
import json
import os
import re
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from bench.stats import percentiles

PATH = "/v1/chat/completions"


@dataclass(frozen=True, slots=True)
class Request:
    """The chat request of every case: SAMPLED (temperature 0.7) by default, so no response cache answers it."""

    model: str
    key: str
    temperature: float = 0.7
    stream: bool = False

    def payload(self) -> dict[str, Any]:
        message = {"role": "user", "content": "Write a haiku about speed."}
        return {
            "model": self.model,
            "messages": [message],
            "max_tokens": 16,
            "temperature": self.temperature,
            "stream": self.stream,
        }

    def body(self) -> bytes:
        return json.dumps(self.payload()).encode()

    def streaming(self) -> Request:
        return replace(self, stream=True)

    def raw(self, port: int) -> bytes:
        data = self.body()
        head = f"POST {PATH} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
        return f"{head}Authorization: Bearer {self.key}\r\nContent-Length: {len(data)}\r\n\r\n".encode() + data


class Connection:
    """A blocking HTTP/1.1 keep-alive client; request() gives (ns to the first body bytes, ns to the end)."""

    def __init__(self, port: int, request: Request) -> None:
        self.raw = request.raw(port)
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def request(self) -> tuple[int, int]:
        begin, buf, head_end, first, length = time.perf_counter_ns(), b"", -1, 0, -1
        self.sock.sendall(self.raw)
        while True:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("the server closed the connection")
            buf += data
            if head_end < 0 and (head_end := buf.find(b"\r\n\r\n")) >= 0:
                head = buf[:head_end].lower()
                if not head.startswith(b"http/1.1 200"):
                    raise RuntimeError(f"unexpected answer: {buf[:400]!r}")
                found = re.search(rb"\r\ncontent-length: *(\d+)", head)
                length = int(found.group(1)) if found else -1
            received = buf[head_end + 4 :] if head_end >= 0 else b""
            if received and not first:
                first = time.perf_counter_ns()
            chunked_end = received == b"0\r\n\r\n" or received.endswith(b"\r\n0\r\n\r\n")
            if received and (len(received) >= length if length >= 0 else chunked_end):
                return first - begin, time.perf_counter_ns() - begin


def latency_case(ports: dict[str, int], request: Request, n: int) -> dict[str, Any]:
    """`n` sequential requests per target, the targets alternating request by request (same machine state)."""
    conns = {target: Connection(port, request) for target, port in ports.items()}
    samples: dict[str, list[tuple[int, int]]] = {target: [] for target in ports}
    try:
        for _ in range(max(100, n // 10)):  # warm-up: connections, caches, first-call paths
            for conn in conns.values():
                conn.request()
        gc.disable()  # our own collections would land in the samples
        for _ in range(n):
            for target, conn in conns.items():
                samples[target].append(conn.request())
    finally:
        gc.enable()
        for conn in conns.values():
            conn.sock.close()
    out: dict[str, Any] = {}
    for metric, index in (("first_chunk", 0), ("total", 1)) if request.stream else (("total", 1),):
        out[metric] = {target: percentiles([s[index] for s in runs]) for target, runs in samples.items()}
        if "direct" in out[metric] and "gateway" in out[metric]:
            direct, gateway = out[metric]["direct"], out[metric]["gateway"]
            out[metric]["added"] = {q: round(gateway[q] - direct[q], 3) for q in direct}
    return out


def pin(cpus: str | None) -> list[str]:
    """A taskset prefix for `cpus` ("0", "0,1"), nothing when unpinned."""
    return ["taskset", "-c", cpus] if cpus is not None and shutil.which("taskset") else []


def wrk(
    port: int, request: Request, *, concurrency: int, duration: float, cpus: str | None, tmp: Path
) -> dict[str, float]:
    script = tmp / "wrk.lua"
    script.write_text(
        f'wrk.method = "POST"\nwrk.body = [[{request.body().decode()}]]\n'
        f'wrk.headers["Content-Type"] = "application/json"\nwrk.headers["Authorization"] = "Bearer {request.key}"\n'
    )
    command = [*pin(cpus), "wrk", "-t1", f"-c{concurrency}", f"-d{round(duration)}s", "--latency"]
    done = subprocess.run([*command, "-s", str(script), f"http://127.0.0.1:{port}{PATH}"], capture_output=True)
    text = done.stdout.decode()
    if done.returncode != 0 or "Requests/sec:" not in text:
        raise RuntimeError(f"wrk failed: {text}{done.stderr.decode()}")
    errors = re.findall(r"(?:Non-2xx or 3xx responses|connect|read|write|timeout):? (\d+)", text)
    figures = {"rps": float(re.findall(r"Requests/sec:\s+([\d.]+)", text)[0]), "errors": sum(map(int, errors))}
    for q in ("50", "99"):
        value, unit = re.findall(rf"\s{q}%\s+([\d.]+)(us|ms|s)", text)[0]
        figures[f"p{q}_ms"] = round(float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit], 3)
    return figures


async def aiohttp_load(port: int, request: Request, *, concurrency: int, duration: float) -> dict[str, float]:
    """The fallback when wrk is missing (slower: it takes CPU from the core it shares)."""
    import aiohttp

    url, data, counts = f"http://127.0.0.1:{port}{PATH}", request.body(), {"ok": 0, "errors": 0}
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {request.key}"}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:

        async def worker(deadline: float) -> None:
            while time.perf_counter() < deadline:
                async with session.post(url, data=data, headers=headers) as response:
                    await response.read()
                    counts["ok" if response.status == 200 else "errors"] += 1

        began = time.perf_counter()
        await asyncio.gather(*(worker(began + duration) for _ in range(concurrency)))
        return {"rps": round(counts["ok"] / (time.perf_counter() - began), 1), "errors": counts["errors"]}


def load_generator() -> str:
    return "wrk, 1 thread" if shutil.which("wrk") else "aiohttp client (wrk not installed: apt-get install wrk)"


def process_tree(pid: int) -> list[int]:
    """`pid` and its descendants (uvicorn's workers, PostgreSQL's backends); gone ones are skipped."""
    pids, index = [pid], 0
    while index < len(pids):
        task_dir = Path(f"/proc/{pids[index]}/task")
        index += 1
        try:
            for tid in os.listdir(task_dir):
                pids.extend(int(child) for child in (task_dir / tid / "children").read_text().split())
        except OSError:
            continue
    return pids


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of `pid` and its descendants."""
    total = 0
    for each in process_tree(pid):
        try:
            fields = Path(f"/proc/{each}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    """Resident memory of `pid` and its descendants, MiB."""
    total_kib = 0
    for each in process_tree(pid):
        try:
            found = re.search(r"^VmRSS:\s+(\d+) kB", Path(f"/proc/{each}/status").read_text(), re.M)
        except OSError:
            continue
        total_kib += int(found.group(1)) if found else 0
    return round(total_kib / 1024, 1)


def set_affinity(pid: int, cpus: set[int]) -> None:
    """Move `pid` and its descendants to `cpus` (children started later inherit it)."""
    for each in process_tree(pid):
        try:
            os.sched_setaffinity(each, cpus)
        except OSError:
            continue


def throughput(
    port: int, pid: int, request: Request, *, concurrency: int, duration: float, cpus: str | None, tmp: Path
) -> dict[str, float]:
    """Closed-loop load for `duration` s, and the server's CPU per request (less distorted by host noise)."""
    began = cpu_seconds(pid)
    if shutil.which("wrk"):
        run = wrk(port, request, concurrency=concurrency, duration=duration, cpus=cpus, tmp=tmp)
    else:
        run = asyncio.run(aiohttp_load(port, request, concurrency=concurrency, duration=duration))
    run["cpu_us_per_request"] = round((cpu_seconds(pid) - began) / max(1, run["rps"] * duration) * 1e6)
    return run
