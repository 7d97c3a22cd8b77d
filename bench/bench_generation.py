"""Generation throughput of the worker pool (``generate_many``) against the local llama.cpp server.

One DemoPool (SmolLM2-135M, ``--slots`` parallel slots) serves everything. Every request asks
for exactly ``--max-tokens`` tokens (``ignore_eos``), so tokens/s compare like with like. The
server's single-stream rate (one request at a time) is measured in the same run, before and
after the pool levels (the machine is shared and noisy; their mean is the baseline), and each
level is reported as a ratio to it.

    .venv/bin/python bench/bench_generation.py [--threads 2]   # ~1.5-2 min on 2 CPU cores
"""

from __future__ import annotations

import argparse
import dataclasses
import time

from services.clients.openai_compat import OpenAICompatClient
from services.demo.pool import DemoPool
from services.demo.problems import make_problems
from services.synthesis.teachers import build_messages, generate_many


def single_stream(client: OpenAICompatClient, teacher, prompts: list[str]) -> dict:
    """One request at a time: wall-clock completion tokens/s, and llama.cpp's own decode rate."""
    tokens, decode_rates = 0, []
    t0 = time.perf_counter()
    for prompt in prompts:
        body = {"model": teacher.model, "messages": build_messages(teacher, prompt),
                **teacher.sampling, "seed": 0}
        data = client.post_json("/v1/chat/completions", body)
        tokens += int(data["usage"]["completion_tokens"])
        timings = data.get("timings") or {}
        if timings.get("predicted_per_second"):
            decode_rates.append(float(timings["predicted_per_second"]))
    wall = time.perf_counter() - t0
    return {"tokens": tokens, "wall_s": wall, "tok_s": tokens / wall,
            "decode_tok_s": sum(decode_rates) / len(decode_rates) if decode_rates else float("nan")}


def pool_level(teacher, problems: list[dict], workers: int) -> dict:
    jobs = [(teacher, p["id"], p["prompt"], None) for p in problems]
    t0 = time.perf_counter()
    out = generate_many(jobs, max_workers=workers, progress=False)
    wall = time.perf_counter() - t0
    tokens = sum(a.completion_tokens for a in out.values())
    return {"workers": workers, "jobs": len(out), "tokens": tokens, "wall_s": wall,
            "tok_s": tokens / wall}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--slots", type=int, default=16, help="llama.cpp parallel slots")
    ap.add_argument("--threads", type=int, default=None, help="llama.cpp threads (DemoPool default)")
    ap.add_argument("--levels", type=int, nargs="+", default=[1, 4, 16])
    args = ap.parse_args(argv)

    problems = make_problems(args.prompts, seed=0)
    with DemoPool(n_parallel=args.slots, n_ctx=512 * args.slots, n_threads=args.threads) as pool:
        careful = pool.teachers[0]
        teacher = dataclasses.replace(careful, sampling={**careful.sampling, "max_tokens": args.max_tokens,
                                                         "ignore_eos": True})
        print(f"llama.cpp demo server: SmolLM2-135M Q4_1, {args.slots} slots, "
              f"{pool.n_threads} thread(s); {args.prompts} prompts x {args.max_tokens} tokens")
        with OpenAICompatClient(pool.base_url, pool.model) as client:
            client.check_health()
            single = [p["prompt"] for p in problems]  # the pool levels' very prompts
            single_stream(client, teacher, single[:2])  # warm-up
            before = single_stream(client, teacher, single)
            levels = [pool_level(teacher, problems, w) for w in args.levels]
            after = single_stream(client, teacher, single)
    base = (before["tok_s"] + after["tok_s"]) / 2
    print(f"\nsingle stream (one request at a time): {before['tok_s']:.1f} tok/s before, "
          f"{after['tok_s']:.1f} after, baseline {base:.1f}; llama.cpp's own decode rate "
          f"{before['decode_tok_s']:.1f} / {after['decode_tok_s']:.1f} tok/s")
    print("\n| workers | jobs | completion tokens | wall s | tokens/s | / single stream |")
    print("| --- | --- | --- | --- | --- | --- |")
    for lv in levels:
        print(f"| {lv['workers']} | {lv['jobs']} | {lv['tokens']} | {lv['wall_s']:.1f} | "
              f"{lv['tok_s']:.1f} | {lv['tok_s'] / base:.2f}x |")


if __name__ == "__main__":
    main()
