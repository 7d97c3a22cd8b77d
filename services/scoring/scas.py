"""SCAS features (student-centric answer selection, SPEC "Baselines"): one student forward pass.

For a (prompt, answer) pair the student reads chat-template(prompt) + answer once, and we take

- d_A: mean NLL of the answer tokens; d_Q: mean NLL of the prompt tokens;
- h_i: the L2-normalised output of the last decoder layer's MLP up-projection at token i;
- AA = mean cosine over all answer-token pairs, diagonal included = ||sum_a h_a||^2 / n_a^2;
- AQ = mean cosine between answer and prompt tokens = (sum_a h_a).(sum_q h_q) / (n_a n_q).

"Prompt tokens" are the tokens of the user's prompt text: the chat scaffolding (default system
prompt, role names, control tokens) is the same for every prompt, so it would only dilute d_Q and
AQ. Special tokens are dropped from both sets, and a token at position 0 (no prediction) is never
counted. The answer ends without an end-of-turn token, as in ``services.scoring.learnability``. The cost
itself, S = (1 - lam) d_A^2 AA + lam d_A d_Q AQ, lives in :func:`services.method.strategies.scas_cost`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from services.scoring.learnability import encode, load_student, render_prompt, target_logprobs

_MARK = "\x00PROMPT\x00"


@dataclass(frozen=True)
class SCASFeatures:
    d_a: float
    d_q: float
    aa: float
    aq: float


class SCASScorer:
    """Computes SCASFeatures with a Llama-style student (one that has ``model.layers[-1].mlp.up_proj``)."""

    def __init__(self, model_ref: str = "smollm2-135m-instruct", device: str | None = None,
                 precision: str = "fp32") -> None:
        """``precision``: the student's weights dtype (auto, fp32, bf16, fp16); NLLs are taken from
        fp32 logits and the hidden-state cosines in float64 whatever it is."""
        self.model_id = model_ref
        self.tokenizer, self.model, self.device, self.precision = load_student(model_ref, device, precision)
        try:
            self._up_proj = self.model.model.layers[-1].mlp.up_proj
        except AttributeError as exc:
            raise TypeError(
                f"{model_ref!r} ({type(self.model).__name__}) has no model.layers[-1].mlp.up_proj; "
                "SCAS supports Llama-style students only"
            ) from exc
        self._head = self.model.get_output_embeddings()
        self._special = set(self.tokenizer.all_special_ids) | {
            i for i, tok in self.tokenizer.added_tokens_decoder.items() if tok.special
        }
        before, found, after = render_prompt(self.tokenizer, _MARK).partition(_MARK)
        if not found:
            raise ValueError(f"{model_ref!r}: chat template does not place the prompt verbatim")
        self._before, self._after = before, after

    def features(self, prompt: str, answer: str) -> SCASFeatures:
        """d_A, d_Q, AA, AQ for one pair, from a single forward pass (see the module docstring)."""
        ids, q_pos, a_pos = self._layout(prompt, answer)
        captured: list[torch.Tensor] = []
        handle = self._up_proj.register_forward_hook(lambda _m, _i, out: captured.append(out))
        try:
            with torch.inference_mode():
                input_ids = torch.tensor([ids], device=self.device)
                hidden = self.model.model(input_ids=input_ids).last_hidden_state[0]
                positions = torch.tensor(q_pos + a_pos, device=self.device)
                nll = -target_logprobs(self._head, hidden[positions - 1], input_ids[0, positions])
        finally:
            handle.remove()
        h = torch.nn.functional.normalize(captured[0][0].double(), dim=-1)
        sum_q = h[q_pos].sum(0)
        sum_a = h[a_pos].sum(0)
        n_q, n_a = len(q_pos), len(a_pos)
        return SCASFeatures(
            d_a=float(nll[n_q:].mean()),
            d_q=float(nll[:n_q].mean()),
            aa=float(sum_a @ sum_a) / n_a**2,
            aq=float(sum_a @ sum_q) / (n_a * n_q),
        )

    def features_many(
        self, items: Sequence[tuple[str, str]], progress: bool = False
    ) -> list[SCASFeatures]:
        """Features for each (prompt, answer), in order; one forward pass per pair."""
        return [self.features(p, a) for p, a in tqdm(items, desc="scas", disable=not progress)]

    def _layout(self, prompt: str, answer: str) -> tuple[list[int], list[int], list[int]]:
        """Ids of template + prompt + answer, and the positions of prompt and answer tokens."""
        parts = [encode(self.tokenizer, t) for t in (self._before, prompt, self._after, answer)]
        ids = [i for part in parts for i in part]
        starts = [sum(len(p) for p in parts[:k]) for k in range(4)]

        def keep(k: int) -> list[int]:
            span = range(starts[k], starts[k] + len(parts[k]))
            return [j for j in span if j > 0 and ids[j] not in self._special]

        q_pos, a_pos = keep(1), keep(3)
        if not q_pos:
            raise ValueError("prompt has no scorable (non-special) tokens")
        if not a_pos:
            raise ValueError("answer has no scorable (non-special) tokens")
        return ids, q_pos, a_pos
