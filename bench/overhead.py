"""Gateway overhead benchmark: the same chat requests sent straight to a fake upstream and through the gateway.

Run from the repo root: `python -m bench.overhead [--requests N] [--duration S] [--concurrency C]`.
One gateway worker is pinned to CPU 0; the fake upstream and the load generators share CPU 1.
  latency     N sequential requests on keep-alive connections, direct and gateway alternating request by
              request (both see the same machine); a blocking raw-socket client, no event loop in the way
  throughput  C connections for S seconds per case with wrk (an aiohttp client if wrk is missing), and the
              server's CPU time per request (from /proc), which host noise distorts less than req/s
  calibration the speed of each core and the cost of a cross-core wake-up: a gateway request crosses
              cores twice more than a direct one, and vCPUs of a shared VM are not equally fast
Prints a table and writes bench/results/overhead-<timestamp>.json. Goals (architecture.md, "Performance
goal and habits"): added p50 <= 1 ms and p99 <= 5 ms, >= 2,000 req/s at concurrency 32, TTFC added <= 1 ms.
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

from services.redis import LocalRedis
from tests.support.catalogs import chat_entry, write_models_file
from tests.support.processes import stop, wait_healthy

ROOT = Path(__file__).resolve().parent.parent
PATH, KEY, MODEL = "/v1/chat/completions", "bench-admin-key-0123456789", "bench"
PINNED = (os.cpu_count() or 1) >= 2 and shutil.which("taskset") is not None
GOALS = {"added_p50_ms": 1.0, "added_p99_ms": 5.0, "gateway_rps": 2000.0, "added_first_chunk_p50_ms": 1.0}
Servers = dict[str, subprocess.Popen[bytes]]


def progress(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def body(stream: bool) -> bytes:
    message = {"role": "user", "content": "Write a haiku about speed."}
    return json.dumps({"model": MODEL, "messages": [message], "max_tokens": 16, "stream": stream}).encode()


def raw_request(port: int, stream: bool) -> bytes:
    data = body(stream)
    head = f"POST {PATH} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
    return f"{head}Authorization: Bearer {KEY}\r\nContent-Length: {len(data)}\r\n\r\n".encode() + data


class Connection:
    """A blocking HTTP/1.1 keep-alive client; request() gives (ns to the first body bytes, ns to the end)."""

    def __init__(self, port: int, stream: bool) -> None:
        self.raw = raw_request(port, stream)
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


def percentiles(samples_ns: list[int], scale: float = 1e6) -> dict[str, float]:
    ordered = sorted(samples_ns)
    at = {q: ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))] / scale for q in (50, 90, 99)}
    return {f"p{q}": round(v, 3) for q, v in at.items()}


def latency_case(ports: dict[str, int], stream: bool, n: int) -> dict[str, Any]:
    conns = {target: Connection(port, stream) for target, port in ports.items()}
    samples: dict[str, list[tuple[int, int]]] = {target: [] for target in ports}
    try:
        for _ in range(max(100, n // 10)):  # warm-up: connections, caches, first-call paths
            for conn in conns.values():
                conn.request()
        gc.disable()
        for _ in range(n):
            for target, conn in conns.items():
                samples[target].append(conn.request())
    finally:
        gc.enable()
        for conn in conns.values():
            conn.sock.close()
    out: dict[str, Any] = {}
    for metric, index in (("first_chunk", 0), ("total", 1)) if stream else (("total", 1),):
        out[metric] = {target: percentiles([s[index] for s in runs]) for target, runs in samples.items()}
        direct, gateway = out[metric]["direct"], out[metric]["gateway"]
        out[metric]["added"] = {q: round(gateway[q] - direct[q], 3) for q in direct}
    return out


def wrk(port: int, stream: bool, args: argparse.Namespace) -> dict[str, float]:
    script = Path(args.tmp) / "wrk.lua"
    script.write_text(
        f'wrk.method = "POST"\nwrk.body = [[{body(stream).decode()}]]\n'
        f'wrk.headers["Content-Type"] = "application/json"\nwrk.headers["Authorization"] = "Bearer {KEY}"\n'
    )
    command = [*pin(args.load_cpu), "wrk", "-t1", f"-c{args.concurrency}", f"-d{round(args.duration)}s", "--latency"]
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


async def aiohttp_load(port: int, stream: bool, args: argparse.Namespace) -> dict[str, float]:
    import aiohttp

    url, data, counts = f"http://127.0.0.1:{port}{PATH}", body(stream), {"ok": 0, "errors": 0}
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=args.concurrency)) as session:

        async def worker(deadline: float) -> None:
            while time.perf_counter() < deadline:
                async with session.post(url, data=data, headers=headers) as response:
                    await response.read()
                    counts["ok" if response.status == 200 else "errors"] += 1

        began = time.perf_counter()
        await asyncio.gather(*(worker(began + args.duration) for _ in range(args.concurrency)))
        return {"rps": round(counts["ok"] / (time.perf_counter() - began), 1), "errors": counts["errors"]}


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def throughput_case(servers: Servers, ports: dict[str, int], stream: bool, args: argparse.Namespace) -> dict[str, Any]:
    out = {}
    for target, port in ports.items():
        progress(f"throughput {'stream' if stream else 'json':6} {target:7} {args.concurrency} connections")
        pid, began = servers[target].pid, cpu_seconds(servers[target].pid)
        run = wrk(port, stream, args) if shutil.which("wrk") else asyncio.run(aiohttp_load(port, stream, args))
        run["cpu_us_per_request"] = round((cpu_seconds(pid) - began) / max(1, run["rps"] * args.duration) * 1e6)
        out[target] = run
    return out


def pin(cpu: int) -> list[str]:
    return ["taskset", "-c", str(cpu)] if PINNED else []


def core_speed() -> dict[int, float]:
    """ms for a fixed pure-Python loop on each core (best of 3)."""
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


def round_trip_us(cpu_a: int, cpu_b: int, n: int = 3000) -> dict[str, float]:
    """A one-byte ping-pong between two processes on two cores: the price of waking the other side."""
    a, b = socket.socketpair()
    if (child := os.fork()) == 0:
        os.sched_setaffinity(0, {cpu_b})
        while b.recv(1) == b"x":
            b.send(b"x")
        os._exit(0)
    os.sched_setaffinity(0, {cpu_a})
    samples = []
    for _ in range(n):
        began = time.perf_counter_ns()
        a.send(b"x")
        a.recv(1)
        samples.append(time.perf_counter_ns() - began)
    a.send(b"q")
    os.waitpid(child, 0)
    a.close()
    b.close()
    return percentiles(samples, scale=1e3)


def start_servers(stack: ExitStack, args: argparse.Namespace) -> tuple[Servers, dict[str, int]]:
    tmp, env = Path(args.tmp), {k: v for k, v in os.environ.items() if not k.startswith("CITADEL_")}
    with socket.socket() as one, socket.socket() as two:
        one.bind(("127.0.0.1", 0))
        two.bind(("127.0.0.1", 0))
        ports = {"direct": one.getsockname()[1], "gateway": two.getsockname()[1]}
    models = write_models_file(tmp / "models.yaml", {MODEL: chat_entry(f"http://127.0.0.1:{ports['direct']}")})
    gateway_env = {"CITADEL_ADMIN_KEY": KEY, "CITADEL_CONFIG_PATH": str(models), "CITADEL_PROFILE": ""}
    gateway_env["CITADEL_AUDIT_SPOOL_DIR"] = str(tmp / "audit-spool")  # no database: audit rows spool here
    if not args.no_redis:
        # Rate limits on, as the performance goal says: a local Redis (on the load's core) and a limit the
        # bench cannot reach, so every request pays the real check (one EVALSHA) and none is refused.
        with socket.socket() as three:
            three.bind(("127.0.0.1", 0))
            redis_port = three.getsockname()[1]
        redis = LocalRedis(redis_port, data_dir=tmp)
        progress(f"starting redis on :{redis_port}")
        redis.start()
        stack.callback(redis.stop)
        if PINNED and redis.pid is not None:
            os.sched_setaffinity(redis.pid, {args.load_cpu})  # beside the upstream, off the gateway's core
        gateway_env["REDIS_URL"] = redis.url
        gateway_env["CITADEL_RATE_LIMIT_ROLE_REQUESTS"] = '{"admin": "1000000000/minute"}'
        gateway_env["CITADEL_RATE_LIMIT_ROLE_TOKENS"] = '{"admin": "1000000000000/minute"}'
    plans = {  # cwd of the gateway is the temp dir, so that no .env is read
        "direct": (["-m", "services.fake_upstream"], args.load_cpu, ROOT, {"PYTHONPATH": str(ROOT)}),
        "gateway": (["-m", "gateway", "serve", "--workers", "1"], args.gateway_cpu, tmp, gateway_env),
    }
    servers = {}
    for target, (module, cpu, cwd, extra) in plans.items():
        progress(f"starting the {target} server on :{ports[target]} (CPU {cpu})")
        command = [*pin(cpu), sys.executable, *module, "--port", str(ports[target])]
        log = tmp / f"{target}.log"
        with log.open("wb") as out:  # own session: a Ctrl-C reaches us, and we stop them
            server = subprocess.Popen(command, env=env | extra, cwd=cwd, stdout=out, stderr=out, start_new_session=True)
        stack.callback(stop, server)  # before waiting, so that an interrupted start is cleaned up too
        wait_healthy(f"http://127.0.0.1:{ports[target]}/health", process=server, timeout_s=60, log=log)
        servers[target] = server
    return servers, ports


def environment(args: argparse.Namespace) -> dict[str, Any]:
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = re.search(r"model name\s*:\s*(.*)", cpuinfo)
    return {
        "cpu": model.group(1).strip() if model else platform.processor(),
        "cores": os.cpu_count(),
        "pinning": f"gateway CPU {args.gateway_cpu}, upstream + load CPU {args.load_cpu}" if PINNED else "none",
        "python": platform.python_version(),
        "kernel": platform.release(),
        "load_generator": "wrk 1 thread" if shutil.which("wrk") else "aiohttp client (wrk not installed)",
    }


def calibrate(args: argparse.Namespace) -> dict[str, Any]:
    speed = {"core_speed_ms": core_speed()}  # first: the round trips below pin this process
    if not PINNED:
        return speed
    same, cross = round_trip_us(args.load_cpu, args.load_cpu), round_trip_us(args.load_cpu, args.gateway_cpu)
    return speed | {"same_core_round_trip_us": same, "cross_core_round_trip_us": cross}


def goals(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    latency, throughput = result["latency"], result["throughput"]
    measured = {
        "added_p50_ms": latency["json"]["total"]["added"]["p50"],
        "added_p99_ms": latency["json"]["total"]["added"]["p99"],
        "gateway_rps": throughput["json"]["gateway"]["rps"],
        "added_first_chunk_p50_ms": latency["stream"]["first_chunk"]["added"]["p50"],
    }
    passed = {k: measured[k] >= GOALS[k] if k == "gateway_rps" else measured[k] <= GOALS[k] for k in GOALS}
    return {k: {"goal": GOALS[k], "measured": measured[k], "pass": passed[k]} for k in GOALS}


def print_report(result: dict[str, Any], args: argparse.Namespace) -> None:
    print("\nEnvironment: " + "; ".join(f"{k} {v}" for k, v in result["environment"].items()))
    print("Calibration: " + "; ".join(f"{k} {v}" for k, v in result["calibration"].items()))
    print(f"\nLatency at concurrency 1, {args.requests} requests each (ms)      p50      p90      p99")
    for label, mode, metric in (("json", "json", "total"), ("stream TTFC", "stream", "first_chunk"),
                                ("stream end", "stream", "total")):  # fmt: skip
        for target, f in result["latency"][mode][metric].items():
            print(f"  {label:12} {target:8}{'':30}{f['p50']:9.3f}{f['p90']:9.3f}{f['p99']:9.3f}")
    tool = result["environment"]["load_generator"]
    print(f"\nThroughput at concurrency {args.concurrency}, {args.duration:g} s each ({tool})")
    print(f"  {'':21}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}{'server CPU us/req':>19}")
    for mode, targets in result["throughput"].items():
        for target, f in targets.items():
            cells = f"{f.get('p50_ms', '-'):>9}{f.get('p99_ms', '-'):>9}{f['errors']:8}{f['cpu_us_per_request']:19}"
            print(f"  {mode:12} {target:8}{f['rps']:9.0f}{cells}")
    print("\nGoals")
    for name, g in result["goals"].items():
        print(f"  {name:26} goal {g['goal']:>7}  measured {g['measured']:>9}  {'PASS' if g['pass'] else 'MISS'}")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000, help="sequential requests per latency case")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per throughput case")
    parser.add_argument("--concurrency", type=int, default=32, help="connections for the throughput cases")
    parser.add_argument("--gateway-cpu", type=int, default=0, help="the core of the gateway worker")
    parser.add_argument("--load-cpu", type=int, default=1, help="the core of the upstream and load generators")
    parser.add_argument("--no-redis", action="store_true", help="measure without Redis (no rate limit check)")
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwind, so that the servers are stopped
    progress("calibrating the cores")
    result: dict[str, Any] = {"timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "environment": environment(args)}
    result |= {"settings": vars(args).copy(), "calibration": calibrate(args), "latency": {}, "throughput": {}}
    if PINNED:
        os.sched_setaffinity(0, {args.load_cpu})
    with tempfile.TemporaryDirectory(prefix="citadel-bench-") as args.tmp, ExitStack() as stack:
        servers, ports = start_servers(stack, args)
        for mode, stream in (("json", False), ("stream", True)):
            progress(f"latency {mode}: {args.requests} requests each, direct and gateway alternating")
            result["latency"][mode] = latency_case(ports, stream, args.requests)
        for mode, stream in (("json", False), ("stream", True)):
            result["throughput"][mode] = throughput_case(servers, ports, stream, args)
        progress("stopping the servers")
    result["goals"] = goals(result)
    print_report(result, args)
    path = ROOT / "bench" / "results" / f"overhead-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nResults written to {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        progress("interrupted (the servers are stopped)")
        sys.exit(130)
