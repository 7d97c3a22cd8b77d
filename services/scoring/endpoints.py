"""Learnability and reward scores from vLLM endpoints (SPEC steps 2 and 3, served).

Drop-in counterparts of the local scorers, for when the student or the reward model runs
behind a vLLM server instead of inside the scoring worker.

**Learnability** (:class:`EndpointLearnabilityScorer`, same contract as
``services.scoring.learnability.LearnabilityScorer``). Each (prompt, response) is tokenised locally
with the student's tokenizer exactly as the local scorer does (chat-templated prompt and
response encoded separately, ids concatenated; it *is* ``LearnabilityScorer.encode_item``),
and the ids are sent as the prompt of ``POST /v1/completions`` (vLLM takes a list of ints, or
a list of such lists for a batch), so the server scores the very tokens we mean and the
response starts at a known position. ``max_tokens: 1`` (every vLLM accepts it; the one
generated token is ignored). Either response shape is read:

* ``shape="prompt_logprobs"`` (default) sends ``prompt_logprobs: 0`` and reads vLLM's
  ``choices[i].prompt_logprobs``: ``[None, {"<token id>": {"logprob", "rank",
  "decoded_token"}}, ...]``, one entry per prompt token; the entry must hold the id we sent;
* ``shape="echo"`` sends ``echo: true, logprobs: 0, return_tokens_as_token_ids: true`` and
  reads the OpenAI-style ``choices[i].logprobs``: ``tokens``, ``token_logprobs`` (first
  ``None``), ``text_offset``; tokens come back as ``"token_id:<id>"`` and must equal the ids
  sent (plain token strings, from a server ignoring that flag, must spell the response).

Whichever shape the server returns is used (``prompt_logprobs`` first); a
``prompt_token_ids`` list, when present, must equal what was sent. A mismatch raises
:class:`TokenMismatchError`: silently scoring other tokens than the student saw is the bug
this guards against. Only positions ``len(prompt_ids) .. len(ids) - 1`` are summed. Items are
cut to the server's ``max_model_len`` (response tail, as the local scorer cuts), so vLLM never
answers 400 for length; should it refuse a batch anyway, its items are sent one by one and only
the refused one goes unscored.

**Reward** (:class:`EndpointRewardScorer`): the raw reward of a (prompt, response) rendered as
``[user: prompt, assistant: response]`` by the RM's chat template (locally with ``tokenizer_ref``,
else by the server's ``POST /tokenize``), sent as token ids (no second BOS) in batches to
``POST /pooling`` or ``POST /classify``. vLLM serves a one-label sequence classifier such as
Skywork-Reward-V2 under the ``classify`` task and, unless a request says ``use_activation: false``,
squashes its logit with a sigmoid on both routes, which saturates at 1.0 above a logit of ~17 and
distorts every z-score: we always send ``use_activation: false``. ``/pooling`` answers ``{"data":
[{"index", "data": D}]}`` with D = ``r``, ``[r]`` or ``[[r_1], ..., [r_T]]`` (token pooling: the last
token's value is the reward); ``/classify`` answers ``{"data": [{"index", "label", "probs",
"num_classes"}]}`` where ``probs`` then hold logits (two classes: their difference). Inputs longer
than the context keep their end (left truncation, as the local reward model does).
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from services.clients.openai_compat import OpenAICompatClient, OpenAICompatError
from services.scoring.learnability import LearnabilityScorer
from services.scoring.scorers import ScoredBatch

SHAPES = ("prompt_logprobs", "echo")
ROUTES = ("pooling", "classify")
_TOKEN_ID_PREFIX = "token_id:"


class TokenMismatchError(ValueError):
    """The endpoint scored other tokens than the ones we sent."""


# --------------------------------------------------------------------------- learnability

def response_logprobs(choice: dict, ids: Sequence[int], start: int, tokenizer=None) -> np.ndarray:
    """log p(ids[t] | ids[<t]) for t in [start, len(ids)) from one /v1/completions choice.

    Reads ``prompt_logprobs`` (vLLM) or else ``logprobs`` (OpenAI echo) and checks the
    server's tokens against ``ids`` wherever the shape carries them. ``tokenizer`` is only
    needed to check plain-text echoed tokens.
    """
    ids = list(ids)
    if not 1 <= start < len(ids):
        raise ValueError(f"response start {start} must lie in 1..{len(ids) - 1}")
    sent_back = choice.get("prompt_token_ids")
    if sent_back is not None and list(sent_back[: len(ids)]) != ids:
        raise TokenMismatchError(f"prompt_token_ids differ from the ids sent at positions "
                                 f"{_diff_positions(sent_back, ids)}")
    if choice.get("prompt_logprobs") is not None:
        return _from_prompt_logprobs(choice["prompt_logprobs"], ids, start)
    if choice.get("logprobs"):
        return _from_echo_logprobs(choice["logprobs"], ids, start, tokenizer)
    raise OpenAICompatError("completion choice has neither prompt_logprobs nor logprobs; "
                            "does the server support echo/prompt_logprobs?")


def _diff_positions(got: Sequence, want: Sequence, limit: int = 5) -> list[int]:
    diff = [t for t in range(max(len(got), len(want)))
            if t >= len(got) or t >= len(want) or got[t] != want[t]]
    return diff[:limit]


def _from_prompt_logprobs(entries: list, ids: list[int], start: int) -> np.ndarray:
    if len(entries) < len(ids):
        raise TokenMismatchError(f"prompt_logprobs has {len(entries)} positions for the "
                                 f"{len(ids)} tokens sent")
    # Every position (the first has no context) must hold the token we sent there, so a
    # prompt tokenised differently is caught too, not only a different response.
    values = []
    for t in range(1, len(ids)):
        entry = entries[t]
        value = None if entry is None else entry.get(str(ids[t]), entry.get(ids[t]))
        if value is None:
            found = None if entry is None else list(entry)
            raise TokenMismatchError(f"position {t}: the server scored token(s) {found}, "
                                     f"we sent {ids[t]}")
        values.append(value["logprob"] if isinstance(value, dict) else value)
    return np.asarray(values[start - 1:], dtype=np.float64)


def _from_echo_logprobs(logprobs: dict, ids: list[int], start: int, tokenizer) -> np.ndarray:
    values = logprobs.get("token_logprobs") or []
    tokens = logprobs.get("tokens") or []
    if len(values) < len(ids):
        raise TokenMismatchError(f"echoed logprobs cover {len(values)} tokens, we sent {len(ids)} "
                                 f"(was echo honoured?)")
    if tokens:
        _check_echoed_tokens(tokens[: len(ids)], ids, start, tokenizer)
    picked = values[start: len(ids)]
    if any(v is None for v in picked):
        raise OpenAICompatError(f"null log-prob among response positions {start}..{len(ids) - 1}")
    return np.asarray(picked, dtype=np.float64)


def _check_echoed_tokens(tokens: list[str], ids: list[int], start: int, tokenizer) -> None:
    if len(tokens) < len(ids):
        raise TokenMismatchError(f"{len(tokens)} echoed tokens for the {len(ids)} sent")
    if all(isinstance(s, str) and s.startswith(_TOKEN_ID_PREFIX) for s in tokens):
        got = [int(s[len(_TOKEN_ID_PREFIX):]) for s in tokens]
        if got != ids:
            raise TokenMismatchError(f"echoed token ids differ from the ids sent at positions "
                                     f"{_diff_positions(got, ids)}")
        return
    if tokenizer is None:
        raise TokenMismatchError("echoed tokens are text; a tokenizer is needed to check them")
    response = tokens[start:]
    if "".join(response) == tokenizer.decode(ids[start:]):
        return
    wrong = [start + i for i, (s, tid) in enumerate(zip(response, ids[start:]))
             if s not in (tokenizer.decode([tid]), tokenizer.convert_ids_to_tokens(tid))]
    if wrong:
        raise TokenMismatchError(f"echoed tokens differ from the ids sent at positions {wrong[:5]}")


class EndpointLearnabilityScorer:
    """The student's mean log-prob per response token, from its vLLM endpoint."""

    #: The local scorer's own tokenisation (it reads ``self.tokenizer`` and ``self.max_length``).
    encode_item = LearnabilityScorer.encode_item
    encode_item_flagged = LearnabilityScorer.encode_item_flagged
    #: The server computes in its own dtype, not known here (its scores get a cache key of their own).
    precision = None

    def __init__(self, base_url: str, model: str, tokenizer_ref: str = "smollm2-135m-instruct",
                 client: OpenAICompatClient | None = None, *, shape: str = "prompt_logprobs",
                 batch_size: int = 16, max_batch_tokens: int = 32768,
                 max_length: int | None = None, max_parallel_requests: int = 4,
                 timeout: float = 300.0):
        """``tokenizer_ref`` must name the student's tokenizer (the endpoint's model);
        ``batch_size`` / ``max_batch_tokens`` bound one request; ``max_length`` truncates as
        the local scorer does (default: the server's ``max_model_len`` less the one token
        generated, so vLLM never refuses an over-long item)."""
        from transformers import AutoTokenizer

        from services.core.models import resolve_model

        if shape not in SHAPES:
            raise ValueError(f"shape must be one of {SHAPES}, got {shape!r}")
        self.model_id = model
        self.shape = shape
        self.batch_size = max(1, int(batch_size))
        self.max_batch_tokens = int(max_batch_tokens)
        self.max_length = max_length
        self.max_parallel_requests = max(1, int(max_parallel_requests))
        self.tokenizer = AutoTokenizer.from_pretrained(resolve_model(tokenizer_ref))
        self.client = client or OpenAICompatClient(base_url, model, timeout=timeout)
        if self.max_length is None:
            limit = self.client.max_model_len()
            self.max_length = None if limit is None else limit - self.request_body()["max_tokens"]

    def score(self, items: Sequence[tuple[str, str]], *, progress: bool = False) -> np.ndarray:
        """Mean response-token log-prob for each (prompt, response), in input order (float64);
        raises if the server refused any item."""
        return _strict(self.score_detailed(items, progress=progress))

    def score_detailed(self, items: Sequence[tuple[str, str]], *, progress: bool = False) -> ScoredBatch:
        """Scores, truncation flags, and the items the server refused (NaN; the rest are scored)."""
        logprobs, truncated, errors = self._logprobs(items, progress)
        values = np.array([lp.mean() if i not in errors else np.nan for i, lp in enumerate(logprobs)],
                          dtype=np.float64)
        return ScoredBatch(values, truncated, errors)

    def token_logprobs(self, prompt: str, response: str) -> np.ndarray:
        """Per-response-token log-probs for one example."""
        logprobs, _, errors = self._logprobs([(prompt, response)], progress=False)
        if errors:
            raise OpenAICompatError(errors[0])
        return logprobs[0]

    def request_body(self) -> dict[str, Any]:
        """The /v1/completions parameters (besides model and prompt) for this shape."""
        common = {"max_tokens": 1, "temperature": 0.0}
        if self.shape == "prompt_logprobs":
            return {**common, "prompt_logprobs": 0}
        return {**common, "echo": True, "logprobs": 0, "return_tokens_as_token_ids": True}

    def _batches(self, lengths: list[int]) -> list[list[int]]:
        batches: list[list[int]] = []
        current: list[int] = []
        tokens = 0
        for i, n in enumerate(lengths):
            if current and (len(current) >= self.batch_size or tokens + n > self.max_batch_tokens):
                batches.append(current)
                current, tokens = [], 0
            current.append(i)
            tokens += n
        if current:
            batches.append(current)
        return batches

    def _score_batch(self, encoded: list[tuple[list[int], list[int]]]) -> list[np.ndarray]:
        id_lists = [p + r for p, r in encoded]
        data = self.client.completions(id_lists, **self.request_body())
        choices = sorted(data["choices"], key=lambda c: c.get("index", 0))
        if len(choices) != len(id_lists):
            raise OpenAICompatError(f"{len(choices)} choices for {len(id_lists)} prompts")
        return [response_logprobs(choice, ids, len(p), self.tokenizer)
                for choice, ids, (p, _) in zip(choices, id_lists, encoded)]

    def _logprobs(self, items: Sequence[tuple[str, str]],
                  progress: bool) -> tuple[list[np.ndarray], list[bool], dict[int, str]]:
        from tqdm.auto import tqdm

        flagged = [self.encode_item_flagged(p, r, index=i) for i, (p, r) in enumerate(items)]
        encoded = [(p, r) for p, r, _ in flagged]
        batches = self._batches([len(p) + len(r) for p, r in encoded])
        results: list[np.ndarray] = [np.empty(0)] * len(encoded)
        errors: dict[int, str] = {}
        bar = tqdm(total=len(encoded), desc="learnability (endpoint)", unit="ex",
                   disable=not progress)
        with ThreadPoolExecutor(max_workers=min(self.max_parallel_requests,
                                                max(1, len(batches)))) as pool:
            futures = [pool.submit(_per_item_on_refusal, self._score_batch, [encoded[i] for i in b])
                       for b in batches]
            for batch, fut in zip(batches, futures):
                for i, outcome in zip(batch, fut.result()):
                    if isinstance(outcome, str):
                        errors[i] = outcome
                    else:
                        results[i] = outcome
                bar.update(len(batch))
        bar.close()
        return results, [t for _, _, t in flagged], errors


def _per_item_on_refusal(score_batch, batch: list) -> list:
    """``score_batch(batch)``; when the server refuses the batch (a 4xx that no retry mends),
    each item is sent alone, so one bad item costs only its own score (its error message)."""
    try:
        return score_batch(batch)
    except OpenAICompatError as exc:
        if exc.retryable or exc.status_code is None or not 400 <= exc.status_code < 500:
            raise
        if len(batch) == 1:
            return [f"refused by the server: {exc}"]
    return [_per_item_on_refusal(score_batch, [item])[0] for item in batch]


def _strict(batch: ScoredBatch) -> np.ndarray:
    if batch.errors:
        i, reason = next(iter(sorted(batch.errors.items())))
        raise OpenAICompatError(f"{len(batch.errors)} item(s) not scored; item {i}: {reason}")
    return batch.values


# --------------------------------------------------------------------------- reward

def reward_from_pooling(data: Any) -> float:
    """The reward in one /pooling output: ``r``, ``[r]`` or ``[[r_1], ..., [r_T]]`` (last)."""
    if isinstance(data, (int, float)):
        return float(data)
    if isinstance(data, list) and len(data) == 1 and isinstance(data[0], (int, float)):
        return float(data[0])
    if (isinstance(data, list) and data and all(isinstance(row, list) and len(row) == 1
                                                for row in data)):
        return float(data[-1][0])
    raise OpenAICompatError(f"unsupported pooling output {str(data)[:120]!r}: expected r, [r] "
                            f"or one [r] row per token")


def reward_from_classification(entry: dict) -> float:
    """The raw reward in one /classify output requested with ``use_activation: false`` (the
    values under ``probs`` are then logits): one class -> that logit; two (negative, positive)
    -> their difference, the log-odds of the positive class."""
    logits = [float(v) for v in entry.get("probs") or []]
    if len(logits) == 1:
        return logits[0]
    if len(logits) == 2:
        return logits[1] - logits[0]
    raise OpenAICompatError(f"unsupported classification output with {len(logits)} classes: "
                            f"a reward model has 1 (or 2: negative, positive)")


def _ordered(response: Any, n: int, url: str) -> list[dict]:
    """The response's ``data`` list in input order, one entry per input."""
    data = response.get("data") if isinstance(response, dict) else None
    if not isinstance(data, list) or len(data) != n:
        raise OpenAICompatError(f"{url}: expected 'data' with {n} outputs, got {str(response)[:200]!r}")
    return sorted(data, key=lambda d: d.get("index", 0))


class EndpointRewardScorer:
    """Raw reward-model scores from a vLLM ``/pooling`` or ``/classify`` endpoint."""

    def __init__(self, base_url: str, model: str, client: OpenAICompatClient | None = None,
                 route: str = "pooling", *, tokenizer_ref: str | None = None,
                 batch_size: int = 16, max_parallel_requests: int = 8, max_length: int | None = None,
                 extra_body: dict | None = None, timeout: float = 300.0):
        """``tokenizer_ref``: the RM's tokenizer, to render the chat template locally; without it
        the server renders each conversation (``/tokenize``). Inputs longer than ``max_length``
        (default: the server's ``max_model_len``) lose their start, as the local reward model's
        do, so the response end where the reward is read is kept."""
        if route not in ROUTES:
            raise ValueError(f"route must be one of {ROUTES}, got {route!r}")
        self.model = model
        self.route = route
        self.batch_size = max(1, int(batch_size))
        self.max_parallel_requests = max(1, int(max_parallel_requests))
        self.max_length = max_length
        self.extra_body = dict(extra_body or {})
        self.tokenizer = None
        if tokenizer_ref is not None:
            from transformers import AutoTokenizer

            from services.core.models import resolve_model

            self.tokenizer = AutoTokenizer.from_pretrained(resolve_model(tokenizer_ref))
        self.client = client or OpenAICompatClient(base_url, model, timeout=timeout)

    @staticmethod
    def messages(prompt: str, response: str) -> list[dict]:
        return [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]

    def score(self, items: Sequence[tuple[str, str]], progress: bool = False) -> np.ndarray:
        """Raw reward per (prompt, response), in input order (float64); raises if any item was refused."""
        return _strict(self.score_detailed(items, progress=progress))

    def score_detailed(self, items: Sequence[tuple[str, str]], *, progress: bool = False) -> ScoredBatch:
        """Rewards, truncation flags, and the items the server refused (NaN; the rest are scored)."""
        if not items:
            return ScoredBatch(np.zeros(0, dtype=np.float64), [])
        rendered = self._map(self._ids, list(items))
        limit = self.max_length or next((n for _, n in rendered if n), None) or self.client.max_model_len()
        id_lists = [ids[-limit:] if limit else ids for ids, _ in rendered]
        truncated = [bool(limit) and len(ids) > limit for ids, _ in rendered]
        chunks = [id_lists[i:i + self.batch_size] for i in range(0, len(id_lists), self.batch_size)]
        outcomes = [o for chunk in self._map(lambda c: _per_item_on_refusal(self._score_ids, c), chunks)
                    for o in chunk]
        errors = {i: o for i, o in enumerate(outcomes) if isinstance(o, str)}
        values = np.array([np.nan if i in errors else o for i, o in enumerate(outcomes)], dtype=np.float64)
        return ScoredBatch(values, truncated, errors)

    def __call__(self, prompt: str, response: str) -> float:
        return float(self.score([(prompt, response)])[0])

    def _map(self, fn, args: list) -> list:
        if len(args) <= 1:
            return [fn(a) for a in args]
        with ThreadPoolExecutor(max_workers=min(self.max_parallel_requests, len(args))) as pool:
            return list(pool.map(fn, args))

    def _ids(self, item: tuple[str, str]) -> tuple[list[int], int | None]:
        """The RM's token ids of one rendered conversation (locally, or by ``/tokenize``, which
        also tells the server's context length)."""
        if self.tokenizer is not None:
            text = self.tokenizer.apply_chat_template(self.messages(*item), tokenize=False)
            return self.tokenizer(text, add_special_tokens=False)["input_ids"], None
        body = {"model": self.model, "messages": self.messages(*item), "add_generation_prompt": False}
        reply = self.client.post_json("/tokenize", body)
        return list(reply["tokens"]), reply.get("max_model_len")

    def _score_ids(self, id_lists: list[list[int]]) -> list[float]:
        path = "/" + self.route
        # vLLM applies the classifier's activation (a sigmoid for one label) unless told not
        # to, on /classify and on /pooling alike; rewards must stay raw for the z-scores.
        body = {"model": self.model, "input": id_lists, "use_activation": False, **self.extra_body}
        outputs = _ordered(self.client.post_json(path, body), len(id_lists), path)
        if self.route == "pooling":
            return [reward_from_pooling(o["data"]) for o in outputs]
        return [reward_from_classification(o) for o in outputs]
