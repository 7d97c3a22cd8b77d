"""An OpenAI/vLLM-compatible server that answers at once, so a benchmark measures only PerSyn.

    python bench/instant_openai.py --port 8100 --models t01,t02,... --student instant-student --reward instant-rm

It speaks the routes and response shapes PerSyn uses of a vLLM server (the same ones
``tests/fake_vllm.py`` reproduces from vLLM's source): ``GET /v1/models`` (with
``max_model_len``), ``GET /health``, ``POST /v1/chat/completions`` (``n`` choices, usage),
``POST /v1/completions`` with token-id prompts and ``prompt_logprobs`` (the student's
log-probs), ``POST /tokenize`` and ``POST /classify`` / ``/pooling`` (a reward model: sigmoid
unless ``use_activation: false``, as vLLM). An unknown model is vLLM's 404. THE NUMBERS ARE
STAND-INS, cheap and deterministic: each teacher has a fixed reward bias plus per-prompt noise,
and each token a hash-derived log-prob. Nothing here is a model; it only costs no time.

Tokens are UTF-8 bytes (``/tokenize``); a client that tokenises itself (the learnability scorer
with the student's tokenizer) sends its own ids and gets a log-prob for each.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import math
import time

MAX_MODEL_LEN = 8192


def _unit(*parts) -> float:
    """A deterministic number in [0, 1) from the parts."""
    digest = hashlib.blake2b("\x00".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2 ** 64


class InstantServer:
    """The ASGI app: ``teachers`` answer chat, ``student`` serves log-probs, ``reward`` rewards."""

    def __init__(self, teachers: list[str], student: str, reward: str):
        self.teachers = teachers
        self.student = student
        self.reward = reward
        self.models = [*teachers, student, reward]
        self.requests = 0
        self.chats: dict[str, int] = dict.fromkeys(teachers, 0)  # chat requests per teacher (GET /stats)

    async def __call__(self, scope, receive, send):
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        self.requests += 1
        status, payload = self.handle(scope["method"], scope["path"], body)
        data = b"" if payload is None else json.dumps(payload).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": data})

    def handle(self, method: str, path: str, body: bytes) -> tuple[int, dict | None]:
        if method == "GET" and path == "/health":
            return 200, None
        if method == "GET" and path == "/stats":  # the benchmark's own: what the teachers were asked
            return 200, {"chat_requests": self.chats}
        if method == "GET" and path == "/v1/models":
            return 200, {"object": "list", "data": [
                {"id": m, "object": "model", "owned_by": "instant", "max_model_len": MAX_MODEL_LEN}
                for m in self.models]}
        routes = {"/v1/chat/completions": self.chat, "/v1/completions": self.completions,
                  "/tokenize": self.tokenize, "/classify": self.classify, "/pooling": self.pooling}
        if method != "POST" or path not in routes:
            return 404, {"error": {"message": f"no route {method} {path}", "type": "NotFoundError", "code": 404}}
        request = json.loads(body)
        if request.get("model") not in self.models:
            return 404, {"error": {"message": f"The model `{request.get('model')}` does not exist.",
                                   "type": "NotFoundError", "param": "model", "code": 404}}
        return 200, routes[path](request)

    def chat(self, req: dict) -> dict:
        model, question = req["model"], req["messages"][-1]["content"]
        if model in self.chats:
            self.chats[model] += 1
        words = 20 + int(40 * _unit(model, question))
        text = f"{model} answers: " + " ".join(["lorem"] * words)
        n = int(req.get("n") or 1)
        choices = [{"index": i, "message": {"role": "assistant", "content": text}, "finish_reason": "stop",
                    "logprobs": None} for i in range(n)]
        return {"id": "chatcmpl-instant", "object": "chat.completion", "created": int(time.time()), "model": model,
                "choices": choices, "usage": {"prompt_tokens": len(question) // 4, "completion_tokens": words * n,
                                              "total_tokens": len(question) // 4 + words * n}}

    def completions(self, req: dict) -> dict:
        prompts = req["prompt"]
        if prompts and isinstance(prompts[0], int):
            prompts = [prompts]
        choices = []
        for index, ids in enumerate(prompts):
            seed = _unit(*ids[-8:])
            entries = [None] + [{str(t): {"logprob": -0.2 - 3.0 * ((seed + 0.618 * k) % 1.0), "rank": 1,
                                          "decoded_token": ""}} for k, t in enumerate(ids[1:])]
            choices.append({"index": index, "text": "", "finish_reason": "length", "stop_reason": None,
                            "logprobs": None, "prompt_logprobs": entries})
        n_prompt = sum(len(p) for p in prompts)
        return {"id": "cmpl-instant", "object": "text_completion", "created": int(time.time()),
                "model": req["model"], "choices": choices,
                "usage": {"prompt_tokens": n_prompt, "completion_tokens": len(prompts),
                          "total_tokens": n_prompt + len(prompts)}}

    def tokenize(self, req: dict) -> dict:
        text = ("\n".join(m["content"] for m in req["messages"]) if "messages" in req else req["prompt"])
        ids = list(text.encode("utf-8"))[:MAX_MODEL_LEN]
        return {"count": len(ids), "max_model_len": MAX_MODEL_LEN, "tokens": ids, "token_strs": None}

    def _reward(self, ids: list[int]) -> float:
        text = bytes(i % 256 for i in ids).decode("utf-8", "replace")
        teacher = next((t for t in self.teachers if f"{t} answers:" in text), "")
        bias = 2.0 * _unit("bias", teacher) - 1.0
        return bias + 0.5 * (2.0 * _unit(text) - 1.0)

    def classify(self, req: dict) -> dict:
        raw = req.get("use_activation") is False
        data = []
        for i, ids in enumerate(req["input"]):
            r = self._reward(ids)
            data.append({"index": i, "label": "LABEL_0", "probs": [r if raw else 1 / (1 + math.exp(-r))],
                         "num_classes": 1})
        return {"id": "classify-instant", "object": "list", "created": int(time.time()), "model": req["model"],
                "data": data, "usage": {"prompt_tokens": sum(map(len, req["input"])), "total_tokens": 0}}

    def pooling(self, req: dict) -> dict:
        raw = req.get("use_activation") is False
        data = []
        for i, ids in enumerate(req["input"]):
            r = self._reward(ids)
            data.append({"index": i, "object": "pooling", "data": [r if raw else 1 / (1 + math.exp(-r))]})
        return {"id": "pool-instant", "object": "list", "created": int(time.time()), "model": req["model"],
                "data": data, "usage": {"prompt_tokens": sum(map(len, req["input"])), "total_tokens": 0}}


def main() -> None:
    import uvicorn

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--models", required=True, help="comma-separated teacher model names")
    ap.add_argument("--student", default="instant-student")
    ap.add_argument("--reward", default="instant-rm")
    args = ap.parse_args()
    app = InstantServer(args.models.split(","), args.student, args.reward)
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level="warning", access_log=False,
                            backlog=4096, limit_concurrency=None)
    asyncio.run(uvicorn.Server(config).serve())


if __name__ == "__main__":
    main()
