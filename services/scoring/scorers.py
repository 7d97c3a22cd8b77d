"""One interface per reward, whatever computes it: local weights in this process or a vLLM endpoint.

Callers (workers, CLI, pipeline) ask these factories for a scorer and call ``score`` on it; only the
factories know which implementation they built.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, Sequence, runtime_checkable

import numpy as np


@dataclass
class ScoredBatch:
    """Scores of a batch, in input order, with what happened to each item on the way.

    ``truncated[i]``: item i was cut to fit the model's context before scoring (its score is
    of the part that fits, as the local scorers do). ``errors[i]``: why item i has no score
    (its value is NaN); the other items of its batch are scored all the same.
    """

    values: np.ndarray
    truncated: list[bool]
    errors: dict[int, str] = field(default_factory=dict)


@runtime_checkable
class LearnabilitySource(Protocol):
    """The student's mean log-probability per response token, one value per (prompt, response)."""

    model_id: str
    #: The dtype the log-probs are computed in (fp32/bf16/fp16) when this process decides it; None for
    #: an endpoint, whose server picks its own. Part of the score cache key.
    precision: str | None

    def score(self, items: Sequence[tuple[str, str]], *, progress: bool = False) -> np.ndarray: ...

    def score_detailed(self, items: Sequence[tuple[str, str]], *, progress: bool = False) -> ScoredBatch: ...

    def token_logprobs(self, prompt: str, response: str) -> np.ndarray: ...


@runtime_checkable
class RewardSource(Protocol):
    """A reward model's raw score (no activation), one value per (prompt, response)."""

    def score(self, items: Sequence[tuple[str, str]], progress: bool = False) -> np.ndarray: ...

    def score_detailed(self, items: Sequence[tuple[str, str]], *, progress: bool = False) -> ScoredBatch: ...


def learnability_scorer(model_ref: str, *, endpoint: str | None = None, endpoint_model: str | None = None,
                        device: str | None = None, precision: str = "fp32") -> LearnabilitySource:
    """``model_ref`` names the student's weights (always its tokenizer); with ``endpoint`` the log-probs
    come from that OpenAI-compatible server serving ``endpoint_model`` instead of local weights.
    ``precision`` (auto, fp32, bf16, fp16) applies to local weights only."""
    if endpoint:
        from services.scoring.endpoints import EndpointLearnabilityScorer

        return EndpointLearnabilityScorer(endpoint, endpoint_model or model_ref, tokenizer_ref=model_ref)
    from services.scoring.learnability import LearnabilityScorer

    return LearnabilityScorer(model_ref, device=device, precision=precision)


def reward_scorer(model_ref: str, *, endpoint: str | None = None, device: str | None = None) -> RewardSource:
    """A local Hugging Face reward model, or the model of that name on a vLLM pooling ``endpoint``."""
    if endpoint:
        from services.scoring.endpoints import EndpointRewardScorer

        return EndpointRewardScorer(endpoint, model_ref)
    from services.scoring.quality import RewardModelScorer

    return RewardModelScorer(model_ref, device=device)
