"""Grading a student on a math set with references: accuracy by math-verify, with a confidence interval.

Answers come from a local model (batched greedy generation under its chat template) or
from an OpenAI-compatible endpoint (vLLM, llama.cpp) at temperature 0. The interval is
Wilson's score interval, which stays inside [0, 1] and is honest at the small sizes a CPU
run can afford; two students graded on the same problems are compared with the exact
McNemar test on the problems where they disagree.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, Sequence

from services.method.formats import FormatError, iter_jsonl, write_jsonl
from services.scoring.quality import math_verify_reward

PROMPT_KEYS = ("prompt", "question", "problem")
REFERENCE_KEYS = ("reference", "answer")


def _reference(value) -> str | None:
    """A final answer as text: GSM8K's worked solutions keep what follows ``####``; 51.0 becomes 51."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return str(int(value)) if float(value).is_integer() else str(value)
    text = str(value)
    if "####" in text:
        text = text.rsplit("####", 1)[1]
    return text.strip() or None


def load_eval_set(path: str | Path, limit: int | None = None) -> list[dict]:
    """Rows ``{id, prompt, reference}`` from JSONL with a prompt|question|problem and a reference|answer."""
    items = []
    for lineno, obj in iter_jsonl(path):
        prompt = next((obj[k] for k in PROMPT_KEYS if isinstance(obj.get(k), str) and obj[k].strip()), None)
        if prompt is None:
            raise FormatError(f"{path}:{lineno}: no prompt (one of {', '.join(PROMPT_KEYS)})")
        reference = next((r for r in (_reference(obj.get(k)) for k in REFERENCE_KEYS) if r is not None), None)
        if reference is None:
            raise FormatError(f"{path}:{lineno}: no reference answer (one of {', '.join(REFERENCE_KEYS)})")
        items.append({"id": str(obj.get("id", f"line-{lineno}")), "prompt": prompt, "reference": reference})
        if limit and len(items) >= limit:
            break
    if not items:
        raise FormatError(f"{path}: no problems")
    return items


def wilson_interval(correct: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (95% for z = 1.96)."""
    if n <= 0:
        raise ValueError("an interval needs at least one trial")
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def mcnemar_p(a: Sequence[bool], b: Sequence[bool]) -> float:
    """Two-sided exact McNemar p-value: is a's accuracy different from b's on the same problems?"""
    if len(a) != len(b):
        raise ValueError("paired results must cover the same problems")
    only_a = sum(1 for x, y in zip(a, b) if x and not y)
    only_b = sum(1 for x, y in zip(a, b) if y and not x)
    n = only_a + only_b
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(only_a, only_b) + 1)) / 2 ** n
    return min(1.0, 2 * tail)


class Generator(Protocol):
    name: str

    def generate(self, prompts: Sequence[str], *, progress: bool = False) -> list[str]: ...


class LocalGenerator:
    """Greedy answers from a local HF causal LM, in length-sorted batches, left-padded."""

    def __init__(self, model_ref: str | Path, *, batch_size: int = 16, max_new_tokens: int = 512,
                 device: str | None = None, model=None, tokenizer=None):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from services.core.models import resolve_model

        self.name = str(model_ref)
        self.batch_size, self.max_new_tokens = batch_size, max_new_tokens
        if model is None:
            path = resolve_model(str(model_ref))
            tokenizer = AutoTokenizer.from_pretrained(path)
            device = device or ("cuda" if torch.cuda.is_available() else "cpu")
            dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
            model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device)
        self.model, self.tokenizer = model.eval(), tokenizer
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token

    def _render(self, prompt: str) -> str:
        return self.tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                  add_generation_prompt=True)

    def generate(self, prompts: Sequence[str], *, progress: bool = False) -> list[str]:
        import torch
        from tqdm import tqdm

        texts = [self._render(p) for p in prompts]
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out: list[str] = [""] * len(texts)
        batches = [order[i:i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        for batch in tqdm(batches, desc="generate", unit="batch", disable=not progress):
            enc = self.tokenizer([texts[i] for i in batch], return_tensors="pt", padding=True,
                                 add_special_tokens=False).to(self.model.device)
            with torch.inference_mode():
                ids = self.model.generate(**enc, do_sample=False, max_new_tokens=self.max_new_tokens,
                                          pad_token_id=self.tokenizer.pad_token_id)
            for i, row in zip(batch, ids[:, enc["input_ids"].shape[1]:]):
                out[i] = self.tokenizer.decode(row, skip_special_tokens=True)
        return out


def served_model_name(base_url: str, model: str | None = None) -> str:
    """``model``, or the one model the OpenAI-compatible server at ``base_url`` serves."""
    from services.clients.openai_compat import OpenAICompatClient

    if model is not None:
        return model
    with OpenAICompatClient(base_url, "", timeout=30, max_retries=1) as probe:
        served = probe.models()
    if len(served) != 1:
        raise ValueError(f"{base_url} serves {served or 'no models'}: name one with --served-model")
    return served[0]


class EndpointGenerator:
    """Answers from an OpenAI-compatible chat endpoint at temperature 0, a few requests at a time."""

    def __init__(self, base_url: str, model: str | None = None, *, max_tokens: int = 512, workers: int = 8,
                 timeout: float = 300.0):
        from services.clients.openai_compat import OpenAICompatClient

        model = served_model_name(base_url, model)
        self.name = f"{base_url} ({model})"
        self.client = OpenAICompatClient(base_url, model, timeout=timeout)
        self.max_tokens, self.workers = max_tokens, workers

    def generate(self, prompts: Sequence[str], *, progress: bool = False) -> list[str]:
        from tqdm import tqdm

        def ask(prompt: str) -> str:
            return self.client.chat([{"role": "user", "content": prompt}], temperature=0.0,
                                    max_tokens=self.max_tokens).text

        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            return list(tqdm(pool.map(ask, prompts), total=len(prompts), desc="generate", unit="prompt",
                             disable=not progress))


@dataclass
class EvalResult:
    model: str
    n: int
    correct: list[bool] = field(repr=False)
    answers: list[str] = field(repr=False)

    @property
    def accuracy(self) -> float:
        return sum(self.correct) / self.n

    @property
    def interval(self) -> tuple[float, float]:
        return wilson_interval(sum(self.correct), self.n)

    def summary(self) -> dict:
        low, high = self.interval
        return {"model": self.model, "n": self.n, "correct": sum(self.correct), "accuracy": round(self.accuracy, 4),
                "ci95": [round(low, 4), round(high, 4)]}


def evaluate(generator: Generator, items: Sequence[dict], *, progress: bool = False) -> EvalResult:
    """Answer every problem, grade each answer against its reference with math-verify."""
    if not items:
        raise ValueError("no problems to evaluate on")
    answers = generator.generate([it["prompt"] for it in items], progress=progress)
    correct = [math_verify_reward(a, it["reference"]) > 0 for a, it in zip(answers, items)]
    return EvalResult(model=generator.name, n=len(items), correct=correct, answers=answers)


def write_eval_outputs(result: EvalResult, items: Sequence[dict], path: str | Path) -> Path:
    return write_jsonl(({"id": it["id"], "reference": it["reference"], "answer": a, "correct": c}
                        for it, a, c in zip(items, result.answers, result.correct)), path)
