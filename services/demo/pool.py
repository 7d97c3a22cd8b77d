"""DEMO teacher pool: one local llama.cpp server (xllamacpp) running SmolLM2-135M-Instruct.

THIS IS A DEMO, NOT A REAL TEACHER POOL. All three "teachers" are the same 135M model
behind the same endpoint; they differ only by system prompt and decoding settings (and
their family/size/cost labels are made up). It exists so the pipeline can run end to
end offline on a CPU. Real pools point ``base_url`` at vLLM servers of different models.

    with DemoPool() as pool:
        teachers = pool.teachers          # list[Teacher], base_url = pool.base_url
        write_demo_pool_yaml(pool, "pool.yaml")   # valid only while the pool runs

The server runs inside this Python process (xllamacpp embeds llama.cpp's C++ HTTP
server) on 127.0.0.1 with a free port; it stops on ``__exit__``/``stop()`` and at
interpreter exit. Do not fork worker processes while it runs.
"""

from __future__ import annotations

import atexit
import gc
import logging
import os
import socket
import threading
import time
from pathlib import Path

import httpx

from services.core.models import smollm2_gguf_path
from services.method.formats import Teacher, dump_teacher_pool

log = logging.getLogger(__name__)

DEMO_MODEL_ALIAS = "smollm2-135m-instruct"
DEMO_SIZE_B = 0.135

_CAREFUL_PROMPT = (
    "You are a careful math tutor. Solve the problem step by step in a few short lines. "
    "End with 'The answer is N.' where N is the final number."
)
_VERBOSE_PROMPT = (
    "You are a friendly teacher who explains everything at length. Describe each step of "
    "your reasoning in detail before giving the final answer."
)


def demo_teachers(base_url: str, model: str = DEMO_MODEL_ALIAS) -> list[Teacher]:
    """The three DEMO teachers (same model, different prompts/decoding)."""
    return [
        Teacher(name="demo-careful", family="smollm2", size_b=DEMO_SIZE_B, base_url=base_url,
                model=model, sampling={"temperature": 0.2, "top_p": 0.9, "max_tokens": 256},
                cost_per_1m_output=0.20, system_prompt=_CAREFUL_PROMPT),
        Teacher(name="demo-verbose", family="smollm2", size_b=DEMO_SIZE_B, base_url=base_url,
                model=model, sampling={"temperature": 0.7, "top_p": 0.95, "max_tokens": 256},
                cost_per_1m_output=0.30, system_prompt=_VERBOSE_PROMPT),
        Teacher(name="demo-creative", family="demo-other", size_b=DEMO_SIZE_B, base_url=base_url,
                model=model, sampling={"temperature": 1.0, "top_p": 0.95, "max_tokens": 256},
                cost_per_1m_output=0.10, system_prompt=None),
    ]


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class DemoPool:
    """Context manager around one embedded llama.cpp server serving the DEMO teachers.

    ``n_parallel`` slots share ``n_ctx`` tokens of KV cache (``n_ctx / n_parallel`` per
    request: prompt + max_tokens must fit). ``verbosity`` is llama.cpp's log level
    (0 none .. 3 info); the default keeps only errors. ``n_threads`` defaults to 1
    (``PERSYN_DEMO_THREADS`` overrides it).
    """

    def __init__(self, *, host: str = "127.0.0.1", port: int | None = None,
                 n_parallel: int = 4, n_ctx: int = 4096, n_threads: int | None = None,
                 model_path: str | Path | None = None, verbosity: int = 1,
                 startup_timeout_s: float = 120.0):
        self.host = host
        self.port = port
        self.n_parallel = n_parallel
        self.n_ctx = n_ctx
        # One thread by default: a 135M model gains little from more, and llama.cpp's
        # spin-waiting worker threads slow down 10-50x when the CPU is shared with other
        # processes (measured: 0.4 s vs 3-20 s per 32-token answer on a busy 2-core box).
        self.n_threads = n_threads or int(os.environ.get("PERSYN_DEMO_THREADS", "1"))
        self.model_path = Path(model_path) if model_path else smollm2_gguf_path()
        self.verbosity = verbosity
        self.startup_timeout_s = startup_timeout_s
        self._server = None
        self._lock = threading.Lock()
        self.root_url: str | None = None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> "DemoPool":
        with self._lock:
            if self._server is not None:
                return self
            import xllamacpp as xlc

            params = xlc.CommonParams()
            params.model.path = str(self.model_path)
            params.model_alias = {DEMO_MODEL_ALIAS}
            params.hostnames = [self.host]
            port = self.port or _free_port(self.host)
            params.port = port
            params.n_parallel = self.n_parallel
            params.n_ctx = self.n_ctx
            params.cpuparams.n_threads = self.n_threads
            params.cpuparams_batch.n_threads = self.n_threads
            params.verbosity = self.verbosity
            self._server = xlc.Server(params)  # loads the model and starts listening
            self.port = port
            address = getattr(self._server, "listening_address", "") or f"http://{self.host}:{port}"
            self.root_url = address.rstrip("/")
            atexit.register(self.stop)
        try:
            self._wait_healthy()
        except BaseException:
            self.stop()
            raise
        log.info("DEMO pool (SmolLM2-135M x3) listening on %s", self.root_url)
        return self

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + self.startup_timeout_s
        last: object = None
        while time.monotonic() < deadline:
            try:
                resp = httpx.get(f"{self.root_url}/health", timeout=2.0)
                if resp.status_code == 200:
                    return
                last = f"HTTP {resp.status_code}"
            except httpx.HTTPError as exc:
                last = exc
            time.sleep(0.2)
        raise RuntimeError(f"demo llama.cpp server at {self.root_url} not healthy "
                           f"after {self.startup_timeout_s}s: {last}")

    def stop(self) -> None:
        """Stop the server (idempotent). Dropping the last reference shuts llama.cpp down."""
        with self._lock:
            server, self._server = self._server, None
            if server is None:
                return
            del server
            gc.collect()
            try:
                atexit.unregister(self.stop)
            except Exception:  # noqa: BLE001
                pass

    @property
    def running(self) -> bool:
        return self._server is not None

    def __enter__(self) -> "DemoPool":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------------ teachers
    @property
    def base_url(self) -> str:
        """OpenAI-style base URL (``http://127.0.0.1:PORT/v1``)."""
        if self.root_url is None:
            raise RuntimeError("DemoPool is not started")
        return f"{self.root_url}/v1"

    @property
    def model(self) -> str:
        return DEMO_MODEL_ALIAS

    @property
    def teachers(self) -> list[Teacher]:
        return demo_teachers(self.base_url)


def write_demo_pool_yaml(pool: DemoPool, path: str | Path) -> Path:
    """Write the DEMO pool as a teacher-pool YAML (its base_url is only valid while it runs)."""
    return dump_teacher_pool(pool.teachers, path)


def main(argv: list[str] | None = None) -> None:
    """``python -m services.demo.pool [--write pool.yaml]``: serve the DEMO pool until Ctrl-C."""
    import argparse

    ap = argparse.ArgumentParser(description="Serve the DEMO teacher pool (3x SmolLM2-135M).")
    ap.add_argument("--write", metavar="YAML", help="write the pool YAML here")
    ap.add_argument("--port", type=int, default=None)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--parallel", type=int, default=4)
    args = ap.parse_args(argv)
    with DemoPool(host=args.host, port=args.port, n_parallel=args.parallel) as pool:
        if args.write:
            write_demo_pool_yaml(pool, args.write)
            print(f"wrote {args.write}")
        print(f"DEMO pool serving at {pool.base_url} (teachers: "
              f"{', '.join(t.name for t in pool.teachers)}); Ctrl-C to stop", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
