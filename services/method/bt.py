"""The Bradley-Terry head and loss (SPEC step 7), in torch and nothing else."""

from __future__ import annotations

import torch
from torch import nn


class BTHead(nn.Module):
    """Maps a prompt vector h(x) to one strength per teacher, pi(x) = W h + b.

    ``feature_mean``/``feature_scale`` standardise frozen-backbone features with
    training-set statistics (identity when the backbone is fine-tuned), so one
    learning rate suits any backbone's scale.
    """

    def __init__(self, hidden_size: int, n_teachers: int):
        super().__init__()
        self.linear = nn.Linear(hidden_size, n_teachers)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)
        self.register_buffer("feature_mean", torch.zeros(hidden_size))
        self.register_buffer("feature_scale", torch.ones(hidden_size))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear((features - self.feature_mean) / self.feature_scale)


def bt_loss(strengths: torch.Tensor, prompt: torch.Tensor, a: torch.Tensor, b: torch.Tensor,
            label: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of sigmoid(pi_B - pi_A) against ``label`` (1 = B beats A).

    ``strengths`` is ``[n_prompts, n_teachers]``; ``prompt`` indexes its rows.
    """
    logits = strengths[prompt, b] - strengths[prompt, a]
    return nn.functional.binary_cross_entropy_with_logits(logits, label)
