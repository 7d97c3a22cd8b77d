"""One interface per reward, whatever computes it: local weights in this process or a vLLM endpoint.

Callers (workers, CLI, pipeline) ask these factories for a scorer and call ``score`` on it; only the
factories know which implementation they built.
"""

from __future__ import annotations

from typing import Protocol, Sequence, runtime_checkable

import numpy as np


@runtime_checkable
class LearnabilitySource(Protocol):
    """The student's mean log-probability per response token, one value per (prompt, response)."""

    model_id: str

    def score(self, items: Sequence[tuple[str, str]], *, progress: bool = False) -> np.ndarray: ...

    def token_logprobs(self, prompt: str, response: str) -> np.ndarray: ...


@runtime_checkable
class RewardSource(Protocol):
    """A reward model's raw score (no activation), one value per (prompt, response)."""

    def score(self, items: Sequence[tuple[str, str]], progress: bool = False) -> np.ndarray: ...


def learnability_scorer(model_ref: str, *, endpoint: str | None = None, endpoint_model: str | None = None,
                        device: str | None = None) -> LearnabilitySource:
    """``model_ref`` names the student's weights (always its tokenizer); with ``endpoint`` the log-probs
    come from that OpenAI-compatible server serving ``endpoint_model`` instead of local weights."""
    if endpoint:
        from services.scoring.endpoints import EndpointLearnabilityScorer

        return EndpointLearnabilityScorer(endpoint, endpoint_model or model_ref, tokenizer_ref=model_ref)
    from services.scoring.learnability import LearnabilityScorer

    return LearnabilityScorer(model_ref, device=device)


def reward_scorer(model_ref: str, *, endpoint: str | None = None, device: str | None = None) -> RewardSource:
    """A local Hugging Face reward model, or the model of that name on a vLLM pooling ``endpoint``."""
    if endpoint:
        from services.scoring.endpoints import EndpointRewardScorer

        return EndpointRewardScorer(endpoint, model_ref)
    from services.scoring.quality import RewardModelScorer

    return RewardModelScorer(model_ref, device=device)
