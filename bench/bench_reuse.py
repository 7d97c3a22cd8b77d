"""Never paying twice, measured: teacher requests and wall time with the generation store against from scratch.

    .venv/bin/python bench/bench_reuse.py                          # 19 (+1) teachers, 200 calibration, 2000 prompts
    .venv/bin/python bench/bench_reuse.py --calibration 50 --prompts 400 --store-items 5000   # a quick look

The real stack (private Redis, Celery workers, gateway: ``LocalStack``) against the instant
OpenAI/vLLM-compatible server of ``bench/instant_openai.py`` (which counts the chat requests each
teacher receives), so the figures are PerSyn's own. STATED DEVIATION, as in ``bench_scale.py``:
learnability and quality come from that server's stand-in numbers. In one run it measures:

- (d) a recalibration after adding the 20th teacher to 19, against the same calibration from scratch
  (``cache: false``);
- (a) a fresh ``persyn`` synthesize job, (b) the same job again;
- (c) a job cancelled at 50% of its rows and resumed, against the same job from scratch;
- the generation store's own cost per item at ``--store-items`` (a write as a worker makes it, one
  read by key, and reads in batches of 500) on SQLite and, when it answers, PostgreSQL.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_scale import prompts_file, start_instant_pool  # noqa: E402
from services.core.generations import GenerationStore, generation_key  # noqa: E402
from services.embedded.stack import LocalStack, free_port  # noqa: E402

STUDENT = "reuse-student"
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


class Bench:
    def __init__(self, client: httpx.Client, teachers_url: str):
        self.client = client
        self.stats_url = teachers_url.removesuffix("/v1") + "/stats"

    def asked(self) -> int:
        return sum(httpx.get(self.stats_url).json()["chat_requests"].values())

    def submit(self, spec: dict, file: Path) -> str:
        with file.open("rb") as fh:
            reply = self.client.post("/v1/jobs/upload", data={"spec": json.dumps({"student_id": STUDENT, **spec})},
                                     files={"file": (file.name, fh, "application/x-ndjson")})
        reply.raise_for_status()
        return reply.json()["id"]

    def wait(self, job_id: str, timeout_s: float = 3600) -> dict:
        deadline = time.time() + timeout_s
        while True:
            job = self.client.get(f"/v1/jobs/{job_id}").json()
            if job["state"] not in ("queued", "running"):
                return job
            if time.time() > deadline:
                raise SystemExit(f"job {job_id} still {job['state']}: {job['stages']}")
            time.sleep(0.3)

    def run(self, name: str, spec: dict, file: Path) -> dict:
        """One job to its end: the requests the teachers received meanwhile, and its wall time."""
        before, started = self.asked(), time.perf_counter()
        job = self.wait(self.submit(spec, file))
        result = {"case": name, "state": job["state"], "requests": self.asked() - before,
                  "wall_s": round(time.perf_counter() - started, 2), "from_store": job["generations"]["from_store"]}
        print(json.dumps(result), flush=True)
        return result

    def cancel_at_half_and_resume(self, name: str, spec: dict, file: Path, n: int) -> tuple[dict, dict]:
        before = self.asked()
        job_id = self.submit(spec, file)
        while self.client.get(f"/v1/jobs/{job_id}").json()["rows"] < n // 2:
            time.sleep(0.05)
        self.client.delete(f"/v1/jobs/{job_id}").raise_for_status()
        time.sleep(3)  # the chunks in flight at the cancel finish and keep their answers
        rows_kept = self.client.get(f"/v1/jobs/{job_id}").json()["rows"]
        first = self.asked() - before
        before, started = self.asked(), time.perf_counter()
        self.client.post(f"/v1/jobs/{job_id}/resume").raise_for_status()
        job = self.wait(job_id)
        resumed = {"case": name, "state": job["state"], "requests": self.asked() - before,
                   "wall_s": round(time.perf_counter() - started, 2), "rows_kept": rows_kept,
                   "resumed_prompts": job["resumed_prompts"], "requests_before_cancel": first,
                   "rows": job["rows"], "from_store": job["generations"]["from_store"]}
        print(json.dumps(resumed), flush=True)
        return resumed, job


def store_cost(url: str, n: int) -> dict:
    """Microseconds per item: a write (one at a time, as a worker keeps each answer), a read by key,
    and reads of 500 keys at a time."""
    store = GenerationStore(url, max_bytes=1 << 34, max_age_s=86400)
    keys = [generation_key("http://t/v1", "m", [{"role": "user", "content": f"prompt {i}"}], {"temperature": 0})
            for i in range(n)]
    answer = {"text": "lorem " * 60, "prompt_tokens": 20, "completion_tokens": 60, "finish_reason": "stop"}
    t0 = time.perf_counter()
    for key in keys:
        store.put(key, answer, job="bench")
    write = time.perf_counter() - t0
    t0 = time.perf_counter()
    for key in keys:
        store.get(key)
    read = time.perf_counter() - t0
    t0 = time.perf_counter()
    for start in range(0, n, 500):
        store.get_many(keys[start:start + 500])
    batch = time.perf_counter() - t0
    stats = store.stats()
    store.close()
    return {"items": n, "write_us": round(1e6 * write / n, 1), "read_us": round(1e6 * read / n, 1),
            "batched_read_us": round(1e6 * batch / n, 1), "mib": round(stats["bytes"] / 2 ** 20, 1)}


def postgres_url() -> tuple[str, callable] | None:
    try:
        import psycopg

        admin = psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=3)
    except Exception:  # noqa: BLE001 - no PostgreSQL here: that backend is left out
        return None
    name = f"persyn_bench_{uuid.uuid4().hex[:8]}"
    admin.execute(f"CREATE DATABASE {name}")

    def drop():
        admin.execute(f"DROP DATABASE {name} WITH (FORCE)")
        admin.close()

    return f"postgresql://postgres@127.0.0.1:5432/{name}", drop


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teachers", type=int, default=19, help="the pool before one more teacher joins")
    ap.add_argument("--calibration", type=int, default=200)
    ap.add_argument("--prompts", type=int, default=2000, help="prompts of the synthesize jobs")
    ap.add_argument("--store-items", type=int, default=50_000)
    ap.add_argument("--out", type=Path, default=None, help="also write the figures here as JSON")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="persyn-reuse-"))
    names = [f"teacher-{i:02d}" for i in range(1, args.teachers + 2)]
    server, base, pool = start_instant_pool(names, work)
    env = {"PERSYN_REWARD_MODEL": "instant-rm", "PERSYN_REWARD_MODEL_URL": base}
    old, new = names[:-1], names
    results = []
    try:
        with LocalStack(work_dir=work, redis_url=f"redis://127.0.0.1:{free_port()}/0", key_prefix="reuse",
                        teacher_pool=pool, extra_env=env) as stack, \
                httpx.Client(base_url=stack.url, timeout=600) as client:
            bench = Bench(client, base)
            client.post("/v1/students", json={"student_id": STUDENT, "model": "smollm2-135m-instruct",
                                              "endpoint": base, "endpoint_model": "instant-student"}
                        ).raise_for_status()
            cal = prompts_file(work / "calibration.jsonl", args.calibration)
            calibrate = {"kind": "calibrate", "calibration_size": args.calibration, "alpha": 0.4}
            results.append(bench.run(f"calibrate {len(old)} teachers", {**calibrate, "teachers": old}, cal))
            results.append(bench.run(f"(d) recalibrate with teacher {len(new)}", {**calibrate, "teachers": new}, cal))
            results.append(bench.run(f"(d) from scratch, {len(new)} teachers",
                                     {**calibrate, "teachers": new, "cache": False}, cal))
            synth = {"kind": "synthesize", "strategy": "persyn", "teachers": old}
            first = prompts_file(work / "synth-a.jsonl", args.prompts, offset=args.calibration)
            results.append(bench.run("(a) fresh synthesize", synth, first))
            results.append(bench.run("(b) the same job again", synth, first))
            second = prompts_file(work / "synth-c.jsonl", args.prompts, offset=args.calibration + args.prompts)
            resumed, _ = bench.cancel_at_half_and_resume("(c) resumed from 50%", synth, second, args.prompts)
            results.append(resumed)
            results.append(bench.run("(c) from scratch", {**synth, "cache": False}, second))
    finally:
        server.terminate()
        server.wait(10)

    by = {r["case"]: r for r in results}
    print(f"\n{'case':<34} {'state':<10} {'requests':>9} {'wall s':>8} {'from store':>11}")
    for r in results:
        print(f"{r['case']:<34} {r['state']:<10} {r['requests']:>9} {r['wall_s']:>8} {r['from_store']:>11}")
    pairs = [("(d) recalibrate", f"(d) recalibrate with teacher {len(new)}", f"(d) from scratch, {len(new)} teachers"),
             ("(b) same job again", "(b) the same job again", "(a) fresh synthesize"),
             ("(c) resume from 50%", "(c) resumed from 50%", "(c) from scratch")]
    print(f"\n{'ratio to from scratch':<24} {'requests':>9} {'wall':>7}")
    ratios = {}
    for label, case, scratch in pairs:
        ratios[label] = {"requests": round(by[case]["requests"] / max(1, by[scratch]["requests"]), 3),
                         "wall": round(by[case]["wall_s"] / by[scratch]["wall_s"], 3)}
        print(f"{label:<24} {ratios[label]['requests']:>9} {ratios[label]['wall']:>7}")

    costs = {"sqlite": store_cost(f"sqlite:///{work / 'store-bench.sqlite'}", args.store_items)}
    pg = postgres_url()
    if pg:
        url, drop = pg
        try:
            costs["postgresql"] = store_cost(url, args.store_items)
        finally:
            drop()
    print(f"\ngeneration store at {args.store_items} items: us per item")
    for backend, c in costs.items():
        print(f"  {backend:<11} write {c['write_us']:>7}  read {c['read_us']:>7}  batched read {c['batched_read_us']:>7}"
              f"  ({c['mib']} MiB)")
    if args.out:
        args.out.write_text(json.dumps({"jobs": results, "ratios": ratios, "store": costs}, indent=1))


if __name__ == "__main__":
    main()
