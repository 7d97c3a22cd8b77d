"""A loopback stand-in for a vLLM server: vLLM's routes and response shapes, real SmolLM2 numbers.

vLLM cannot run on the CPU test machine, so this app speaks the parts of vLLM's serving
protocol that PerSyn uses, with numbers computed from the REAL SmolLM2-135M-Instruct weights:

* ``GET /v1/models``;
* ``POST /v1/completions`` with token-id or text prompts (one or a batch), ``echo`` +
  ``logprobs`` (OpenAI shape: ``choices[i].logprobs`` with ``tokens``, ``token_logprobs``
  (first ``None``), ``text_offset``, ``top_logprobs``) and vLLM's ``prompt_logprobs``
  (``choices[i].prompt_logprobs``: first ``None``, then ``{token_id: {logprob, rank,
  decoded_token}}``), ``return_tokens_as_token_ids``, ``return_token_ids``, greedy
  generation of ``max_tokens`` tokens (``echo`` with ``max_tokens: 0`` echoes only, as vLLM
  does). Log-probs are a full-vocabulary log-softmax per position, fp32;
* ``POST /tokenize`` (``messages`` with the chat template, or ``prompt``);
* ``POST /pooling`` and ``POST /classify`` in vLLM's PoolingResponse / ClassificationResponse
  shapes, as vLLM serves a sequence-classification reward model under the ``classify`` task.
  THE "REWARD" IS A STAND-IN: the model's mean log-prob per token of the rendered conversation
  (tokens 1..T-1), not a trained reward model; it only exercises the protocol with real,
  deterministic numbers. As in vLLM (``PoolingParams`` defaults ``use_activation`` to true for
  classification; ``PoolerClassify`` is a sigmoid for one label, a softmax for more), both routes
  squash the logits unless the request says ``use_activation: false``: ``/pooling`` returns
  ``[sigmoid(reward)]`` per input, or with ``pooling_output="token"`` one row per token (the
  running mean, each squashed; the last row is the reward); ``/classify`` returns
  ``probs = [sigmoid(reward)]`` (``classify_num_classes=1``) or ``softmax([0, reward])`` (2), and
  with ``use_activation: false`` the raw logits under the same ``probs`` key;
* the context limit: ``max_model_len`` (reported by ``/v1/models`` and ``/tokenize``); an input
  longer than it (for completions: prompt + ``max_tokens``) is refused with vLLM's 400
  ``{"error": {"message", "type": "BadRequestError", "param", "code": 400}}``, unless a pooling
  request sets ``truncate_prompt_tokens`` (-1 = the limit; k = keep the last k tokens);
* ``POST /v1/chat/completions``: CANNED text ``"answer to: <last user message>"`` (no model),
  for fault-injection and concurrency tests.

Deliberate difference from vLLM: with ``echo`` + ``logprobs`` real vLLM also fills
``choices[i].prompt_logprobs``; here only when ``echo_fills_prompt_logprobs`` is set, so a
test sees one response shape at a time.

Fault injection (:class:`Faults`, mutable at run time, e.g. to heal an endpoint): an ASGI
middleware decides each request's fate from ``(seed, route, body, how many times this body
was seen before)``, so a job's k-th attempt meets the same fate whatever the thread
interleaving: fail with 500 or 429 (some 429s carry ``Retry-After``), or be held for
``delay_s`` (past the client's timeout) before being served, or dropped once the client
disconnects. Every request is logged
(:attr:`FakeVLLM.log`) and counted per route; ``max_in_flight`` tracks concurrency.

``start_server(app) -> (root_url, stop)`` runs any ASGI app with uvicorn in a thread.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import random
import socket
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass

import uvicorn
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse

MODEL_REF = "smollm2-135m-instruct"


class VLLMError(ValueError):
    """A request vLLM refuses with 400 (e.g. longer than the model's context)."""


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


@dataclass
class Faults:
    """What share of requests to which routes fail or stall (0 = a healthy server)."""

    fail_rate: float = 0.0       # answered with one of ``statuses`` (equally likely)
    delay_rate: float = 0.0      # held for delay_s, then served normally
    delay_s: float = 2.0
    retry_after_s: int = 1       # sent with half of the 429s
    statuses: tuple[int, ...] = (500, 429)
    seed: int = 0
    routes: tuple[str, ...] = ("/v1/chat/completions",)


@dataclass
class RequestRecord:
    route: str
    key: str          # hash of the body: one job's attempts share it
    nth: int          # 0 for the first time this body arrived, 1 for its first retry, ...
    outcome: str      # "ok", "delayed", "http_500" or "http_429"
    arrived: float    # time.monotonic()
    retry_after: int | None = None


class FakeVLLM:
    """The fake server's state; ``.app`` is the ASGI app to serve."""

    def __init__(self, model: str = "fake-student", *, faults: Faults | None = None,
                 chat_latency_s: float = 0.0, pooling_output: str = "sequence",
                 classify_num_classes: int = 1, echo_fills_prompt_logprobs: bool = False,
                 tamper_position: int | None = None, max_model_len: int = 2048):
        self.model = model
        self.max_model_len = max_model_len
        self.faults = faults or Faults()
        self.chat_latency_s = chat_latency_s
        self.pooling_output = pooling_output
        self.classify_num_classes = classify_num_classes
        self.echo_fills_prompt_logprobs = echo_fills_prompt_logprobs
        #: Report a different token id at this position of every echoed prompt (as if the
        #: server had tokenised differently); None = faithful.
        self.tamper_position = tamper_position
        self.log: list[RequestRecord] = []
        self.received: Counter[str] = Counter()
        self.in_flight: Counter[str] = Counter()
        self.max_in_flight: Counter[str] = Counter()
        self._seen: dict[str, int] = defaultdict(int)
        self._state_lock = threading.Lock()
        self._model_lock = threading.Lock()
        self._lm = None
        self._rewards: dict[tuple[int, ...], tuple[float, list[float]]] = {}
        self.app = self._build_app()

    # ------------------------------------------------------------------ the real model
    def lm(self):
        """(tokenizer, model), loaded on first use (the canned chat route never needs it)."""
        with self._model_lock:
            if self._lm is None:
                from transformers import AutoModelForCausalLM, AutoTokenizer

                from services.core.models import resolve_model

                path = resolve_model(MODEL_REF)
                tok = AutoTokenizer.from_pretrained(path)
                model = AutoModelForCausalLM.from_pretrained(path, dtype="float32").eval()
                self._lm = (tok, model)
            return self._lm

    def _log_softmax(self, ids: list[int]):
        """[len(ids), vocab] log-probs: row t is the distribution of token t+1."""
        import torch

        _, model = self.lm()
        with self._model_lock, torch.inference_mode():
            logits = model(input_ids=torch.tensor([ids])).logits[0].float()
        return torch.log_softmax(logits, dim=-1)

    def reward(self, ids: list[int]) -> tuple[float, list[float]]:
        """The stand-in reward (mean log-prob of tokens 1..T-1) and its running mean per token
        (memoised: it is deterministic, and the tests ask for the same inputs many times)."""
        key = tuple(ids)
        if key not in self._rewards:
            self._rewards[key] = self._compute_reward(ids)
        return self._rewards[key]

    def _compute_reward(self, ids: list[int]) -> tuple[float, list[float]]:
        logp = self._log_softmax(ids)
        picked = [float(logp[t - 1, ids[t]]) for t in range(1, len(ids))]
        running, total = [0.0], 0.0
        for t, lp in enumerate(picked, start=1):
            total += lp
            running.append(total / t)
        return running[-1], running

    def render_ids(self, messages: list[dict], add_generation_prompt: bool) -> list[int]:
        tok, _ = self.lm()
        text = tok.apply_chat_template(messages, add_generation_prompt=add_generation_prompt,
                                       tokenize=False)
        return tok(text, add_special_tokens=False)["input_ids"]

    # ------------------------------------------------------------------ fault gate
    def _admit(self, route: str, body: bytes) -> RequestRecord:
        key = hashlib.sha1(route.encode() + b"\0" + body).hexdigest()[:16]
        with self._state_lock:
            nth = self._seen[key]
            self._seen[key] += 1
            self.received[route] += 1
            f = self.faults
            outcome, retry_after = "ok", None
            if route in f.routes:
                rng = random.Random(f"{f.seed}:{key}:{nth}")
                u = rng.random()
                if u < f.fail_rate:
                    outcome = f"http_{rng.choice(f.statuses)}"
                    if outcome == "http_429" and rng.random() < 0.5:
                        retry_after = f.retry_after_s
                elif u < f.fail_rate + f.delay_rate:
                    outcome = "delayed"
            record = RequestRecord(route, key, nth, outcome, time.monotonic(), retry_after)
            self.log.append(record)
            return record

    def _middleware(self, app):
        async def gate(scope, receive, send):
            if scope["type"] != "http":
                return await app(scope, receive, send)
            chunks, more = [], True
            while more:
                message = await receive()
                chunks.append(message.get("body", b""))
                more = message.get("more_body", False)
            body = b"".join(chunks)
            route = scope["path"]
            record = self._admit(route, body)
            if record.outcome.startswith("http_"):
                status = int(record.outcome[5:])
                headers = [(b"content-type", b"application/json")]
                if record.retry_after is not None:
                    headers.append((b"retry-after", str(record.retry_after).encode()))
                payload = json.dumps({"error": {"message": f"injected {status}",
                                                "type": "fault", "code": status}}).encode()
                await send({"type": "http.response.start", "status": status, "headers": headers})
                await send({"type": "http.response.body", "body": payload})
                return
            if record.outcome == "delayed" and await _client_left_within(receive, self.faults.delay_s):
                return  # like vLLM, drop a request whose client gave up
            replayed = False

            async def replay():
                nonlocal replayed
                if not replayed:
                    replayed = True
                    return {"type": "http.request", "body": body, "more_body": False}
                return await receive()

            with self._state_lock:
                self.in_flight[route] += 1
                self.max_in_flight[route] = max(self.max_in_flight[route], self.in_flight[route])
            try:
                await app(scope, replay, send)
            finally:
                with self._state_lock:
                    self.in_flight[route] -= 1

        return gate

    # ------------------------------------------------------------------ routes
    def _build_app(self):
        api = FastAPI()

        @api.exception_handler(VLLMError)
        async def _vllm_error(request: Request, exc: VLLMError):
            return JSONResponse({"error": {"message": str(exc), "type": "BadRequestError", "param": None,
                                           "code": 400}}, status_code=400)

        @api.get("/v1/models")
        def models():
            return {"object": "list", "data": [{"id": self.model, "object": "model",
                                                "owned_by": "fake-vllm", "max_model_len": self.max_model_len}]}

        @api.get("/health")
        def health():
            return {}

        @api.post("/v1/chat/completions")
        async def chat(request: Request):
            body = await request.json()
            self._check_model(body)
            if self.chat_latency_s:
                await asyncio.sleep(self.chat_latency_s)
            last = [m for m in body["messages"] if m.get("role") == "user"][-1]["content"]
            text = f"answer to: {last}"
            return {"id": "chatcmpl-fake", "object": "chat.completion", "model": self.model,
                    "created": int(time.time()),
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": text}}],
                    "usage": {"prompt_tokens": len(json.dumps(body["messages"])) // 4,
                              "completion_tokens": len(text.split()),
                              "total_tokens": 0}}

        @api.post("/v1/completions")
        def completions(body: dict):
            self._check_model(body)
            return self._completions(body)

        @api.post("/tokenize")
        def tokenize(body: dict):
            self._check_model(body)
            if "messages" in body:
                ids = self.render_ids(body["messages"], body.get("add_generation_prompt", True))
            else:
                tok, _ = self.lm()
                ids = tok(body["prompt"], add_special_tokens=body.get("add_special_tokens", True))["input_ids"]
            return {"count": len(ids), "max_model_len": self.max_model_len, "tokens": ids, "token_strs": None}

        @api.post("/pooling")
        def pooling(body: dict):
            self._check_model(body)
            data, inputs = [], self._pooling_inputs(body)
            squash = body.get("use_activation") is not False
            for i, ids in enumerate(inputs):
                reward, running = self.reward(ids)
                if self.pooling_output == "token":
                    out = [[_sigmoid(r) if squash else r] for r in running]
                else:
                    out = [_sigmoid(reward) if squash else reward]
                data.append({"index": i, "object": "pooling", "data": out})
            return {"id": "pool-fake", "object": "list", "created": int(time.time()),
                    "model": self.model, "data": data, "usage": _usage(inputs)}

        @api.post("/classify")
        def classify(body: dict):
            self._check_model(body)
            data, inputs = [], self._pooling_inputs(body)
            squash = body.get("use_activation") is not False
            for i, ids in enumerate(inputs):
                reward, _ = self.reward(ids)
                logits = [reward] if self.classify_num_classes == 1 else [0.0, reward]
                if not squash:
                    probs = logits
                elif len(logits) == 1:
                    probs = [_sigmoid(reward)]
                else:
                    z = 1.0 + math.exp(reward)
                    probs = [1.0 / z, math.exp(reward) / z]
                label = f"LABEL_{max(range(len(logits)), key=logits.__getitem__)}"
                data.append({"index": i, "label": label, "probs": probs,
                             "num_classes": len(probs)})
            return {"id": "classify-fake", "object": "list", "created": int(time.time()),
                    "model": self.model, "data": data, "usage": _usage(inputs)}

        return self._middleware(api)

    def _check_model(self, body: dict) -> None:
        if body.get("model") != self.model:
            raise HTTPException(404, f"The model `{body.get('model')}` does not exist.")

    def _pooling_inputs(self, body: dict) -> list[list[int]]:
        """The inputs of a pooling/classify request, truncated as asked or refused when too long."""
        inputs = self._inputs(body)
        keep = body.get("truncate_prompt_tokens")
        if keep is not None:
            keep = self.max_model_len if keep == -1 else int(keep)
            return [ids[-keep:] for ids in inputs]
        for ids in inputs:
            self._check_length(len(ids))
        return inputs

    def _check_length(self, n_tokens: int, what: str = "input") -> None:
        if n_tokens > self.max_model_len:
            raise VLLMError(f"This model's maximum context length is {self.max_model_len} tokens. "
                            f"However, you requested {n_tokens} tokens in the {what}. "
                            f"Please reduce the length of the {what}.")

    def _inputs(self, body: dict) -> list[list[int]]:
        """Token ids of each input of a pooling/classify request (vLLM's accepted forms)."""
        if "messages" in body:
            return [self.render_ids(body["messages"], body.get("add_generation_prompt", False))]
        tok, _ = self.lm()
        inp = body["input"]
        if isinstance(inp, str):
            inp = [inp]
        if inp and isinstance(inp[0], int):
            inp = [inp]
        return [x if isinstance(x, list) else tok(x)["input_ids"] for x in inp]

    def _completions(self, body: dict) -> dict:
        import torch

        tok, model = self.lm()
        prompts = body["prompt"]
        if isinstance(prompts, str) or (prompts and isinstance(prompts[0], int)):
            prompts = [prompts]
        echo = bool(body.get("echo"))
        max_tokens = int(body.get("max_tokens", 16))
        n_logprobs = body.get("logprobs")
        n_prompt_logprobs = body.get("prompt_logprobs")
        if echo and n_prompt_logprobs is None and self.echo_fills_prompt_logprobs:
            n_prompt_logprobs = n_logprobs
        as_ids = bool(body.get("return_tokens_as_token_ids"))
        choices, n_prompt, n_completion = [], 0, 0
        for index, prompt in enumerate(prompts):
            ids = list(prompt) if isinstance(prompt, list) else tok(prompt)["input_ids"]
            self._check_length(len(ids) + max_tokens, "prompt and completion")
            # Greedy generation. Row t of logp scores token t+1, so the last generated token
            # needs no forward pass of its own.
            gen: list[int] = []
            all_ids = list(ids)
            logp = self._log_softmax(all_ids)
            steps = 0 if (echo and max_tokens == 0) else max_tokens
            for step in range(steps):
                nxt = int(torch.argmax(logp[-1]))
                gen.append(nxt)
                all_ids.append(nxt)
                if step < steps - 1:
                    logp = self._log_softmax(all_ids)
            seen = list(all_ids)
            if self.tamper_position is not None:
                pos = self.tamper_position % len(ids)
                seen[pos] = (seen[pos] + 1) % logp.shape[1]
            n_prompt += len(ids)
            n_completion += len(gen)
            choice = {"index": index, "finish_reason": "length", "stop_reason": None,
                      "text": tok.decode(all_ids if echo else gen)}
            if n_logprobs is not None:
                first = 0 if echo else len(ids)
                choice["logprobs"] = self._openai_logprobs(logp, seen, all_ids, first,
                                                           int(n_logprobs), as_ids)
            if n_prompt_logprobs is not None:
                choice["prompt_logprobs"] = [None] + [
                    self._entry(logp[t - 1], seen[t], int(n_prompt_logprobs))
                    for t in range(1, len(ids))]
            if body.get("return_token_ids"):
                choice["prompt_token_ids"] = seen[:len(ids)]
                choice["token_ids"] = gen
            choices.append(choice)
        return {"id": "cmpl-fake", "object": "text_completion", "created": int(time.time()),
                "model": self.model, "choices": choices,
                "usage": {"prompt_tokens": n_prompt, "completion_tokens": n_completion,
                          "total_tokens": n_prompt + n_completion}}

    def _token_str(self, token_id: int, as_ids: bool) -> str:
        tok, _ = self.lm()
        return f"token_id:{token_id}" if as_ids else tok.decode([token_id])

    def _entry(self, row, token_id: int, k: int) -> dict:
        """vLLM's per-position dict: the actual token plus the top-k, with ranks."""
        import torch

        tok, _ = self.lm()
        out = {}
        top = torch.topk(row, k).indices.tolist() if k > 0 else []
        for tid in [token_id] + [t for t in top if t != token_id]:
            lp = float(row[tid])
            out[str(tid)] = {"logprob": lp, "rank": int((row > row[tid]).sum()) + 1,
                             "decoded_token": tok.decode([tid])}
        return out

    def _openai_logprobs(self, logp, seen, true_ids, first, k, as_ids) -> dict:
        """OpenAI completions ``logprobs`` from position ``first`` on (0 = the echoed prompt)."""
        tokens, token_logprobs, top_logprobs, offsets = [], [], [], []
        offset = 0
        for t in range(first, len(seen)):
            s = self._token_str(seen[t], as_ids)
            tokens.append(s)
            offsets.append(offset)
            offset += len(s)
            if t == 0:
                token_logprobs.append(None)
                top_logprobs.append(None)
                continue
            row = logp[t - 1]
            token_logprobs.append(float(row[true_ids[t]]))
            entry = self._entry(row, true_ids[t], k)
            top_logprobs.append({self._token_str(int(tid), as_ids): v["logprob"]
                                 for tid, v in entry.items()})
        return {"tokens": tokens, "token_logprobs": token_logprobs,
                "top_logprobs": top_logprobs, "text_offset": offsets}


async def _client_left_within(receive, seconds: float) -> bool:
    """Sleep ``seconds`` unless the client disconnects first (then True)."""

    async def disconnect():
        while (await receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(disconnect())
    try:
        await asyncio.wait_for(asyncio.shield(watcher), timeout=seconds)
        return True
    except asyncio.TimeoutError:
        return False
    finally:
        watcher.cancel()


def _usage(inputs: list[list[int]]) -> dict:
    n = sum(len(ids) for ids in inputs)
    return {"prompt_tokens": n, "completion_tokens": 0, "total_tokens": n}


# --------------------------------------------------------------------------- server in a thread

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(app, *, startup_timeout_s: float = 30.0):
    """Serve ``app`` with uvicorn on a free loopback port in a daemon thread.

    Returns ``(root_url, stop)``; ``stop()`` shuts the server down and joins the thread.
    Keep-alive is long so a pooled client connection is never closed under a test's feet
    (that would show up as an unexplained transport error).
    """
    port = _free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                            access_log=False, timeout_keep_alive=120,
                            timeout_graceful_shutdown=1)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=f"fake-vllm-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + startup_timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"fake server on port {port} did not start")
        time.sleep(0.02)

    def stop() -> None:
        server.should_exit = True
        thread.join(timeout=10)

    return f"http://127.0.0.1:{port}", stop
