"""``up`` and ``router-server``: the service processes, and the demo job ``up --demo-job`` runs through REST."""

from __future__ import annotations

from pathlib import Path

from services.cli.common import CLIError, existing_path
from services.cli.jobs import watch_job


def demo_api_key(api_keys) -> str | None:
    """The key the demo client sends: an admin key if there is one, else the first tenant's; None with auth off."""
    if not api_keys:
        return None
    return next((k for k in api_keys if k.admin), api_keys[0]).key


def run_demo_job(base_url: str, out: Path, *, n_prompts: int, n_calibration: int, student_id: str,
                 seed: int, api_key: str | None = None) -> dict:
    """A full calibrate -> route -> synthesize job through the REST API, with progress bars."""
    import httpx

    from services.demo.problems import make_problems
    from services.reports.plots import plot_allocation
    from services.reports.tables import format_allocation

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    with httpx.Client(base_url=base_url, timeout=60, headers=headers) as client:
        response = client.post("/v1/students", json={"student_id": student_id, "family": "smollm2"})
        if response.status_code != 201:
            raise CLIError(f"student {student_id!r} rejected ({response.status_code}): {response.text}")
        response = client.post("/v1/jobs", json={
            "kind": "persyn", "student_id": student_id, "prompts": make_problems(n_prompts, seed=seed),
            "calibration_size": n_calibration, "seed": seed})
        if response.status_code != 202:
            raise CLIError(f"job rejected ({response.status_code}): {response.text}")
        job_id = response.json()["id"]
        print(f"job {job_id} submitted: {n_prompts} prompts, {n_calibration} for calibration")
        job = watch_job(client, job_id, interval_s=0.5)
        if job["state"] not in ("succeeded", "partial"):
            raise CLIError(f"job {job_id} ended {job['state']}: {job.get('error') or job['errors'][:3]}")
        if job["state"] == "partial":
            print(f"job {job_id} ended partial: {job['error']}")
        gate = job.get("router_gate")
        if gate and not gate["activated"]:
            print(f"router not activated: {gate['reason']}; its best single teacher, "
                  f"{gate['best_single_teacher']}, answered the rest")
        out.mkdir(parents=True, exist_ok=True)
        path = out / f"{job_id}.jsonl"
        path.write_bytes(client.get(f"/v1/jobs/{job_id}/dataset", params={"format": "jsonl"}).content)
        teachers = [t["name"] for t in client.get("/v1/teachers").json()]
    counts = {t: job["allocation"].get(t, 0) for t in teachers}
    print(format_allocation(counts))
    plot = plot_allocation(counts, out / f"{job_id}_allocation.png", title="Teacher allocation (demo pool)")
    spent = ", ".join(f"{t}: {u['completion_tokens']} tokens, ${u['cost']:.6f}" for t, u in job["usage"].items())
    print(f"router version {job['router_version']}; teacher usage: {spent}")
    print(f"dataset ({job['rows']} rows): {path}\nallocation plot: {plot}")
    return job


def _interrupt(*_) -> None:
    raise KeyboardInterrupt


def cmd_up(args) -> None:
    import signal
    import time

    from services.core.settings import Settings
    from services.embedded.stack import LocalStack

    settings = Settings.from_env()
    stack = LocalStack(work_dir=args.work_dir, redis_url=settings.redis_url, key_prefix=settings.key_prefix,
                       port=args.port, teacher_pool=args.pool or settings.teacher_pool)
    signal.signal(signal.SIGTERM, _interrupt)
    print("starting Redis (if none answers), the demo teacher pool, three Celery workers and the gateway ...")
    try:
        with stack:
            print(f"gateway: {stack.url}  (OpenAPI docs at {stack.url}/docs; logs in {stack.work_dir / 'logs'})")
            if args.demo_job:
                run_demo_job(stack.url, args.work_dir / "datasets", n_prompts=args.prompts,
                             n_calibration=args.calibration, student_id=args.student, seed=args.seed,
                             api_key=demo_api_key(settings.api_keys))
                return
            print("serving; Ctrl-C stops everything started here")
            while all(p.poll() is None for p in [stack.gateway, *stack.workers.values()]):
                time.sleep(1)
            raise CLIError(f"a service process exited; see {stack.work_dir / 'logs'}")
    except KeyboardInterrupt:
        print("stopping ...")


def cmd_router_server(args) -> None:
    from services.routing.server import main as serve

    serve(["--host", args.host, "--port", str(args.port)])


def register(sub) -> None:
    p = sub.add_parser("up", help="start the embedded service stack (Ctrl-C stops it)")
    p.add_argument("--work-dir", type=Path, default=Path("runs/service"))
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--pool", type=existing_path, default=None, help="teacher pool YAML (default: local demo pool)")
    p.add_argument("--demo-job", action="store_true",
                   help="run a full job on the built-in problems through the REST API, then stop")
    p.add_argument("--prompts", type=int, default=16)
    p.add_argument("--calibration", type=int, default=12,
                   help="calibration prompts (the router publish gate wants 10 or more, PERSYN_ROUTER_MIN_PROMPTS)")
    p.add_argument("--student", default="smollm2-demo")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_up)

    p = sub.add_parser("router-server", help="serve routers as their own process (gateways call it)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8100)
    p.set_defaults(func=cmd_router_server)
