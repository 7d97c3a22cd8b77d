"""The embedded stack on one machine: Redis, the demo teacher pool, the gateway and one
Celery worker per queue, all on loopback. ``persyn up`` and the service tests use it.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import httpx
import redis

from services.jobs.celery_app import QUEUES

#: Worker processes per queue: generation waits on HTTP, the others are compute-bound.
DEFAULT_CONCURRENCY = {"generation": 4, "scoring": 1, "training": 1}


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def ensure_redis(url: str, *, timeout: float = 10.0) -> subprocess.Popen | None:
    """Start ``redis-server`` for ``url`` unless one answers; returns the process we started."""
    client = redis.Redis.from_url(url)
    try:
        client.ping()
        return None
    except redis.ConnectionError:
        pass
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError(f"no Redis answers at {url} and redis-server is not installed")
    parsed = urlparse(url)
    proc = subprocess.Popen([binary, "--bind", parsed.hostname or "127.0.0.1", "--port", str(parsed.port or 6379),
                             "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL)
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            client.ping()
            return proc
        except redis.ConnectionError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"redis-server did not answer at {url} within {timeout}s")


@dataclass
class LocalStack:
    """Start everything; ``env`` is what every child process gets on top of os.environ."""

    work_dir: Path
    redis_url: str = "redis://127.0.0.1:6379/0"
    key_prefix: str = "persyn"
    host: str = "127.0.0.1"
    port: int | None = None
    teacher_pool: Path | None = None  # None: start the demo pool
    concurrency: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_CONCURRENCY))
    extra_env: dict[str, str] = field(default_factory=dict)
    log_dir: Path | None = None
    queues: tuple[str, ...] = QUEUES  # the queues that get a worker (a test may need only one)

    def __post_init__(self):
        self.work_dir = Path(self.work_dir)
        self.port = self.port or free_port(self.host)
        self.workers: dict[str, subprocess.Popen] = {}
        self.gateway: subprocess.Popen | None = None
        self._exit = ExitStack()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        return {
            **os.environ, "REDIS_URL": self.redis_url, "PERSYN_KEY_PREFIX": self.key_prefix,
            "PERSYN_TEACHER_POOL": str(self.teacher_pool), "PERSYN_ROUTER_DIR": str(self.work_dir / "routers"),
            "PERSYN_DATA_DIR": str(self.work_dir / "data"), "TOKENIZERS_PARALLELISM": "false",
            "HF_HUB_DISABLE_PROGRESS_BARS": "1",  # no weight-loading bars in the worker logs
            **self.extra_env,
        }

    def _log(self, name: str):
        log_dir = self.log_dir or self.work_dir / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        return self._exit.enter_context(open(log_dir / f"{name}.log", "ab"))

    def start(self) -> "LocalStack":
        with socket.socket() as probe:
            if probe.connect_ex((self.host, self.port)) == 0:
                raise RuntimeError(f"{self.host}:{self.port} is already in use; pick another port (--port)")
        self.work_dir.mkdir(parents=True, exist_ok=True)
        redis_proc = ensure_redis(self.redis_url)
        if redis_proc is not None:
            self._exit.callback(_stop, redis_proc)
        if self.teacher_pool is None:
            from services.demo.pool import DemoPool, write_demo_pool_yaml

            pool = self._exit.enter_context(DemoPool())
            self.teacher_pool = write_demo_pool_yaml(pool, self.work_dir / "demo_pool.yaml")
        for queue in self.queues:
            self.start_worker(queue)
        self.gateway = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "--factory", "router_api.app:create_app", "--host", self.host,
             "--port", str(self.port), "--log-level", "warning"],
            env=self.env, stdout=self._log("gateway"), stderr=subprocess.STDOUT)
        self._exit.callback(lambda: _stop(self.gateway))
        self.wait_ready()
        return self

    def start_worker(self, queue: str) -> subprocess.Popen:
        proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "services.jobs.celery_app", "worker", "-Q", queue,
             "-n", f"{queue}-{os.getpid()}-{time.time_ns()}@%h", "-c", str(self.concurrency.get(queue, 1)),
             "--without-gossip", "--without-mingle", "-l", "warning"],
            env=self.env, stdout=self._log(f"worker-{queue}"), stderr=subprocess.STDOUT)
        self.workers[queue] = proc
        self._exit.callback(lambda: _stop(proc))
        return proc

    def wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.gateway.poll() is not None:
                raise RuntimeError(f"gateway exited with {self.gateway.returncode}; see {self.work_dir}/logs")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"gateway not ready within {timeout}s")

    def stop(self) -> None:
        self._exit.close()

    def __enter__(self) -> "LocalStack":
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()


def _stop(proc: subprocess.Popen | None, timeout: float = 15.0) -> None:
    """SIGTERM (Celery's warm shutdown), then SIGKILL if it lingers."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
