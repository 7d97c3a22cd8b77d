"""``jobs``: submit a job to a service (``persyn jobs submit SPEC PROMPTS [--dry-run]``), follow it from the
terminal (``persyn jobs watch ID``), or show it once.

On a terminal each stage gets a progress bar with its rate and ETA; when stdout is not a
terminal (a log file, CI) a single progress line is printed at most every ``--log-every``
seconds instead, so a 50K-prompt job does not flood the log.
"""

from __future__ import annotations

import json
import os
import sys
import time

from services.cli.common import CLIError, existing_path

#: Job states after which nothing changes any more.
ACTIVE_STATES = ("queued", "running")


def _eta(done: int, total: int, seconds: float) -> str:
    if done <= 0 or seconds <= 0 or done >= total:
        return "?" if done < total else "0s"
    left = (total - done) * seconds / done
    minutes, secs = divmod(int(left), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def progress_line(job: dict) -> str:
    """One line: state, then each stage's done/total, share, and the current stage's ETA."""
    parts = []
    for stage in job["stages"]:
        done, total = stage["done"] + stage["failed"], stage["total"]
        part = f"{stage['stage']} {done}/{total}"
        if total:
            part += f" ({100 * done / total:.0f}%"
            part += ")" if stage["finished"] is not None else f", ETA {_eta(done, total, stage['seconds'])})"
        if stage["failed"]:
            part += f" {stage['failed']} failed"
        parts.append(part)
    return f"job {job['id']} {job['state']}: " + ("; ".join(parts) or "waiting for its first stage")


class ProgressView:
    """Bars per stage on a terminal, a throttled line otherwise."""

    def __init__(self, *, stream=None, log_every_s: float = 30.0):
        self.stream = stream or sys.stdout
        self.bars_on = self.stream.isatty()
        self.log_every_s = log_every_s
        self._bars: dict = {}
        self._last_line: float | None = None

    def update(self, job: dict) -> None:
        if not self.bars_on:
            now = time.monotonic()
            if (self._last_line is None or now - self._last_line >= self.log_every_s
                    or job["state"] not in ACTIVE_STATES):
                self._last_line = now
                print(progress_line(job), file=self.stream, flush=True)
            return
        from tqdm.auto import tqdm

        for stage in job["stages"]:
            bar = self._bars.get(stage["stage"])
            if bar is None:
                bar = self._bars[stage["stage"]] = tqdm(total=stage["total"], desc=stage["stage"], unit="item",
                                                        file=self.stream)
            if not bar.disable:  # tqdm marks a closed bar disabled
                bar.update(stage["done"] + stage["failed"] - bar.n)
                if stage["finished"] is not None:
                    bar.close()

    def close(self) -> None:
        for bar in self._bars.values():
            bar.close()


def watch_job(client, job_id: str, *, interval_s: float = 1.0, view: ProgressView | None = None,
              timeout_s: float | None = None) -> dict:
    """Poll ``GET /v1/jobs/{id}`` until the job ends, showing its progress; returns the last description."""
    view = view or ProgressView()
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    try:
        while True:
            job = _get_job(client, job_id)
            view.update(job)
            if job["state"] not in ACTIVE_STATES:
                return job
            if deadline is not None and time.monotonic() > deadline:
                raise CLIError(f"job {job_id} still {job['state']} after {timeout_s:.0f} s")
            time.sleep(interval_s)
    finally:
        view.close()


def _call(client, method: str, path: str, expect: int) -> dict:
    """One gateway call; a CLIError when the gateway is unreachable or answers other than ``expect``."""
    import httpx

    try:
        response = client.request(method, path)
    except httpx.HTTPError as exc:
        raise CLIError(f"cannot reach the gateway at {client.base_url}: {exc}") from None
    if response.status_code != expect:
        raise CLIError(f"{method} {path}: {response.status_code} {_detail(response)}")
    return response.json()


def _get_job(client, job_id: str) -> dict:
    return _call(client, "GET", f"/v1/jobs/{job_id}", 200)


def _detail(response) -> str:
    try:
        return str(response.json().get("detail", response.text))
    except ValueError:
        return response.text


def _client(args):
    import httpx

    key = args.api_key or os.environ.get("PERSYN_API_KEY")
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.Client(base_url=args.url, timeout=60, headers=headers)


def cmd_watch(args) -> None:
    with _client(args) as client:
        job = watch_job(client, args.job_id, interval_s=args.interval,
                        view=ProgressView(log_every_s=args.log_every))
    print(f"job {job['id']} ended {job['state']}: {job['rows']} rows", flush=True)
    if job["state"] != "succeeded":
        raise CLIError(f"job {job['id']} ended {job['state']}: {job.get('error') or job['errors'][:3]}")


def cmd_show(args) -> None:
    with _client(args) as client:
        print(json.dumps(_get_job(client, args.job_id), indent=1))


def cmd_resume(args) -> None:
    with _client(args) as client:
        job = _call(client, "POST", f"/v1/jobs/{args.job_id}/resume", 202)
        print(f"job {job['id']} resumed (resume {job['resumes']}): {job['resumed_prompts']} prompts run again, "
              f"{job['rows']} rows kept", flush=True)
        if args.watch:
            job = watch_job(client, args.job_id, interval_s=args.interval, view=ProgressView())
            print(f"job {job['id']} ended {job['state']}: {job['rows']} rows; "
                  f"{job['generations'].get('from_store', 0)} answers from the generation store", flush=True)


def cmd_submit(args) -> None:
    """Upload the spec and the JSONL prompts; print the job (202) or, with ``--dry-run``, its priced plan (200)."""
    import httpx

    try:
        spec = json.loads(args.spec.read_text())
    except (OSError, ValueError) as exc:
        raise CLIError(f"cannot read the job spec {args.spec}: {exc}") from None
    if not isinstance(spec, dict):
        raise CLIError(f"{args.spec}: expected a JSON object (a JobSpec)")
    if args.dry_run:
        spec["dry_run"] = True
    with _client(args) as client, args.prompts.open("rb") as prompts:
        try:
            response = client.post("/v1/jobs/upload", data={"spec": json.dumps(spec)},
                                   files={"file": (args.prompts.name, prompts, "application/x-ndjson")})
        except httpx.HTTPError as exc:
            raise CLIError(f"cannot reach the gateway at {client.base_url}: {exc}") from None
    if response.status_code not in (200, 202):
        raise CLIError(f"job rejected ({response.status_code}): {_detail(response)}")
    print(json.dumps(response.json(), indent=1))


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise ValueError(f"expected a positive number of seconds, got {text}")
    return value


def register(sub) -> None:
    jobs = sub.add_parser("jobs", help="submit, follow or show a job of a running service")
    jobs_sub = jobs.add_subparsers(dest="jobs_command", required=True)
    for name, func, doc in (("submit", cmd_submit, "submit a job: a JobSpec JSON file and a JSONL prompt file"),
                            ("watch", cmd_watch, "progress bars (or throttled lines) until the job ends"),
                            ("show", cmd_show, "the job's description as JSON"),
                            ("resume", cmd_resume, "run again only what a partial, failed or cancelled job lacks")):
        p = jobs_sub.add_parser(name, help=doc)
        if name == "submit":
            p.add_argument("spec", type=existing_path, help="JobSpec as JSON (the job body without prompts)")
            p.add_argument("prompts", type=existing_path, help="JSONL: one {id?, prompt, reference?} per line")
            p.add_argument("--dry-run", action="store_true",
                           help="print the priced plan (per teacher prompts, tokens, dollars; Generate-then-Select's "
                                "price): no teacher call, nothing stored")
        else:
            p.add_argument("job_id")
        p.add_argument("--url", default=os.environ.get("PERSYN_URL", "http://127.0.0.1:8000"),
                       help="the gateway (default $PERSYN_URL or http://127.0.0.1:8000)")
        p.add_argument("--api-key", default=None, help="API key (default $PERSYN_API_KEY)")
        if name == "resume":
            p.add_argument("--watch", action="store_true", help="then follow it until it ends")
        if name in ("watch", "resume"):
            p.add_argument("--interval", type=_positive, default=1.0, help="seconds between polls")
        if name == "watch":
            p.add_argument("--log-every", type=_positive, default=30.0,
                           help="seconds between progress lines when stdout is not a terminal")
        p.set_defaults(func=func)
