"""Benchmark of ``prefpred serve`` with the CPU model on 127.0.0.1: throughput, latency, errors, memory.

Two servers are started as subprocesses (``python -m prefpred serve``), micro-batching off and on, serving a CPU
run trained on Arena rows; at 1, 8 and 32 concurrent clients they take turns (``--rounds``, so a change in the
machine's load hits both alike) while the clients send single pairs (real Arena pairs, in turn) over
keep-alive connections: a minimal asyncio HTTP/1.1 client by default, ``--client httpx`` for httpx.AsyncClient
(several times more client CPU per request, taken from the same two cores). Printed per level: requests/s,
p50/p99 latency, errors, the server's and the client's CPU seconds per 1,000 requests. Then one long run with batching on (32 clients, ``--long`` requests):
errors and the server's RSS sampled every 1,000 requests, to show memory stays flat.

Targets checked at the end: throughput at 32 clients with batching on >= 3x with batching off; zero errors
over the long run; RSS growth after warm-up < 5% (and < 20 MiB).

Only 127.0.0.1 traffic; every loop is bounded by a request count. The client shares the CPUs with the server,
so the load average and both CPU times are printed; compare ratios from one run, not absolute numbers.

Usage::

    python bench/bench_serve.py [--data ../shared/data/arena/train.csv] [--run RUN_DIR] [--long 10000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "arena" / "train.csv"
TICKS = os.sysconf("SC_CLK_TCK")


# ------------------------------------------------------------------------------------------------ server
def train_run(data: Path, out: Path) -> Path:
    """Train the default CPU model on ``data`` with ``prefpred run`` (about 15-30 s)."""
    t = time.perf_counter()
    cmd = [sys.executable, "-m", "prefpred", "run", "--data", str(data), "--out", str(out), "--name", "bench",
           "--no-embeddings", "--force"]
    done = subprocess.run(cmd, env=_env(), capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"prefpred run failed:\n{done.stderr[-3000:]}")
    print(f"trained {out / 'bench'} in {time.perf_counter() - t:.1f} s", flush=True)
    return out / "bench"


def _env() -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(ROOT / "src"), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}


class Server:
    """``prefpred serve`` in a subprocess on a free port; its CPU time and RSS read from /proc."""

    def __init__(self, run: Path, extra: list[str]):
        cmd = [sys.executable, "-m", "prefpred", "serve", "--run", str(run), "--port", "0", "--no-access-log",
               *extra]
        self.proc = subprocess.Popen(cmd, env=_env(), stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        threading.Thread(target=lambda: self.lines.extend(iter(self.proc.stderr.readline, "")), daemon=True).start()
        self.url = self._wait_ready(120)

    def _wait_ready(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            found = [m.group(0) for line in list(self.lines) if (m := re.search(r"http://127\.0\.0\.1:\d+", line))]
            if found:
                try:
                    if httpx.get(found[0] + "/health", timeout=2).status_code == 200:
                        return found[0]
                except httpx.TransportError:
                    pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError("server did not start:\n" + "".join(self.lines))

    def cpu_s(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime

    def rss_mib(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# ------------------------------------------------------------------------------------------------ load
def request_bodies(data: Path, n: int) -> list[bytes]:
    from prefpred.data import load_pairs

    # the server refuses blank texts (422); the few Arena rows with an empty side are left out
    pairs = [p for p in load_pairs(data) if all(text.strip() for text in (p.text_prompt(), p.text_a(), p.text_b()))]
    pairs = pairs[:n]
    return [json.dumps({"id": p.id, "prompt": [t.prompt for t in p.turns],
                        "response_a": [t.response_a for t in p.turns],
                        "response_b": [t.response_b for t in p.turns]}).encode() for p in pairs]


class RawConnection:
    """A minimal HTTP/1.1 keep-alive client over asyncio streams: far less client CPU per request than httpx,
    which matters when the load generator shares two cores with the server."""

    def __init__(self, url: str):
        host, port = url.removeprefix("http://").rsplit(":", 1)
        self.host, self.port = host, int(port)
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        head = (f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode()
        self.writer.write(head + body)
        await self.writer.drain()
        lines = (await self.reader.readuntil(b"\r\n\r\n")).split(b"\r\n")
        status = int(lines[0].split()[1])
        length = next(int(v) for k, _, v in (line.partition(b":") for line in lines[1:])
                      if k.strip().lower() == b"content-length")
        return status, await self.reader.readexactly(length)

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


async def load(url: str, bodies: list[bytes], clients: int, n_requests: int, *, client: str = "raw",
               on_progress=None) -> dict:
    """``clients`` concurrent loops (one connection each), each sending one pair at a time, ``n_requests`` in
    all; ``client`` is ``raw`` (:class:`RawConnection`) or ``httpx`` (one AsyncClient pool)."""
    latencies: list[float] = []
    errors: list[str] = []
    counter = iter(range(n_requests))
    pool = httpx.AsyncClient(base_url=url, timeout=60, limits=httpx.Limits(max_connections=clients,
                                                                           max_keepalive_connections=clients))

    async def post(conn: RawConnection | None, body: bytes) -> tuple[int, bytes]:
        if conn is not None:
            return await asyncio.wait_for(conn.post("/v1/preference", body), 60)
        r = await pool.post("/v1/preference", content=body, headers={"Content-Type": "application/json"})
        return r.status_code, r.content

    async def worker() -> None:
        conn = RawConnection(url) if client == "raw" else None
        try:
            for i in counter:
                t = time.perf_counter()
                try:
                    status, body = await post(conn, bodies[i % len(bodies)])
                    if status != 200 or b'"p_a"' not in body:
                        errors.append(f"HTTP {status}: {body[:200]!r}")
                except (OSError, asyncio.IncompleteReadError, TimeoutError, httpx.HTTPError) as e:
                    errors.append(f"{type(e).__name__}: {e}")
                    conn = RawConnection(url) if client == "raw" else None
                latencies.append(time.perf_counter() - t)
                if on_progress is not None and len(latencies) % 1000 == 0:
                    on_progress(len(latencies))
        finally:
            if conn is not None:
                await conn.close()

    async with pool:
        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        wall = time.perf_counter() - t0
    return summarize(clients, latencies, wall, errors)


def summarize(clients: int, latencies: list[float], wall: float, errors: list[str]) -> dict:
    lat = np.asarray(latencies) * 1000
    return {"clients": clients, "requests": len(latencies), "wall_s": wall, "rps": len(latencies) / wall,
            "p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99)),
            "errors": len(errors), "first_error": errors[0] if errors else None, "latencies": latencies,
            "error_list": errors}


def measure(servers: dict[str, Server], bodies: list[bytes], clients: int, n_requests: int, client: str,
            rounds: int) -> dict[str, dict]:
    """Each mode's numbers at ``clients`` clients, the modes taking turns in ``rounds`` rounds, so that a
    change of the machine's load (other processes) hits both alike."""
    acc = {mode: {"lat": [], "errors": [], "wall": 0.0, "cpu": 0.0, "client": 0.0} for mode in servers}
    for server in servers.values():
        asyncio.run(load(server.url, bodies, clients, min(50, n_requests), client=client))  # warm-up
    for _ in range(rounds):
        for mode, server in servers.items():
            cpu0, client0 = server.cpu_s(), time.process_time()
            r = asyncio.run(load(server.url, bodies, clients, max(1, n_requests // rounds), client=client))
            a = acc[mode]
            a["cpu"] += server.cpu_s() - cpu0
            a["client"] += time.process_time() - client0
            a["lat"] += r["latencies"]
            a["errors"] += r["error_list"]
            a["wall"] += r["wall_s"]
    out = {}
    for mode, a in acc.items():
        r = summarize(clients, a["lat"], a["wall"], a["errors"])
        r["server_cpu_s_per_1k"] = a["cpu"] / r["requests"] * 1000
        r["client_cpu_s_per_1k"] = a["client"] / r["requests"] * 1000
        out[mode] = r
    return out


def batch_stats(url: str) -> str:
    text = httpx.get(url + "/metrics").text
    get = {m.group(1): float(m.group(2)) for m in re.finditer(r"^(prefpred_batch_\w+(?:_sum|_count)) (\S+)$",
                                                             text, re.M)}
    calls = get.get("prefpred_batch_size_count", 0)
    return (f"{calls:.0f} model calls, {get.get('prefpred_batch_size_sum', 0) / max(calls, 1):.1f} pairs per call"
            if calls else "no model calls")


# ------------------------------------------------------------------------------------------------ main
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--run", type=Path, default=None, help="A CPU run to serve (default: train one on --data).")
    ap.add_argument("--requests", type=int, nargs=3, default=[300, 1000, 3000], metavar=("N1", "N8", "N32"),
                    help="Requests per level at 1, 8 and 32 clients.")
    ap.add_argument("--long", type=int, default=10_000, help="Requests in the long run (batching on, 32 clients).")
    ap.add_argument("--max-batch-size", type=int, default=64)
    ap.add_argument("--max-wait-ms", type=float, default=5.0)
    ap.add_argument("--client", choices=("raw", "httpx"), default="raw",
                    help="Load generator: raw asyncio HTTP/1.1 (little client CPU) or httpx.AsyncClient.")
    ap.add_argument("--rounds", type=int, default=6, help="Turns the two servers take at each level.")
    ap.add_argument("--json", type=Path, default=None, help="Also write the results here.")
    args = ap.parse_args()
    if not args.data.is_file():
        print(f"no data at {args.data}", file=sys.stderr)
        return 2
    import importlib.util

    fast = [m for m in ("httptools", "uvloop") if importlib.util.find_spec(m) is not None]
    print(f"load average before: {' '.join(f'{x:.1f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs; "
          f"uvicorn uses {', '.join(fast) if fast else 'h11 and asyncio (no httptools/uvloop installed)'}")
    bodies = request_bodies(args.data, 2000)
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        run = args.run or train_run(args.data, Path(tmp))
        results: dict = {"levels": {}, "load_before": os.getloadavg()}
        modes = {"off": ["--no-batching"],
                 "on": ["--max-batch-size", str(args.max_batch_size), "--max-wait-ms", str(args.max_wait_ms)]}
        servers = {mode: Server(run, flags) for mode, flags in modes.items()}
        try:
            print(f"\n{'batching':>8} {'clients':>7} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6} "
                  f"{'server CPU s/1k':>15} {'client CPU s/1k':>15}")
            for clients, n in zip((1, 8, 32), args.requests, strict=True):
                for mode, r in measure(servers, bodies, clients, n, args.client, args.rounds).items():
                    results["levels"][f"{mode}-{clients}"] = {k: v for k, v in r.items()
                                                              if k not in {"latencies", "error_list"}}
                    print(f"{mode:>8} {clients:>7} {r['rps']:>8.1f} {r['p50_ms']:>8.1f} {r['p99_ms']:>8.1f} "
                          f"{r['errors']:>6} {r['server_cpu_s_per_1k']:>15.2f} {r['client_cpu_s_per_1k']:>15.2f}",
                          flush=True)
            for mode, server in servers.items():
                print(f"  batching {mode}: {batch_stats(server.url)}")
            results["long"] = long_run(servers["on"], bodies, args.long, args.client)
        finally:
            for server in servers.values():
                server.stop()
    results["load_after"] = os.getloadavg()
    return report(results, args)


def long_run(server: Server, bodies: list[bytes], n: int, client: str) -> dict:
    rss: list[tuple[int, float]] = [(0, server.rss_mib())]
    cpu0 = server.cpu_s()
    r = asyncio.run(load(server.url, bodies, 32, n, client=client,
                         on_progress=lambda k: rss.append((k, server.rss_mib()))))
    r["server_cpu_s"] = server.cpu_s() - cpu0
    r["rss_mib"] = rss
    del r["latencies"], r["error_list"]
    print(f"\nlong run: {r['requests']} requests at 32 clients, {r['rps']:.1f} req/s, p50 {r['p50_ms']:.1f} ms, "
          f"p99 {r['p99_ms']:.1f} ms, {r['errors']} errors, server CPU {r['server_cpu_s']:.1f} s")
    print("  server RSS MiB by requests done: " + ", ".join(f"{k}: {v:.1f}" for k, v in rss))
    if r["first_error"]:
        print(f"  first error: {r['first_error']}")
    return r


def report(results: dict, args) -> int:
    lv = results["levels"]
    ratio = lv["on-32"]["rps"] / lv["off-32"]["rps"]
    cpu_ratio = lv["off-32"]["server_cpu_s_per_1k"] / lv["on-32"]["server_cpu_s_per_1k"]
    long = results["long"]
    rss = [v for _, v in long["rss_mib"]]
    warm = rss[min(2, len(rss) - 1)]  # after 2,000 requests
    growth = rss[-1] - warm
    print(f"\nload average after: {' '.join(f'{x:.1f}' for x in results['load_after'])}")
    checks = [
        (f"throughput at 32 clients, batching on / off = {ratio:.2f}x (server CPU per request {cpu_ratio:.2f}x "
         "less)", ratio >= 3.0),
        (f"errors over the long run: {long['errors']} of {long['requests']}", long["errors"] == 0
         and long["requests"] == args.long),
        (f"server RSS after 2k requests {warm:.1f} MiB -> end {rss[-1]:.1f} MiB ({growth:+.1f} MiB)",
         growth < max(0.05 * warm, 0) and growth < 20),
    ]
    for text, ok in checks:
        print(f"{'PASS' if ok else 'FAIL'}  {text}")
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2, default=float) + "\n")
    return 0 if all(ok for _, ok in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
