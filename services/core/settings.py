"""Settings in one place, read from the environment (names match docker-compose and k8s)."""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Mapping

#: Where converted model weights and reward caches live (survives reruns).
CACHE_DIR = Path(os.environ.get("PERSYN_CACHE_DIR", Path.home() / ".cache" / "persyn"))

#: Default combination weight of learnability against quality (SPEC step 5).
DEFAULT_ALPHA = 0.4

#: Default error budget of a job: past this share of failed items (once enough have run) it stops.
DEFAULT_MAX_ERROR_RATE = 0.5

#: Default number of calibration prompts (SPEC step 1).
DEFAULT_CALIBRATION_SIZE = 2500


#: Tenant of the records made while no API keys are configured (auth off), and of no key's own.
DEFAULT_TENANT = "default"

_TENANT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class ApiKey:
    """One accepted key: the tenant it acts for, and whether it is an admin key (sees every tenant)."""

    tenant: str
    key: str = field(repr=False)
    admin: bool = False


def _api_keys(text: str) -> tuple[ApiKey, ...]:
    """``PERSYN_API_KEYS``: comma-separated ``tenant:key`` or ``tenant:key:admin`` entries.

    A bare ``key`` (the form without tenants) is a tenant of its own, named after a hash of the key
    so the key itself is never stored. Errors name the entry's position, never the key.
    """
    keys: list[ApiKey] = []
    for position, entry in enumerate((e.strip() for e in text.split(",")), 1):
        if not entry:
            continue
        parts = entry.split(":")
        if len(parts) == 1:
            key = ApiKey("key-" + hashlib.sha256(entry.encode()).hexdigest()[:12], entry)
        elif len(parts) == 2 or (len(parts) == 3 and parts[2] == "admin"):
            key = ApiKey(parts[0], parts[1], admin=len(parts) == 3)
        else:
            raise ValueError(f"entry {position}: expected 'tenant:key', 'tenant:key:admin' or a bare key")
        if not _TENANT_NAME.match(key.tenant):
            raise ValueError(f"entry {position}: tenant {key.tenant!r} must match {_TENANT_NAME.pattern}")
        if not key.key:
            raise ValueError(f"entry {position}: empty key")
        if any(k.key == key.key for k in keys):
            raise ValueError(f"entry {position}: the same key is listed twice")
        keys.append(key)
    return tuple(keys)


def _flag(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected a boolean (1/0, true/false), got {text!r}")


#: Numeric precision of local model inference: ``auto`` is bf16 where the hardware runs it natively
#: (CUDA; CPUs with avx512_bf16 or AMX), fp16 on CUDA without bf16, fp32 elsewhere.
PRECISIONS = ("auto", "fp32", "bf16", "fp16")

#: A setting restricted to :data:`PRECISIONS` (its own annotation, so ``from_env`` validates it).
Precision = str


def parse_precision(text: str) -> Precision:
    """One of :data:`PRECISIONS` (case-insensitive), else a ValueError that lists them."""
    value = text.strip().lower()
    if value not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {text!r}")
    return value


#: How an environment value becomes a setting, by the field's declared type.
_PARSERS = {"str": str, "str | None": str, "Path": Path, "Path | None": Path, "int": int, "float": float,
            "bool": _flag, "tuple[ApiKey, ...]": _api_keys, "Precision": parse_precision}


@dataclass(frozen=True)
class Settings:
    """Service settings; ``Settings.from_env()`` is what every process uses.

    ``api_keys`` (``PERSYN_API_KEYS="teamA:keyA,teamB:keyB,ops:keyC:admin"``): each key acts for a
    tenant, whose students, jobs, routers and datasets other tenants cannot see (404); an admin key
    sees every tenant's and may read ``/metrics``. Empty: auth off, one tenant (``DEFAULT_TENANT``).
    """

    redis_url: str = "redis://127.0.0.1:6379/0"
    key_prefix: str = "persyn"
    router_dir: Path = CACHE_DIR / "routers"  # router artifacts: a shared volume in a cluster
    data_dir: Path = CACHE_DIR / "service"  # uploaded prompt files, score caches
    teacher_pool: Path | None = None  # teacher pool YAML
    default_student_model: str = "smollm2-135m-instruct"
    reward_model: str | None = None  # reward model for prompts without a reference: local HF dir, or the
    reward_model_url: str | None = None  # model name served by this vLLM pooling endpoint when set
    router_backbone: str = "all-minilm-l6-v2"
    api_keys: tuple[ApiKey, ...] = field(default_factory=tuple)  # empty: auth off
    max_prompts_per_request: int = 256
    max_prompt_chars: int = 16_000
    max_job_prompts: int = 200_000
    router_service_url: str | None = None  # None: the router runs inside the gateway
    router_batching: bool = True  # micro-batching of concurrent route requests
    batch_max_size: int = 64
    batch_max_wait_ms: float = 2.0
    router_cache_size: int = 8
    device: str | None = None
    precision: Precision = "auto"  # learnability, SCAS and router encoder inference (PRECISIONS)
    task_max_retries: int = 5
    visibility_timeout_s: int = 7200  # above the longest task (router training)
    lease_s: float = 30.0  # an item's lease: a dead task's item is requeued this long after its last heartbeat
    watchdog_interval_s: float = 5.0  # how often the watchdog looks for stalled items
    redis_retry_s: float = 60.0  # how long a task retries through Redis errors before leaving it to the watchdog
    max_redeliveries: int = 3  # watchdog requeues of one item before it fails with the reason
    router_min_prompts: int = 10  # publish gate: scored calibration prompts a router needs to be activated
    router_min_pairs: int = 20  # publish gate: Bradley-Terry training pairs it needs
    chunk_items: int = 32  # prompt-teacher items per generation task (one lease, pipelined Redis writes)
    min_chunks: int = 64  # a stage with the items is cut into at least this many tasks (>= generation processes)
    chunk_parallel: int = 16  # teacher requests one generation task keeps in flight
    route_chunk_prompts: int = 2048  # prompts per routing task; generation starts as each chunk is routed
    job_working_ttl_s: int = 3600  # after a job ends, its working state (plans, leases, answers) expires
    job_retention_s: int = 7 * 86400  # ... and its record and dataset after this long
    generation_store: str | None = None  # sqlite:///PATH or postgresql://...; None: SQLite in data_dir
    generation_store_max_mb: int = 4096  # the store's size bound (least recently used answers go first)
    generation_store_max_age_s: int = 30 * 86400  # ... and its age bound

    @property
    def generation_store_url(self) -> str:
        """Where every teacher answer is kept (:mod:`services.core.generations`)."""
        return self.generation_store or f"sqlite:///{self.data_dir / 'generations.sqlite'}"

    def __post_init__(self):
        for name in ("chunk_items", "min_chunks", "chunk_parallel", "route_chunk_prompts", "job_working_ttl_s",
                     "job_retention_s", "generation_store_max_mb", "generation_store_max_age_s"):
            if getattr(self, name) < 1:
                raise ValueError(f"{ENV_VARS[name]} must be at least 1, got {getattr(self, name)}")
        if self.generation_store and not self.generation_store.startswith(
                ("sqlite:///", "postgresql://", "postgres://")):
            raise ValueError("PERSYN_GENERATION_STORE must be sqlite:///PATH or postgresql://...")
        if self.job_retention_s < self.job_working_ttl_s:
            raise ValueError("PERSYN_JOB_RETENTION_S must not be shorter than PERSYN_JOB_WORKING_TTL_S")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> "Settings":
        """Settings from ``ENV_VARS``; unset or empty variables keep the default."""
        values = {}
        for f in fields(cls):
            raw = environ.get(ENV_VARS[f.name], "")
            if raw.strip():
                try:
                    values[f.name] = _PARSERS[f.type](raw.strip())
                except ValueError as exc:
                    raise ValueError(f"{ENV_VARS[f.name]}: {exc}") from exc
        return cls(**values)


#: The environment variable of every setting: docker-compose and the k8s manifests set these names.
ENV_VARS = {
    "redis_url": "REDIS_URL",
    "key_prefix": "PERSYN_KEY_PREFIX",
    "router_dir": "PERSYN_ROUTER_DIR",
    "data_dir": "PERSYN_DATA_DIR",
    "teacher_pool": "PERSYN_TEACHER_POOL",
    "default_student_model": "PERSYN_STUDENT_MODEL",
    "reward_model": "PERSYN_REWARD_MODEL",
    "reward_model_url": "PERSYN_REWARD_MODEL_URL",
    "router_backbone": "PERSYN_ROUTER_BACKBONE",
    "api_keys": "PERSYN_API_KEYS",
    "max_prompts_per_request": "PERSYN_MAX_PROMPTS_PER_REQUEST",
    "max_prompt_chars": "PERSYN_MAX_PROMPT_CHARS",
    "max_job_prompts": "PERSYN_MAX_JOB_PROMPTS",
    "router_service_url": "PERSYN_ROUTER_URL",
    "router_batching": "PERSYN_ROUTER_BATCHING",
    "batch_max_size": "PERSYN_BATCH_MAX_SIZE",
    "batch_max_wait_ms": "PERSYN_BATCH_MAX_WAIT_MS",
    "router_cache_size": "PERSYN_ROUTER_CACHE_SIZE",
    "device": "PERSYN_DEVICE",
    "precision": "PERSYN_PRECISION",
    "task_max_retries": "PERSYN_TASK_MAX_RETRIES",
    "visibility_timeout_s": "PERSYN_VISIBILITY_TIMEOUT_S",
    "lease_s": "PERSYN_LEASE_SECONDS",
    "watchdog_interval_s": "PERSYN_WATCHDOG_INTERVAL_S",
    "redis_retry_s": "PERSYN_REDIS_RETRY_S",
    "max_redeliveries": "PERSYN_MAX_REDELIVERIES",
    "chunk_items": "PERSYN_CHUNK_ITEMS",
    "min_chunks": "PERSYN_MIN_CHUNKS",
    "chunk_parallel": "PERSYN_CHUNK_PARALLEL",
    "route_chunk_prompts": "PERSYN_ROUTE_CHUNK_PROMPTS",
    "job_working_ttl_s": "PERSYN_JOB_WORKING_TTL_S",
    "job_retention_s": "PERSYN_JOB_RETENTION_S",
    "generation_store": "PERSYN_GENERATION_STORE",
    "generation_store_max_mb": "PERSYN_GENERATION_STORE_MAX_MB",
    "generation_store_max_age_s": "PERSYN_GENERATION_STORE_MAX_AGE_S",
    "router_min_prompts": "PERSYN_ROUTER_MIN_PROMPTS",
    "router_min_pairs": "PERSYN_ROUTER_MIN_PAIRS",
}
