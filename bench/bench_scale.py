"""The paper's size through the real stack: how PerSyn's orchestration holds at 50K prompts x 19 teachers.

    .venv/bin/python bench/bench_scale.py                        # calibrate 2.5K x 19, synthesize 1K, 10K, 50K
    .venv/bin/python bench/bench_scale.py --sizes 1000 --calibration 200   # a quick look

It starts a private Redis, the Celery workers and the gateway (``LocalStack``) and an instant
OpenAI/vLLM-compatible server (``bench/instant_openai.py``) that plays 19 teachers, the student's
log-prob endpoint and a reward model, so only PerSyn's own work is measured. STATED DEVIATION: in
this benchmark learnability and quality come from that instant server (stand-in numbers over the
real vLLM protocol), not from a model. It runs one ``calibrate`` job (``--calibration`` prompts x
every teacher; trains the router on MiniLM) and then one ``synthesize`` job (strategy ``persyn``) per
size, uploaded as JSONL, and prints per job: wall time, prompts/s, Celery tasks per prompt,
Redis memory, peak RSS of the gateway and of each worker (all its processes), rows downloaded
against prompts, the dataset's download time, the latency of ``GET /v1/jobs/{id}``, and the
orchestration time per prompt-teacher item (wall time / items: the teacher costs nothing here).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import psutil
import redis

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from services.embedded.stack import LocalStack, free_port  # noqa: E402
from services.method.formats import Teacher, dump_teacher_pool  # noqa: E402

STUDENT = "scale-student"
TOPICS = ["physics", "cooking", "history", "poetry", "databases", "gardening", "chess", "finance", "music",
          "biology", "travel", "law", "astronomy", "football", "painting", "linguistics", "networks", "pottery"]


def prompts_file(path: Path, n: int, offset: int = 0) -> Path:
    """``n`` distinct open-ended prompts (no reference: quality comes from the reward model)."""
    with path.open("w") as fh:
        for i in range(offset, offset + n):
            topic = TOPICS[i % len(TOPICS)]
            fh.write(json.dumps({"id": f"q{i:06d}", "prompt": f"Question {i}: explain one idea of {topic} "
                                                              f"to a beginner, with example {i % 97}."}) + "\n")
    return path


class Sampler(threading.Thread):
    """Peak RSS per process group and Redis memory, sampled while a job runs."""

    def __init__(self, stack: LocalStack, r: redis.Redis, every_s: float = 0.5):
        super().__init__(daemon=True)
        self.groups = {"gateway": stack.gateway.pid, **{f"worker-{q}": p.pid for q, p in stack.workers.items()}}
        self.r, self.every_s = r, every_s
        self.peak: dict[str, float] = dict.fromkeys(self.groups, 0.0)
        self.redis_peak = 0
        self._halt = threading.Event()

    @staticmethod
    def _rss(pid: int) -> int:
        try:
            proc = psutil.Process(pid)
            return sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)])
        except psutil.Error:
            return 0

    def run(self) -> None:
        while not self._halt.wait(self.every_s):
            for name, pid in self.groups.items():
                self.peak[name] = max(self.peak[name], self._rss(pid) / 2 ** 20)
            self.redis_peak = max(self.redis_peak, int(self.r.info("memory")["used_memory"]))

    def stop(self) -> None:
        self._halt.set()
        self.join()


def start_instant_pool(names: list[str], work: Path) -> tuple[subprocess.Popen, str, Path]:
    """The instant server playing ``names`` (and the student and reward endpoints), once it answers;
    returns it, its base URL and a teacher pool file for it (prices 0.2, 0.3, ... $ per 1M tokens)."""
    port = free_port()
    server = subprocess.Popen([sys.executable, str(ROOT / "bench" / "instant_openai.py"), "--port", str(port),
                               "--models", ",".join(names), "--student", "instant-student",
                               "--reward", "instant-rm"])
    base = f"http://127.0.0.1:{port}/v1"
    deadline = time.time() + 30
    while True:
        try:
            httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).raise_for_status()
            break
        except httpx.HTTPError:
            if time.time() > deadline:
                server.kill()
                raise SystemExit("the instant server did not start")
            time.sleep(0.2)
    pool = dump_teacher_pool([Teacher(name=n, family=f"family-{i % 5}", size_b=float(7 + i), base_url=base, model=n,
                                      cost_per_1m_output=0.2 + 0.1 * i) for i, n in enumerate(names)],
                             work / "pool.yaml")
    return server, base, pool


def celery_task_count(app) -> int:
    """Tasks the workers have received so far (Celery's own per-worker counters)."""
    stats = app.control.inspect(timeout=3).stats() or {}
    return sum(sum(s.get("total", {}).values()) for s in stats.values())


def run_job(client: httpx.Client, stack: LocalStack, r: redis.Redis, celery_app, spec: dict, file: Path,
            n_items: int, timeout_s: float) -> dict:
    tasks_before = celery_task_count(celery_app)
    sampler = Sampler(stack, r)
    sampler.start()
    started = time.perf_counter()
    with file.open("rb") as fh:
        reply = client.post("/v1/jobs/upload", data={"spec": json.dumps(spec)},
                            files={"file": (file.name, fh, "application/x-ndjson")})
    submit_s = time.perf_counter() - started
    reply.raise_for_status()
    job_id = reply.json()["id"]
    reads, last_print, job = [], 0.0, reply.json()
    while job["state"] in ("queued", "running"):
        if time.perf_counter() - started > timeout_s:
            raise SystemExit(f"job {job_id} still {job['state']} after {timeout_s:.0f} s: {job['stages']}")
        time.sleep(0.5)
        t0 = time.perf_counter()
        job = client.get(f"/v1/jobs/{job_id}").json()
        reads.append(time.perf_counter() - t0)
        if time.perf_counter() - last_print > 10:
            last_print = time.perf_counter()
            progress = ", ".join(f"{s['stage']} {s['done'] + s['failed']}/{s['total']}" for s in job["stages"])
            print(f"  [{time.perf_counter() - started:6.0f} s] {job['state']}: {progress}", flush=True)
    wall = time.perf_counter() - started
    sampler.stop()
    t0 = time.perf_counter()
    rows = 0
    with client.stream("GET", f"/v1/jobs/{job_id}/dataset") as stream:
        for line in stream.iter_lines():
            rows += bool(line.strip())
    download_s = time.perf_counter() - t0
    n_prompts = job["n_prompts"]
    return {
        "job": job_id, "kind": spec["kind"], "state": job["state"], "prompts": n_prompts, "items": n_items,
        "wall_s": round(wall, 1), "prompts_per_s": round(n_prompts / wall, 1),
        "ms_per_item": round(1000 * wall / n_items, 2), "submit_s": round(submit_s, 2),
        "celery_tasks_per_prompt": round((celery_task_count(celery_app) - tasks_before) / n_prompts, 2),
        "redis_peak_mib": round(sampler.redis_peak / 2 ** 20, 1),
        "redis_after_mib": round(int(r.info("memory")["used_memory"]) / 2 ** 20, 1),
        "redis_keys_after": r.dbsize(),
        **{f"peak_rss_mib_{k}": round(v) for k, v in sampler.peak.items()},
        "rows": rows, "download_s": round(download_s, 2),
        "status_read_ms_median": round(1000 * statistics.median(reads), 1) if reads else None,
        "status_read_ms_max": round(1000 * max(reads), 1) if reads else None,
        "stage_seconds": {s["stage"]: round(s["seconds"], 1) for s in job["stages"]},
        "error": job.get("error"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1000,10000,50000", help="prompts per synthesize job")
    ap.add_argument("--teachers", type=int, default=19)
    ap.add_argument("--calibration", type=int, default=2500, help="prompts of the calibrate job")
    ap.add_argument("--generation-concurrency", type=int, default=4)
    ap.add_argument("--scoring-concurrency", type=int, default=2)
    ap.add_argument("--timeout-s", type=float, default=3600)
    ap.add_argument("--out", type=Path, default=None, help="also write the figures here as JSON")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]

    work = Path(tempfile.mkdtemp(prefix="persyn-scale-"))
    names = [f"teacher-{i:02d}" for i in range(1, args.teachers + 1)]
    server, base, pool = start_instant_pool(names, work)
    redis_url = f"redis://127.0.0.1:{free_port()}/0"
    env = {"PERSYN_REWARD_MODEL": "instant-rm", "PERSYN_REWARD_MODEL_URL": base,
           "PERSYN_MAX_JOB_PROMPTS": str(max(sizes + [args.calibration]))}
    from services.core.settings import Settings
    from services.jobs.celery_app import configure

    celery_app = configure(Settings(redis_url=redis_url, key_prefix="scale"))  # to read the workers' counters

    results = []
    try:
        with LocalStack(work_dir=work, redis_url=redis_url, key_prefix="scale", teacher_pool=pool,
                        concurrency={"generation": args.generation_concurrency,
                                     "scoring": args.scoring_concurrency, "training": 1},
                        extra_env=env) as stack, httpx.Client(base_url=stack.url, timeout=600) as client:
            r = redis.Redis.from_url(redis_url)
            client.post("/v1/students", json={"student_id": STUDENT, "model": "smollm2-135m-instruct",
                                              "endpoint": base, "endpoint_model": "instant-student"}
                        ).raise_for_status()
            jobs = [("calibrate", args.calibration, args.calibration * len(names))]
            jobs += [("synthesize", n, n) for n in sizes]
            offset = 0
            for kind, n, items in jobs:
                print(f"{kind} job: {n} prompts x {len(names) if kind == 'calibrate' else 1} teacher(s)", flush=True)
                spec = {"kind": kind, "student_id": STUDENT, "alpha": 0.4}
                if kind == "calibrate":
                    spec["calibration_size"] = n
                file = prompts_file(work / f"{kind}-{n}.jsonl", n, offset)
                offset += n
                result = run_job(client, stack, r, celery_app, spec, file, items, args.timeout_s)
                results.append(result)
                print(json.dumps(result), flush=True)
    finally:
        server.terminate()
        server.wait(10)
    print("\nkind        prompts   items   wall s  prompts/s  ms/item  tasks/prompt  submit s  download s  "
          "rows    redis peak MiB  gateway MiB  gen MiB  score MiB  status ms (max)")
    for x in results:
        print(f"{x['kind']:<10} {x['prompts']:>8} {x['items']:>7} {x['wall_s']:>8} {x['prompts_per_s']:>10} "
              f"{x['ms_per_item']:>8} {x['celery_tasks_per_prompt']:>13} {x['submit_s']:>9} {x['download_s']:>11} "
              f"{x['rows']:>6} {x['redis_peak_mib']:>15} {x['peak_rss_mib_gateway']:>12} "
              f"{x['peak_rss_mib_worker-generation']:>8} {x['peak_rss_mib_worker-scoring']:>10} "
              f"{x['status_read_ms_median']} ({x['status_read_ms_max']})")
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
