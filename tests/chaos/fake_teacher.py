"""A loopback teacher speaking the OpenAI chat protocol, as vLLM serves it (``/v1/models``,
``/v1/chat/completions``, ``/health``), with the faults the chaos tests need.

``answers`` maps a prompt to the text to answer (math prompts: a boxed number, right or wrong
on purpose); other prompts get ``"answer to: <prompt>"``. ``fail_rate`` answers that share of
chat requests with a 500 in vLLM's error shape (a seeded draw, so a run is reproducible);
``latency_s`` holds every answer that long, so a job is still running when a fault is injected;
``slow`` holds the answers to some prompts longer. ``asked`` counts the chat requests received per
prompt, so a test can tell exactly which requests a job sent.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections import Counter

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse


class FakeTeacher:
    def __init__(self, model: str, *, answers: dict[str, str] | None = None, latency_s: float = 0.0,
                 fail_rate: float = 0.0, seed: int = 0, slow: dict[str, float] | None = None):
        self.model = model
        self.answers = answers or {}
        self.latency_s = latency_s
        self.slow = slow or {}
        self.asked: Counter[str] = Counter()
        self.fail_rate = fail_rate
        self.outcomes: Counter[str] = Counter()
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self.app = self._build()

    def _build(self) -> FastAPI:
        api = FastAPI()

        @api.get("/health")
        def health():
            return {}

        @api.get("/v1/models")
        def models():
            return {"object": "list", "data": [{"id": self.model, "object": "model", "owned_by": "vllm",
                                                "max_model_len": 4096}]}

        @api.post("/v1/chat/completions")
        async def chat(request: Request):
            body = await request.json()
            prompt = [m for m in body["messages"] if m.get("role") == "user"][-1]["content"]
            with self._lock:
                self.asked[prompt] += 1
                fail = self._rng.random() < self.fail_rate
                self.outcomes["http_500" if fail else "ok"] += 1
            if fail:
                return JSONResponse({"object": "error", "message": "injected failure", "type": "InternalServerError",
                                     "param": None, "code": 500}, status_code=500)
            if self.latency_s or prompt in self.slow:
                await asyncio.sleep(self.slow.get(prompt, self.latency_s))
            text = self.answers.get(prompt, f"answer to: {prompt}")
            return {"id": "chatcmpl-fake", "object": "chat.completion", "model": self.model,
                    "created": int(time.time()),
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": text}}],
                    "usage": {"prompt_tokens": len(prompt.split()), "completion_tokens": len(text.split()),
                              "total_tokens": len(prompt.split()) + len(text.split())}}

        return api
