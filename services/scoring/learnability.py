"""Learnability reward (SPEC step 2): the student's mean log-probability per response token.

r_l(y) = (1/|y|) * sum_t log p_student(y_t | y_<t, x), where x is the prompt rendered with the
student's chat template (generation prompt included) and y is the response text. Only the response
text tokens are scored: the end-of-turn token (``<|im_end|>``) is not appended, so the reward does
not depend on whether a teacher stopped cleanly, only on how natural its words are to the student.

Prompt and response are tokenised separately and their ids concatenated, so the boundary between
them is exact whatever the tokenizer would merge across it.

Speed: examples are sorted by length and packed into right-padded batches under a token budget, and
the LM head runs only on the hidden states that predict response tokens (hidden t-1 predicts token
t), so the [batch, length, vocab] logits tensor is never built.

Precision: ``precision`` (``services.core.precision``) sets the dtype of the weights, so the forward
pass and the logits run in bf16/fp16 where asked; the picked logits are upcast to fp32 before the
log-sum-exp, and per-item means are taken in float64. A score depends on the precision it was
computed in, so :attr:`LearnabilityScorer.precision` is part of every score cache key.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer

from services.core.models import resolve_model
from services.core.precision import resolve_dtype, resolve_precision
from services.scoring.scorers import ScoredBatch

#: LM-head rows per chunk: bounds the [rows, vocab] fp32 scratch (1024 x 49k ~ 200 MB).
_HEAD_CHUNK_ROWS = 1024


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def student_precision(precision: str, device: str | None = None) -> str:
    """The concrete precision (fp32/bf16/fp16) a student loaded with these arguments runs in:
    known before loading, so cached scores can be looked up without the model."""
    return resolve_precision(precision, device or default_device())


def load_student(model_ref: str, device: str | None = None, precision: str = "fp32"):
    """Tokenizer, causal LM in eval mode with weights in ``precision`` (see
    ``services.core.precision``), its device, and the concrete precision name."""
    device = device or default_device()
    path = resolve_model(model_ref)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=resolve_dtype(precision, device)).to(device).eval()
    return tokenizer, model, torch.device(device), student_precision(precision, device)


def render_prompt(tokenizer, prompt: str) -> str:
    """The prompt as the student sees it at generation time, up to the start of its answer."""
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
    )


def encode(tokenizer, text: str) -> list[int]:
    """Ids of a text fragment with no BOS/EOS added (the chat template carries its own)."""
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def target_logprobs(head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(target) for each row of ``hidden`` [N, H], applying the LM head in row chunks; the
    logits come in the model's dtype and are upcast to fp32 before the log-sum-exp."""
    out = []
    for start in range(0, hidden.shape[0], _HEAD_CHUNK_ROWS):
        logits = head(hidden[start : start + _HEAD_CHUNK_ROWS]).float()
        picked = logits.gather(1, targets[start : start + _HEAD_CHUNK_ROWS, None]).squeeze(1)
        out.append(picked - torch.logsumexp(logits, dim=-1))
    return torch.cat(out)


def pack_batches(lengths: Sequence[int], max_batch_tokens: int) -> list[list[int]]:
    """Indices sorted by length and grouped so that padded length x batch size <= the budget
    (an example longer than the budget gets a batch of its own)."""
    batches: list[list[int]] = []
    current: list[int] = []
    for i in sorted(range(len(lengths)), key=lengths.__getitem__):
        # Ascending order, so the newest example sets the padded length of the batch.
        if current and lengths[i] * (len(current) + 1) > max_batch_tokens:
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


class LearnabilityScorer:
    """Scores (prompt, response) pairs by the student's mean log-prob per response token."""

    def __init__(
        self,
        model_ref: str = "smollm2-135m-instruct",
        *,
        max_batch_tokens: int = 4096,
        max_length: int | None = None,
        device: str | None = None,
        precision: str = "fp32",
    ) -> None:
        """``max_batch_tokens`` caps padded length x batch size; ``max_length`` caps prompt+response
        tokens by cutting the response tail (the prompt is kept whole, since it conditions every
        scored token); ``precision`` is auto, fp32, bf16 or fp16 (``services.core.precision``)."""
        self.model_id = model_ref
        self.max_batch_tokens = max_batch_tokens
        self.max_length = max_length
        self.tokenizer, self.model, self.device, self.precision = load_student(model_ref, device, precision)
        self._base = self.model.get_decoder()
        self._head = self.model.get_output_embeddings()
        self._pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0

    def score(self, items: Sequence[tuple[str, str]], *, progress: bool = False) -> np.ndarray:
        """Mean response-token log-prob for each (prompt, response), in input order (float64)."""
        return np.array([lp.mean() for lp in self._logprobs(items, progress)], dtype=np.float64)

    def token_logprobs(self, prompt: str, response: str) -> np.ndarray:
        """Per-response-token log-probs for one example."""
        return self._logprobs([(prompt, response)], progress=False)[0]

    def encode_item(self, prompt: str, response: str, *, index: int = 0) -> tuple[list[int], list[int]]:
        """(prompt ids, response ids) as scored, after truncation; ``index`` names it in errors."""
        prompt_ids, response_ids, _ = self.encode_item_flagged(prompt, response, index=index)
        return prompt_ids, response_ids

    def encode_item_flagged(self, prompt: str, response: str, *,
                            index: int = 0) -> tuple[list[int], list[int], bool]:
        """:meth:`encode_item` plus whether the response tail was cut to fit ``max_length``."""
        prompt_ids = encode(self.tokenizer, render_prompt(self.tokenizer, prompt))
        response_ids = encode(self.tokenizer, response)
        truncated = False
        if self.max_length is not None:
            room = self.max_length - len(prompt_ids)
            if room <= 0:
                raise ValueError(
                    f"item {index}: prompt has {len(prompt_ids)} tokens, no room for a response "
                    f"within max_length={self.max_length}"
                )
            truncated = len(response_ids) > room
            response_ids = response_ids[:room]
        if not response_ids:
            raise ValueError(f"item {index}: empty response (0 tokens) cannot be scored")
        return prompt_ids, response_ids, truncated

    def score_detailed(self, items: Sequence[tuple[str, str]], *, progress: bool = False) -> ScoredBatch:
        """:meth:`score` with each item's truncation flag."""
        truncated = [self.encode_item_flagged(p, r, index=i)[2] for i, (p, r) in enumerate(items)]
        return ScoredBatch(self.score(items, progress=progress), truncated)

    @torch.inference_mode()
    def _logprobs(self, items: Sequence[tuple[str, str]], progress: bool) -> list[np.ndarray]:
        encoded = [self.encode_item(p, r, index=i) for i, (p, r) in enumerate(items)]
        lengths = [len(p) + len(r) for p, r in encoded]
        results: list[np.ndarray] = [np.empty(0)] * len(encoded)
        bar = tqdm(total=len(encoded), desc="learnability", unit="ex", disable=not progress)
        for batch in pack_batches(lengths, self.max_batch_tokens):
            width = max(lengths[i] for i in batch)
            input_ids = torch.full((len(batch), width), self._pad_id, dtype=torch.long)
            attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
            rows, cols, targets, counts = [], [], [], []
            for row, i in enumerate(batch):
                prompt_ids, response_ids = encoded[i]
                ids = prompt_ids + response_ids
                input_ids[row, : len(ids)] = torch.tensor(ids)
                attention_mask[row, : len(ids)] = 1
                # Hidden state at t-1 predicts token t; response tokens start at len(prompt_ids).
                start = len(prompt_ids)
                rows += [row] * len(response_ids)
                cols += range(start - 1, start - 1 + len(response_ids))
                targets += response_ids
                counts.append(len(response_ids))
            hidden = self._base(
                input_ids=input_ids.to(self.device), attention_mask=attention_mask.to(self.device)
            ).last_hidden_state
            picked = hidden[torch.tensor(rows, device=self.device), torch.tensor(cols, device=self.device)]
            logprobs = target_logprobs(self._head, picked, torch.tensor(targets, device=self.device))
            for i, chunk in zip(batch, torch.split(logprobs.double().cpu(), counts)):
                results[i] = chunk.numpy()
            bar.update(len(batch))
        bar.close()
        return results
