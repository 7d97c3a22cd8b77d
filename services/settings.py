"""Settings in one place, read from the environment (names match docker-compose and k8s)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

#: Where converted model weights and reward caches live (survives reruns).
CACHE_DIR = Path(os.environ.get("PERSYN_CACHE_DIR", Path.home() / ".cache" / "persyn"))

#: Default combination weight of learnability against quality (SPEC step 5).
DEFAULT_ALPHA = 0.4

#: Default number of calibration prompts (SPEC step 1).
DEFAULT_CALIBRATION_SIZE = 2500


def _env(name: str, default: str) -> str:
    return os.environ.get(name, default)


def _keys(text: str) -> tuple[str, ...]:
    return tuple(k.strip() for k in text.split(",") if k.strip())


@dataclass(frozen=True)
class Settings:
    """Service settings; ``Settings.from_env()`` is what every process uses."""

    redis_url: str = "redis://127.0.0.1:6379/0"
    key_prefix: str = "persyn"
    router_dir: Path = CACHE_DIR / "routers"  # router artifacts: a shared volume in a cluster
    data_dir: Path = CACHE_DIR / "service"  # uploaded prompt files, score caches
    teacher_pool: Path | None = None  # teacher pool YAML
    default_student_model: str = "smollm2-135m-instruct"
    reward_model: str | None = None  # local HF reward model for prompts without a reference
    router_backbone: str = "all-minilm-l6-v2"
    api_keys: tuple[str, ...] = field(default_factory=tuple)  # empty: auth off
    max_prompts_per_request: int = 256
    max_prompt_chars: int = 16_000
    max_job_prompts: int = 200_000
    router_service_url: str | None = None  # None: the router runs inside the gateway
    batch_max_size: int = 64
    batch_max_wait_ms: float = 2.0
    router_cache_size: int = 8
    device: str | None = None
    task_max_retries: int = 5
    visibility_timeout_s: int = 7200  # above the longest task (router training)

    @classmethod
    def from_env(cls) -> "Settings":
        pool = os.environ.get("PERSYN_TEACHER_POOL")
        return cls(
            redis_url=_env("REDIS_URL", cls.redis_url),
            key_prefix=_env("PERSYN_KEY_PREFIX", cls.key_prefix),
            router_dir=Path(_env("PERSYN_ROUTER_DIR", str(cls.router_dir))),
            data_dir=Path(_env("PERSYN_DATA_DIR", str(cls.data_dir))),
            teacher_pool=Path(pool) if pool else None,
            default_student_model=_env("PERSYN_STUDENT_MODEL", cls.default_student_model),
            reward_model=os.environ.get("PERSYN_REWARD_MODEL") or None,
            router_backbone=_env("PERSYN_ROUTER_BACKBONE", cls.router_backbone),
            api_keys=_keys(_env("PERSYN_API_KEYS", "")),
            max_prompts_per_request=int(_env("PERSYN_MAX_PROMPTS_PER_REQUEST", str(cls.max_prompts_per_request))),
            max_prompt_chars=int(_env("PERSYN_MAX_PROMPT_CHARS", str(cls.max_prompt_chars))),
            max_job_prompts=int(_env("PERSYN_MAX_JOB_PROMPTS", str(cls.max_job_prompts))),
            router_service_url=os.environ.get("PERSYN_ROUTER_URL") or None,
            batch_max_size=int(_env("PERSYN_BATCH_MAX_SIZE", str(cls.batch_max_size))),
            batch_max_wait_ms=float(_env("PERSYN_BATCH_MAX_WAIT_MS", str(cls.batch_max_wait_ms))),
            router_cache_size=int(_env("PERSYN_ROUTER_CACHE_SIZE", str(cls.router_cache_size))),
            device=os.environ.get("PERSYN_DEVICE") or None,
            task_max_retries=int(_env("PERSYN_TASK_MAX_RETRIES", str(cls.task_max_retries))),
            visibility_timeout_s=int(_env("PERSYN_VISIBILITY_TIMEOUT_S", str(cls.visibility_timeout_s))),
        )
