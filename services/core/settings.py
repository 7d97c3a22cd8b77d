"""Settings in one place, read from the environment (names match docker-compose and k8s)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Mapping

#: Where converted model weights and reward caches live (survives reruns).
CACHE_DIR = Path(os.environ.get("PERSYN_CACHE_DIR", Path.home() / ".cache" / "persyn"))

#: Default combination weight of learnability against quality (SPEC step 5).
DEFAULT_ALPHA = 0.4

#: Default number of calibration prompts (SPEC step 1).
DEFAULT_CALIBRATION_SIZE = 2500


def _keys(text: str) -> tuple[str, ...]:
    return tuple(k.strip() for k in text.split(",") if k.strip())


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
            "bool": _flag, "tuple[str, ...]": _keys, "Precision": parse_precision}


@dataclass(frozen=True)
class Settings:
    """Service settings; ``Settings.from_env()`` is what every process uses."""

    redis_url: str = "redis://127.0.0.1:6379/0"
    key_prefix: str = "persyn"
    router_dir: Path = CACHE_DIR / "routers"  # router artifacts: a shared volume in a cluster
    data_dir: Path = CACHE_DIR / "service"  # uploaded prompt files, score caches
    teacher_pool: Path | None = None  # teacher pool YAML
    default_student_model: str = "smollm2-135m-instruct"
    reward_model: str | None = None  # reward model for prompts without a reference: local HF dir, or the
    reward_model_url: str | None = None  # model name served by this vLLM pooling endpoint when set
    router_backbone: str = "all-minilm-l6-v2"
    api_keys: tuple[str, ...] = field(default_factory=tuple)  # empty: auth off
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
}
