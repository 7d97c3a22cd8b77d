"""A/B routing between two router versions of a student: which version serves one request."""

from __future__ import annotations

import hashlib
import json
from typing import Sequence

AB_ARMS = ("a", "b")


def ab_draw(prompts: Sequence[str]) -> float:
    """A uniform number in [0, 1) read from the SHA-256 of the request's prompts (JSON-encoded, so
    ``["ab", "c"]`` and ``["a", "bc"]`` differ)."""
    digest = hashlib.sha256(json.dumps(list(prompts)).encode("ascii")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def ab_arm(prompts: Sequence[str], share_b: float) -> str:
    """"b" for a ``share_b`` share of distinct requests, else "a".

    Deterministic in the prompts: a retried or repeated request meets the version it met before, so
    a client never sees its answer change between two calls under one split.
    """
    if not 0.0 <= share_b <= 1.0:
        raise ValueError(f"share_b must be in [0, 1], got {share_b}")
    return "b" if ab_draw(prompts) < share_b else "a"
