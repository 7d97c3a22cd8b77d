"""Which torch dtype a model runs in, from the ``precision`` setting and the device it runs on.

``auto`` picks reduced precision only where the hardware computes it natively: bf16 on CUDA (fp16
on CUDA devices without bf16) and on CPUs whose flags list avx512_bf16 or amx_bf16; fp32 elsewhere,
since emulated bf16 is slower than fp32. An explicit ``bf16`` is honoured on any device; ``fp16``
only on CUDA (CPUs have no fast fp16 kernels, and fp16's range overflows in long residual streams).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import torch

from services.core.settings import parse_precision

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
#: CPU flags (``/proc/cpuinfo``) that mean native bf16 dot products.
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@lru_cache(maxsize=1)
def cpu_has_bf16() -> bool:
    """True when this CPU's flags list a native bf16 instruction set (Linux; False elsewhere)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return any(flag in flags for flag in CPU_BF16_FLAGS)


def resolve_precision(precision: str, device: str | torch.device) -> str:
    """The concrete precision (fp32, bf16 or fp16, never auto) a model on ``device`` runs in."""
    precision = parse_precision(precision)
    kind = torch.device(device).type
    if precision == "auto":
        if kind == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "bf16" if kind == "cpu" and cpu_has_bf16() else "fp32"
    if precision == "fp16" and kind != "cuda":
        raise ValueError(f"precision fp16 needs a CUDA device (got {kind}); use bf16 or fp32")
    return precision


def resolve_dtype(precision: str, device: str | torch.device) -> torch.dtype:
    """:func:`resolve_precision` as a torch dtype."""
    return DTYPES[resolve_precision(precision, device)]
