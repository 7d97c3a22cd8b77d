"""Quality rewards r_q (SPEC step 3): math-verify for math, a reward model otherwise.

``math_verify_reward`` is safe in any thread or worker process: math-verify guards its
parser and comparisons with ``signal.alarm``, which only works in the main thread of
the main interpreter. We pass a timeout only when we are in that thread and disable it
(``parsing_timeout=None`` / ``timeout_seconds=None``) everywhere else.
"""

from __future__ import annotations

import logging
import threading
from functools import lru_cache
from typing import Sequence

import numpy as np

from services.scoring.scorers import ScoredBatch

log = logging.getLogger(__name__)

#: Seconds math-verify may spend per parse/comparison when we can use its signal timer.
MATH_VERIFY_TIMEOUT_S = 5

# math-verify logs a warning the first time a timeout is disabled; that is deliberate here.
logging.getLogger("math_verify").setLevel(logging.ERROR)


def _timeout() -> int | None:
    return MATH_VERIFY_TIMEOUT_S if threading.current_thread() is threading.main_thread() else None


def _gold_text(reference: str) -> str:
    ref = str(reference).strip()
    if "$" in ref or "\\boxed" in ref or "\\(" in ref or "\\[" in ref:
        return ref
    return f"${ref}$"


@lru_cache(maxsize=4096)
def _parse_gold_cached(reference: str):
    from math_verify import parse

    # Parsed without a signal timer so the cache is safe to fill from any thread.
    return parse(_gold_text(reference), parsing_timeout=None)


def math_verify_reward(response: str, reference: str) -> float:
    """1.0 if math-verify finds the response's final answer equal to ``reference``, else 0.0.

    ``reference`` is plain text ("42", "\\frac{1}{2}") or LaTeX already in ``$...$``.
    Never raises: empty, unparsable or timed-out input scores 0.0.
    """
    if not response or reference is None or not str(reference).strip():
        return 0.0
    try:
        from math_verify import parse, verify

        gold = _parse_gold_cached(str(reference))
        if not gold:
            return 0.0
        timeout = _timeout()
        pred = parse(response, parsing_timeout=timeout)
        if not pred:
            return 0.0
        return 1.0 if verify(gold, pred, timeout_seconds=timeout) else 0.0
    except BaseException as exc:  # noqa: BLE001 - includes math_verify's TimeoutException
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise
        log.debug("math_verify failed on %r", response[:200], exc_info=True)
        return 0.0


def math_verify_rewards(responses: Sequence[str], reference: str) -> list[float]:
    return [math_verify_reward(r, reference) for r in responses]


# --------------------------------------------------------------------------- reward model

_FALLBACK_TEMPLATE = "User: {prompt}\n\nAssistant: {response}"


class RewardModelScorer:
    """A local HF sequence-classification reward model (``num_labels=1``).

    Each (prompt, response) is rendered as ``[user: prompt, assistant: response]`` with the
    reward model tokenizer's chat template; the score is the raw logit (no activation).
    Over-long inputs are truncated from the *left* so the response end, where the reward
    head reads, is kept.
    """

    def __init__(self, model_ref: str, max_length: int = 2048, batch_size: int = 8,
                 device: str | None = None):
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from services.core.models import resolve_model

        self.path = resolve_model(model_ref)
        self.max_length = int(max_length)
        self.batch_size = max(1, int(batch_size))
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.tokenizer = AutoTokenizer.from_pretrained(self.path)
        self.tokenizer.truncation_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token or self.tokenizer.unk_token
        dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        self.model = AutoModelForSequenceClassification.from_pretrained(self.path, dtype=dtype)
        if self.model.config.num_labels != 1:
            raise ValueError(f"{model_ref}: reward model must have num_labels=1, "
                             f"has {self.model.config.num_labels}")
        if self.model.config.pad_token_id is None:
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.model.to(self.device).eval()
        self._has_template = bool(getattr(self.tokenizer, "chat_template", None))
        if not self._has_template:
            log.warning("%s has no chat template; using a plain 'User:/Assistant:' layout", model_ref)

    def render(self, prompt: str, response: str) -> str:
        if not self._has_template:
            return _FALLBACK_TEMPLATE.format(prompt=prompt, response=response)
        messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
        return self.tokenizer.apply_chat_template(messages, tokenize=False)

    def score(self, items: Sequence[tuple[str, str]], progress: bool = False) -> np.ndarray:
        import torch

        texts = [self.render(p, r) for p, r in items]
        if not texts:
            return np.zeros(0, dtype=np.float32)
        # The rendered text already carries the template's special tokens (BOS etc.).
        add_special = not self._has_template
        encoded = [self.tokenizer(t, add_special_tokens=add_special, truncation=True,
                                  max_length=self.max_length)["input_ids"] for t in texts]
        order = sorted(range(len(texts)), key=lambda i: len(encoded[i]))  # less padding
        out = np.zeros(len(texts), dtype=np.float32)
        batches = [order[i:i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        if progress:
            from tqdm import tqdm

            batches = tqdm(batches, desc="reward model", unit="batch")
        with torch.inference_mode():
            for idx in batches:
                batch = self.tokenizer.pad({"input_ids": [encoded[i] for i in idx]},
                                           padding=True, return_tensors="pt")
                batch = {k: v.to(self.device) for k, v in batch.items()}
                logits = self.model(**batch).logits.float()[:, 0].cpu().numpy()
                out[idx] = logits
        if not np.all(np.isfinite(out)):
            log.warning("reward model produced %d non-finite scores",
                        int(np.sum(~np.isfinite(out))))
        return out

    def score_detailed(self, items: Sequence[tuple[str, str]], *, progress: bool = False) -> ScoredBatch:
        """:meth:`score` with each item's truncation flag (longer than ``max_length`` tokens)."""
        add_special = not self._has_template
        truncated = [len(self.tokenizer(self.render(p, r), add_special_tokens=add_special)["input_ids"])
                     > self.max_length for p, r in items]
        return ScoredBatch(np.asarray(self.score(items, progress=progress), dtype=np.float64), truncated)

    def __call__(self, prompt: str, response: str) -> float:
        return float(self.score([(prompt, response)])[0])
