"""Gateway overhead benchmark: the same requests sent straight to a fake upstream and through the gateway.

Run from the repo root: `python -m bench.overhead [--requests N] [--duration S] [--concurrency C]`.
One gateway worker is pinned to CPU 0; the fake upstream and the load generators share CPU 1.
  latency     N sequential chat requests per case over one keep-alive connection (a blocking raw-socket
              client: no event loop between us and the wire), non-streaming and streaming
  throughput  C concurrent connections for S seconds per case, with wrk (or an aiohttp client without it)
Figures are printed as a table and written to bench/results/overhead-<timestamp>.json.
Goals (docs: architecture.md, "Performance goal and habits"): added p50 <= 1 ms, p99 <= 5 ms,
>= 2,000 req/s at concurrency 32, streaming time-to-first-chunk added <= 1 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from tests.support.catalogs import chat_entry, write_models_file
from tests.support.processes import start, stop

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
PATH = "/v1/chat/completions"
KEY = "bench-admin-key-0123456789"
MODEL = "bench"
PINNED = (os.cpu_count() or 1) >= 2 and shutil.which("taskset") is not None
GOALS = {"added_p50_ms": 1.0, "added_p99_ms": 5.0, "gateway_rps": 2000.0, "added_first_chunk_p50_ms": 1.0}


def progress(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def body(stream: bool) -> bytes:
    payload: dict[str, Any] = {"model": MODEL, "messages": [{"role": "user", "content": "Write a haiku about speed."}]}
    payload |= {"max_tokens": 16, "stream": stream}
    return json.dumps(payload, separators=(",", ":")).encode()


def raw_request(port: int, stream: bool) -> bytes:
    data = body(stream)
    head = f"POST {PATH} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
    head += f"Authorization: Bearer {KEY}\r\nContent-Length: {len(data)}\r\n\r\n"
    return head.encode() + data


class Connection:
    """A blocking HTTP/1.1 keep-alive client; returns (ns to first body bytes, ns to the whole answer)."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def request(self, raw: bytes) -> tuple[int, int]:
        begin = time.perf_counter_ns()
        self.sock.sendall(raw)
        buf, head_end, first, length = b"", -1, 0, -1
        while True:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("the server closed the connection")
            buf += data
            if head_end < 0:
                head_end = buf.find(b"\r\n\r\n")
                if head_end < 0:
                    continue
                head = buf[:head_end].lower()
                if not head.startswith((b"http/1.1 200", b"http/1.0 200")):
                    raise RuntimeError(f"unexpected answer: {buf[:400]!r}")
                found = re.search(rb"\r\ncontent-length: *(\d+)", head)
                length = int(found.group(1)) if found else -1
            received = buf[head_end + 4 :]
            if received and not first:
                first = time.perf_counter_ns()
            if (length >= 0 and len(received) >= length) or (
                length < 0 and (received == b"0\r\n\r\n" or received.endswith(b"\r\n0\r\n\r\n"))
            ):
                return first - begin, time.perf_counter_ns() - begin

    def close(self) -> None:
        self.sock.close()


def percentiles(samples_ns: list[int]) -> dict[str, float]:
    ordered = sorted(samples_ns)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1e6, 3)

    return {"p50": at(0.50), "p90": at(0.90), "p99": at(0.99), "max": at(1.0)}


def measure_latency(port: int, stream: bool, n: int) -> dict[str, dict[str, float]]:
    raw, conn = raw_request(port, stream), Connection(port)
    try:
        for _ in range(max(100, n // 10)):  # warm-up: connections, caches, the gateway's first-call paths
            conn.request(raw)
        gc.disable()
        samples = [conn.request(raw) for _ in range(n)]
    finally:
        gc.enable()
        conn.close()
    return {"first_chunk": percentiles([s[0] for s in samples]), "total": percentiles([s[1] for s in samples])}


def added(direct: dict[str, float], gateway: dict[str, float]) -> dict[str, float]:
    return {q: round(gateway[q] - direct[q], 3) for q in ("p50", "p90", "p99")}


def latency_suite(ports: dict[str, int], n: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for mode, stream in (("non_stream", False), ("stream", True)):
        runs = {}
        for target, port in ports.items():
            progress(f"latency  {mode:10} {target:7} {n} sequential requests")
            runs[target] = measure_latency(port, stream, n)
        metrics = ("first_chunk", "total") if stream else ("total",)
        out[mode] = {m: {t: runs[t][m] for t in ports} for m in metrics}
        for m in metrics:
            out[mode][m]["added"] = added(runs["direct"][m], runs["gateway"][m])
    return out


def wrk_script(tmp: Path, stream: bool) -> Path:
    script = tmp / f"wrk-{'stream' if stream else 'json'}.lua"
    script.write_text(
        f'wrk.method = "POST"\nwrk.body = [[{body(stream).decode()}]]\n'
        f'wrk.headers["Content-Type"] = "application/json"\nwrk.headers["Authorization"] = "Bearer {KEY}"\n'
    )
    return script


def _ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()  # type: ignore[union-attr]
    return round(float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit], 3)


def run_wrk(port: int, script: Path, args: argparse.Namespace) -> dict[str, float]:
    duration, concurrency = args.duration, args.concurrency
    command = [*pin(args.load_cpu), "wrk", "-t1", f"-c{concurrency}", f"-d{int(duration)}s", "--latency"]
    done = subprocess.run([*command, "-s", str(script), f"http://127.0.0.1:{port}{PATH}"], capture_output=True)
    text = done.stdout.decode()
    rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
    if done.returncode != 0 or rps is None:
        raise RuntimeError(f"wrk failed: {text}{done.stderr.decode()}")
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    sock = re.search(r"Socket errors: (.*)", text)
    p50, p99 = (re.search(rf"\s{q}%\s+(\S+)", text) for q in ("50", "99"))
    errors = int(bad.group(1)) if bad else 0
    errors += sum(int(n) for n in re.findall(r"\d+", sock.group(1))) if sock else 0
    return {"rps": float(rps.group(1)), "p50_ms": _ms(p50.group(1)), "p99_ms": _ms(p99.group(1)), "errors": errors}  # type: ignore[union-attr]


async def _aiohttp_load(port: int, stream: bool, duration: float, concurrency: int) -> dict[str, float]:
    import aiohttp

    url, data, counts = f"http://127.0.0.1:{port}{PATH}", body(stream), {"ok": 0, "errors": 0}
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"}
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker(deadline: float) -> None:
            while time.perf_counter() < deadline:
                async with session.post(url, data=data, headers=headers) as response:
                    await response.read()
                    counts["ok" if response.status == 200 else "errors"] += 1

        began = time.perf_counter()
        await asyncio.gather(*(worker(began + duration) for _ in range(concurrency)))
        elapsed = time.perf_counter() - began
    return {"rps": round(counts["ok"] / elapsed, 1), "errors": counts["errors"]}


def throughput_suite(ports: dict[str, int], tmp: Path, args: argparse.Namespace) -> dict[str, Any]:
    duration, concurrency = args.duration, args.concurrency
    out: dict[str, Any] = {}
    for mode, stream in (("non_stream", False), ("stream", True)):
        out[mode] = {}
        for target, port in ports.items():
            progress(f"throughput {mode:10} {target:7} {concurrency} connections for {duration:g} s")
            if shutil.which("wrk"):
                out[mode][target] = run_wrk(port, wrk_script(tmp, stream), args)
            else:
                out[mode][target] = asyncio.run(_aiohttp_load(port, stream, duration, concurrency))
    return out


def pin(cpu: int) -> list[str]:
    return ["taskset", "-c", str(cpu)] if PINNED else []


def core_speed() -> dict[int, float]:
    """ms for a fixed pure-Python loop on each core: the vCPUs of one VM are not always equally fast."""
    speeds = {}
    for cpu in sorted(os.sched_getaffinity(0)):
        os.sched_setaffinity(0, {cpu})
        runs = []
        for _ in range(3):
            began = time.perf_counter()
            sum(range(2_000_000))
            runs.append(time.perf_counter() - began)
        speeds[cpu] = round(min(runs) * 1e3, 1)
    return speeds


def free_ports(count: int) -> list[int]:
    with ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]


def start_servers(stack: ExitStack, tmp: Path, args: argparse.Namespace) -> dict[str, int]:
    upstream_port, gateway_port = free_ports(2)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CITADEL_")} | {"PYTHONPATH": str(ROOT)}
    progress(f"starting the fake upstream on :{upstream_port} (CPU {args.load_cpu})")
    command = [*pin(args.load_cpu), sys.executable, "-m", "services.fake_upstream", "--port", str(upstream_port)]
    upstream = start(command, env=env, cwd=ROOT, log=tmp / "upstream.log", health_url=_health(upstream_port))
    stack.callback(stop, upstream)
    models = write_models_file(tmp / "models.yaml", {MODEL: chat_entry(f"http://127.0.0.1:{upstream_port}")})
    env |= {"CITADEL_ADMIN_KEY": KEY, "CITADEL_CONFIG_PATH": str(models), "CITADEL_PROFILE": ""}
    progress(f"starting the gateway on :{gateway_port} (1 worker, CPU {args.gateway_cpu})")
    command = [*pin(args.gateway_cpu), sys.executable, "-m", "gateway", "serve", "--port", str(gateway_port)]
    command += ["--workers", "1"]  # cwd is the temp dir so that no .env is read
    gateway = start(command, env=env, cwd=tmp, log=tmp / "gateway.log", health_url=_health(gateway_port))
    stack.callback(stop, gateway)
    return {"direct": upstream_port, "gateway": gateway_port}


def _health(port: int) -> str:
    return f"http://127.0.0.1:{port}/health"


def environment(args: argparse.Namespace, load_generator: str) -> dict[str, Any]:
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = re.search(r"model name\s*:\s*(.*)", cpuinfo)
    return {
        "cpu": model.group(1).strip() if model else platform.processor(),
        "cores": os.cpu_count(),
        "pinned": f"gateway CPU {args.gateway_cpu}; upstream + load CPU {args.load_cpu}" if PINNED else "no (1 core)",
        "core_speed_ms": args.core_speed,
        "python": platform.python_version(),
        "kernel": platform.release(),
        "load_generator": load_generator,
        "latency_client": "blocking raw-socket HTTP/1.1 keep-alive client (Python)",
    }


def goals(latency: dict[str, Any], throughput: dict[str, Any]) -> dict[str, dict[str, Any]]:
    measured = {
        "added_p50_ms": latency["non_stream"]["total"]["added"]["p50"],
        "added_p99_ms": latency["non_stream"]["total"]["added"]["p99"],
        "gateway_rps": throughput["non_stream"]["gateway"]["rps"],
        "added_first_chunk_p50_ms": latency["stream"]["first_chunk"]["added"]["p50"],
    }
    passed = {k: measured[k] >= GOALS[k] if k == "gateway_rps" else measured[k] <= GOALS[k] for k in GOALS}
    return {k: {"goal": GOALS[k], "measured": measured[k], "pass": passed[k]} for k in GOALS}


def print_report(result: dict[str, Any]) -> None:
    settings = result["settings"]
    print("\nEnvironment: " + "; ".join(f"{k} {v}" for k, v in result["environment"].items()))
    print(f"\nLatency, concurrency 1, {settings['requests']} requests per row (ms)       p50      p90      p99")
    rows = [("non-stream", "non_stream", "total"), ("stream TTFC", "stream", "first_chunk")]
    rows.append(("stream full", "stream", "total"))
    for label, mode, metric in rows:
        for target, figures in result["latency"][mode][metric].items():
            cells = "".join(f"{figures[q]:9.3f}" for q in ("p50", "p90", "p99"))
            print(f"  {label:12} {target:8}{'':38}{cells}")
    tool = result["environment"]["load_generator"]
    print(f"\nThroughput, concurrency {settings['concurrency']}, {settings['duration']:g} s per row ({tool})")
    print(f"  {'':21}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'errors':>8}")
    for mode, targets in result["throughput"].items():
        for target, f in targets.items():
            extra = f"{f['p50_ms']:10.3f}{f['p99_ms']:10.3f}" if "p50_ms" in f else f"{'-':>10}{'-':>10}"
            print(f"  {mode:12} {target:8}{f['rps']:10.0f}{extra}{f['errors']:8}")
    print("\nGoals")
    for name, g in result["goals"].items():
        print(f"  {name:26} goal {g['goal']:>7}  measured {g['measured']:>9}  {'PASS' if g['pass'] else 'MISS'}")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000, help="sequential requests per latency case")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per throughput case")
    parser.add_argument("--concurrency", type=int, default=32, help="connections for the throughput cases")
    parser.add_argument("--gateway-cpu", type=int, default=0, help="the core the gateway worker is pinned to")
    parser.add_argument("--load-cpu", type=int, default=1, help="the core of the upstream and load generators")
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwind, so the servers are stopped
    args.core_speed = core_speed()
    if PINNED:
        os.sched_setaffinity(0, {args.load_cpu})
    load_generator = "wrk (1 thread)" if shutil.which("wrk") else "aiohttp client (wrk not installed)"
    with tempfile.TemporaryDirectory(prefix="citadel-bench-") as tmp_name, ExitStack() as stack:
        tmp = Path(tmp_name)
        ports = start_servers(stack, tmp, args)
        latency = latency_suite(ports, args.requests)
        throughput = throughput_suite(ports, tmp, args)
        progress("stopping the servers")
    result = {
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "environment": environment(args, load_generator),
        "settings": {k: v for k, v in vars(args).items() if k != "core_speed"},
        "latency": latency,
        "throughput": throughput,
        "goals": goals(latency, throughput),
    }
    print_report(result)
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"overhead-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nResults written to {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
