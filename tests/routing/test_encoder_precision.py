"""The router encoder in bf16 for inference: weights in bf16, features still fp32 and close to fp32's."""

import numpy as np
import torch

from services.routing.model import PromptEncoder

PROMPTS = ["What is 17 plus 25?", "Write a short poem about the sea at night, in four lines."]


def test_bf16_encoder_gives_fp32_features_close_to_the_fp32_encoder():
    full = PromptEncoder("all-minilm-l6-v2", device="cpu").eval()
    reduced = PromptEncoder("all-minilm-l6-v2", device="cpu", precision="bf16").eval()
    assert next(full.model.parameters()).dtype == torch.float32
    assert next(reduced.model.parameters()).dtype == torch.bfloat16
    a, b = full.encode(PROMPTS), reduced.encode(PROMPTS)
    assert b.dtype == np.float32 and b.shape == a.shape
    cosine = np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    assert cosine.min() > 0.999 and not np.array_equal(a, b)
