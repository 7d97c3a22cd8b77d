"""Routing throughput and latency over HTTP, micro-batching on versus off, in one run.

Trains a tiny router (frozen all-MiniLM-L6-v2 + Bradley-Terry head on synthetic prompts), registers
it in Redis under a throw-away key prefix, then starts two servers in uvicorn subprocesses on loopback
ports, micro-batching on and off (PERSYN_ROUTER_BATCHING), and drives them with httpx at concurrency
1, 8 and 32, alternating between the two in slices so a shared machine's noise hits both alike (each
request carries ONE prompt, from arena_parallel.jsonl when it is there). Prints a table and the
ratios throughput(c=32, on) / throughput(c=32, off) (target >= 4x) and p99(c=32, on) / p99(c=1, on)
(target <= 3x).

``--mode ceiling`` instead compares the batching server at concurrency 32 with the ceiling: the same
router artifact loaded in this process (``Router.load``, same ``--precision``) running encoder + head
on batches of 32 prompts with no HTTP, slices alternating between the two (target: HTTP >= 0.8 of the
ceiling's prompts/s); also per CPU-second (server + client process against this process), which an
oversubscribed machine, where a process with more threads gets more CPU, disturbs less.
``--precision`` (default auto) sets PERSYN_PRECISION for the servers.

    python bench/bench_route.py [--target gateway|router-server] [--requests 200] [--prompts arena|short]
                                [--mode batching|ceiling] [--precision auto|fp32|bf16]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "arena_parallel.jsonl"
TARGETS = {
    # name: (uvicorn factory, route path, health path)
    "gateway": ("router_api.app:create_app", "/v1/route", "/healthz"),
    "router-server": ("services.routing.server:create_app", "/route", "/healthz"),
}
LEVELS = (1, 8, 32)
STUDENT = "bench-student"


def train_tiny_router(directory: Path) -> Path:
    """Maths prompts -> 'mathy', poems -> 'poet', 'middle' in between (the tests' toy router)."""
    from services.routing.training import TrainConfig, train_router

    maths = [f"What is {a} plus {b}? Show the sum." for a, b in zip(range(3, 18), range(40, 55))]
    poems = [f"Write a short poem about the {w}." for w in
             ("sea", "moon", "forest", "rain", "winter", "city", "river", "mountain", "desert", "garden",
              "stars", "autumn", "snow", "sun", "wind")]
    scores = np.array([[1.0, 0.0, 0.5]] * len(maths) + [[0.0, 1.0, 0.5]] * len(poems))
    router, metrics = train_router(maths + poems, ["mathy", "poet", "middle"], scores, TrainConfig(seed=0))
    return router.save(directory, metrics=metrics)


def load_prompts(kind: str, n: int = 300) -> list[str]:
    if kind == "arena" and DATA.exists():
        prompts = [json.loads(line)["prompt"] for line in DATA.open() if line.strip()]
        return [p for p in prompts if p.strip()][:n]
    rng = np.random.default_rng(0)
    subjects = ["the sea", "prime numbers", "a rainy city", "quadratic equations", "autumn leaves", "a lost cat",
                "compound interest", "the moon landing", "sorting algorithms", "a mountain village"]
    asks = ["Write a short poem about {}.", "Explain {} to a ten-year-old.", "What is the most surprising fact "
            "about {}?", "Give three exam questions on {}.", "Summarise the history of {} in two sentences."]
    return [asks[rng.integers(len(asks))].format(subjects[rng.integers(len(subjects))]) + f" ({i})"
            for i in range(n)]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(target: str, env: dict[str, str], port: int) -> subprocess.Popen:
    factory = TARGETS[target][0]
    return subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "--factory", factory, "--host", "127.0.0.1", "--port", str(port),
         "--log-level", "warning", "--no-access-log"],
        cwd=ROOT, env={**os.environ, **env})


async def wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.time() + timeout
    async with httpx.AsyncClient(timeout=5) as client:
        while time.time() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}")
            try:
                if (await client.get(url)).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.2)
    raise RuntimeError(f"{url} not healthy after {timeout}s")


async def load_level(client: httpx.AsyncClient, path: str, prompts: list[str], concurrency: int,
                     n_requests: int, offset: int = 0) -> dict:
    """Closed loop: ``concurrency`` workers, ``n_requests`` one-prompt requests in all."""
    latencies: list[float] = []
    counter = iter(range(n_requests))

    async def worker():
        for i in counter:
            body = {"student_id": STUDENT, "prompts": [prompts[(offset + i) % len(prompts)]], "top_k": 3}
            t0 = time.perf_counter()
            response = await client.post(path, json=body)
            latencies.append(time.perf_counter() - t0)
            if response.status_code != 200:
                raise RuntimeError(f"HTTP {response.status_code}: {response.text[:300]}")

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - start
    return {"latencies": np.array(latencies) * 1000, "wall": wall}



async def run_both(target: str, env: dict[str, str], prompts: list[str], n_requests: int, warmup: int,
                   rounds: int) -> dict[bool, dict[int, dict]]:
    """Both servers (batching on and off) up at once; each level alternates between them in
    ``rounds`` slices, so the noise of a shared machine hits both alike."""
    _, path, health = TARGETS[target]
    procs, bases = {}, {}
    try:
        for batching in (True, False):
            port = free_port()
            procs[batching] = start_server(target, {**env, "PERSYN_ROUTER_BATCHING": "1" if batching else "0"}, port)
            bases[batching] = f"http://127.0.0.1:{port}"
        for batching in (True, False):
            await wait_healthy(bases[batching] + health, procs[batching])
        limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
        clients = {b: httpx.AsyncClient(base_url=bases[b], timeout=120, limits=limits) for b in (True, False)}
        try:
            for batching in (True, False):  # loads the router, warms up
                await load_level(clients[batching], path, prompts, 8, warmup, offset=len(prompts) // 2)
            results: dict[bool, dict[int, dict]] = {True: {}, False: {}}
            per_round = max(1, n_requests // rounds)
            for c in LEVELS:
                parts: dict[bool, list[dict]] = {True: [], False: []}
                for k in range(rounds):
                    order = (True, False) if k % 2 == 0 else (False, True)
                    for batching in order:
                        parts[batching].append(await load_level(clients[batching], path, prompts, c, per_round,
                                                                offset=k * per_round))
                for batching in (True, False):
                    lat = np.concatenate([p["latencies"] for p in parts[batching]])
                    wall = sum(p["wall"] for p in parts[batching])
                    r = results[batching][c] = {"rps": len(lat) / wall, "p50": float(np.percentile(lat, 50)),
                                                "p99": float(np.percentile(lat, 99))}
                    print(f"  batching {'on ' if batching else 'off'} c={c:<3d} {r['rps']:7.1f} req/s  "
                          f"p50 {r['p50']:7.1f} ms  p99 {r['p99']:7.1f} ms", flush=True)
            return results
        finally:
            for client in clients.values():
                await client.aclose()
    finally:
        for proc in procs.values():
            proc.terminate()
        for proc in procs.values():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def mean_batch_size(metrics: str) -> float | None:
    """Mean prompts per forward pass from the gateway's Prometheus text (warm-up included)."""
    values = {}
    for line in metrics.splitlines():
        for name in ("persyn_router_batch_size_sum", "persyn_router_batch_size_count"):
            if line.startswith(name + " "):
                values[name] = float(line.split()[1])
    count = values.get("persyn_router_batch_size_count")
    return values["persyn_router_batch_size_sum"] / count if count else None


async def run_vs_ceiling(target: str, env: dict[str, str], prompts: list[str], n_requests: int, warmup: int,
                         rounds: int, router_dir: Path, precision: str, concurrency: int = 32) -> dict[str, float]:
    """The batching server at ``concurrency`` against the same router in this process on batches of
    ``concurrency`` prompts, in ``rounds`` alternating slices; prompts/s of each."""
    from services.routing.model import Router

    _, path, health = TARGETS[target]
    router = Router.load(router_dir, precision=precision)
    port = free_port()
    proc = start_server(target, {**env, "PERSYN_ROUTER_BATCHING": "1"}, port)
    try:
        await wait_healthy(f"http://127.0.0.1:{port}{health}", proc)
        limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=120, limits=limits) as client:
            await load_level(client, path, prompts, 8, warmup, offset=len(prompts) // 2)
            router.route(prompts[:concurrency])  # warm-up
            per_round = max(concurrency, n_requests // rounds)
            walls = {"http": 0.0, "ceiling": 0.0}
            cpu = {"http": 0.0, "ceiling": 0.0}  # HTTP: server + this process (the client)
            counts = {"http": 0, "ceiling": 0}
            latencies = []
            for k in range(rounds):
                offset = k * per_round
                for name in (("http", "ceiling") if k % 2 == 0 else ("ceiling", "http")):
                    cpu0 = time.process_time() + cpu_seconds(proc.pid)
                    if name == "http":
                        part = await load_level(client, path, prompts, concurrency, per_round, offset=offset)
                        walls["http"] += part["wall"]
                        latencies.append(part["latencies"])
                    else:
                        batch = [prompts[(offset + i) % len(prompts)] for i in range(per_round)]
                        t0 = time.perf_counter()
                        for start in range(0, per_round, concurrency):
                            router.route(batch[start:start + concurrency], top_k=3)
                        walls["ceiling"] += time.perf_counter() - t0
                    cpu[name] += time.process_time() + cpu_seconds(proc.pid) - cpu0
                    counts[name] += per_round
                print(f"  slice {k + 1}/{rounds}: http {counts['http'] / walls['http']:.1f} prompts/s, "
                      f"ceiling {counts['ceiling'] / max(walls['ceiling'], 1e-9):.1f} prompts/s", flush=True)
            batch = mean_batch_size((await client.get("/metrics")).text) if target == "gateway" else None
        lat = np.concatenate(latencies)
        return {"http": counts["http"] / walls["http"], "ceiling": counts["ceiling"] / walls["ceiling"],
                "http_cpu": counts["http"] / cpu["http"], "ceiling_cpu": counts["ceiling"] / cpu["ceiling"],
                "p50": float(np.percentile(lat, 50)), "p99": float(np.percentile(lat, 99)), "batch": batch}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", choices=sorted(TARGETS), default="gateway")
    parser.add_argument("--requests", type=int, default=200, help="requests per concurrency level")
    parser.add_argument("--warmup", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=4, help="on/off alternations per level")
    parser.add_argument("--prompts", choices=("arena", "short"), default="arena",
                        help="arena_parallel.jsonl prompts (falls back to short generated ones if missing)")
    parser.add_argument("--max-wait-ms", type=float, default=None, help="PERSYN_BATCH_MAX_WAIT_MS (default: settings)")
    parser.add_argument("--max-batch", type=int, default=None, help="PERSYN_BATCH_MAX_SIZE (default: settings)")
    parser.add_argument("--redis-url", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    parser.add_argument("--mode", choices=("batching", "ceiling"), default="batching",
                        help="batching on vs off (default), or the batching server vs the in-process ceiling")
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"), default="auto",
                        help="router encoder precision (PERSYN_PRECISION of the servers, and the ceiling's)")
    args = parser.parse_args(argv)

    from services.jobs.store import JobStore

    prefix = f"bench-route-{uuid.uuid4().hex[:8]}"
    store = JobStore.from_url(args.redis_url, prefix)
    prompts = load_prompts(args.prompts)
    env = {"REDIS_URL": args.redis_url, "PERSYN_KEY_PREFIX": prefix, "PERSYN_API_KEYS": "", "PERSYN_ROUTER_URL": "",
           "PERSYN_PRECISION": args.precision}
    if args.max_wait_ms is not None:
        env["PERSYN_BATCH_MAX_WAIT_MS"] = str(args.max_wait_ms)
    if args.max_batch is not None:
        env["PERSYN_BATCH_MAX_SIZE"] = str(args.max_batch)
    try:
        with tempfile.TemporaryDirectory(prefix="bench-route-") as tmp:
            t0 = time.time()
            directory = train_tiny_router(Path(tmp) / "router")
            store.register_student(STUDENT, "smollm2-135m-instruct")
            store.add_router_version(STUDENT, "v1", str(directory), {}, activate=True)
            from transformers import AutoTokenizer

            from services.core.models import resolve_model

            tok = AutoTokenizer.from_pretrained(resolve_model("all-minilm-l6-v2"))
            lengths = [min(512, len(ids)) for ids in tok(prompts)["input_ids"]]
            from services.core.precision import resolve_precision

            print(f"target {args.target}; {len(prompts)} {args.prompts} prompts, tokens p50 "
                  f"{int(np.percentile(lengths, 50))} p90 {int(np.percentile(lengths, 90))} max {max(lengths)}; "
                  f"{args.requests} one-prompt requests per level; router trained in {time.time() - t0:.1f}s; "
                  f"encoder precision {args.precision} = {resolve_precision(args.precision, 'cpu')} on CPU",
                  flush=True)
            if args.mode == "ceiling":
                vs = asyncio.run(run_vs_ceiling(args.target, env, prompts, args.requests, args.warmup, args.rounds,
                                                directory, args.precision))
                print(f"\n| path | prompts/s (wall) | prompts per CPU-second |\n| --- | --- | --- |\n"
                      f"| /v1/route, c=32, one prompt per request | {vs['http']:.1f} (p50 {vs['p50']:.0f} ms, "
                      f"p99 {vs['p99']:.0f} ms) | {vs['http_cpu']:.1f} (server + client) |\n"
                      f"| in-process encoder + head, batches of 32 | {vs['ceiling']:.1f} | {vs['ceiling_cpu']:.1f} |")
                if vs["batch"] is not None:
                    print(f"mean prompts per server forward pass: {vs['batch']:.1f}")
                print(f"\nHTTP / ceiling = {vs['http'] / vs['ceiling']:.2f} wall (target >= 0.8), "
                      f"{vs['http_cpu'] / vs['ceiling_cpu']:.2f} per CPU-second")
                return 0
            results = asyncio.run(run_both(args.target, env, prompts, args.requests, args.warmup, args.rounds))
    finally:
        keys = list(store.r.scan_iter(match=f"{prefix}:*", count=1000))
        if keys:
            store.r.delete(*keys)

    print("\n| batching | concurrency | req/s | p50 ms | p99 ms |")
    print("| --- | --- | --- | --- | --- |")
    for batching in (True, False):
        for c in LEVELS:
            r = results[batching][c]
            print(f"| {'on' if batching else 'off'} | {c} | {r['rps']:.1f} | {r['p50']:.1f} | {r['p99']:.1f} |")
    speedup = results[True][32]["rps"] / results[False][32]["rps"]
    tail = results[True][32]["p99"] / results[True][1]["p99"]
    print(f"\nthroughput(c=32, on) / throughput(c=32, off) = {speedup:.2f}x (target >= 4x)")
    print(f"p99(c=32, on) / p99(c=1, on) = {tail:.2f}x (target <= 3x)")
    print(f"throughput(c=32, on) / throughput(c=1, on) = {results[True][32]['rps'] / results[True][1]['rps']:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
