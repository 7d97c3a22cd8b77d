"""Throughput of the learnability scorer: batched vs one-at-a-time vs the raw model ceiling.

    python bench/bench_learnability.py [--examples 48] [--max-batch-tokens 4096] [--repeats 2]

All modes score the same deterministic (prompt, response) set and count real (non-pad) tokens.
Rows: (1) the batched, length-sorted scorer; (2) the same scorer with one example per batch;
(3) the ceiling, the base model alone (no LM head) on exactly the batches of (1); and, for
reference, (0) the naive way: a full ``model(...)`` forward per example with full-vocab logits.
Each mode runs ``--repeats`` times and the best time is kept. Figures are printed, not stored.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from services.scoring.learnability import LearnabilityScorer, pack_batches  # noqa: E402

GSM8K = ROOT.parent / "shared" / "data" / "gsm8k_test.jsonl"


def build_items(n: int) -> list[tuple[str, str]]:
    """n examples of varied length: GSM8K question, 1-4 joined answers cut at 20-300 chars."""
    if GSM8K.exists():
        rows = [json.loads(line) for line in GSM8K.read_text().splitlines()[: n + 4]]
        questions = [r["question"] for r in rows]
        answers = [r["answer"] for r in rows]
    else:
        words = "the a student teacher learns from every answer that fits its own style".split()
        questions = [" ".join(words[(i + k) % len(words)] for k in range(12)) + "?" for i in range(n + 4)]
        answers = [" ".join(words[(i * k) % len(words)] for k in range(80)) + "." for i in range(n + 4)]
    items = []
    for i in range(n):
        response = "\n".join(answers[i : i + 1 + i % 4])
        cap = 20 + (i * 37) % 280  # deterministic spread of response lengths
        items.append((questions[i], response[:cap]))
    return items


def best_time(fn, repeats: int):
    """(best wall time over ``repeats`` runs, the last run's result); the first run warms up."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=48)
    parser.add_argument("--max-batch-tokens", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default=None)
    args = parser.parse_args()

    torch.set_num_threads(os.cpu_count() or 1)
    scorer = LearnabilityScorer(max_batch_tokens=args.max_batch_tokens, device=args.device)
    items = build_items(args.examples)
    encoded = [scorer.encode_item(p, r, index=i) for i, (p, r) in enumerate(items)]
    lengths = [len(p) + len(r) for p, r in encoded]
    n_tokens = sum(lengths)
    batches = pack_batches(lengths, args.max_batch_tokens)
    padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    sync = torch.cuda.synchronize if scorer.device.type == "cuda" else (lambda: None)

    def batched():
        out = scorer.score(items)
        sync()
        return out

    def one_at_a_time():
        scorer.max_batch_tokens = 1
        try:
            out = scorer.score(items)
            sync()
        finally:
            scorer.max_batch_tokens = args.max_batch_tokens
        return out

    tensors = []
    for b in batches:
        ids = torch.full((len(b), max(lengths[i] for i in b)), scorer._pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, i in enumerate(b):
            seq = encoded[i][0] + encoded[i][1]
            ids[row, : len(seq)] = torch.tensor(seq)
            mask[row, : len(seq)] = 1
        tensors.append((ids.to(scorer.device), mask.to(scorer.device)))

    @torch.inference_mode()
    def ceiling():
        for ids, mask in tensors:
            scorer.model.model(input_ids=ids, attention_mask=mask)
        sync()

    @torch.inference_mode()
    def naive():
        for prompt_ids, response_ids in encoded:
            ids = torch.tensor([prompt_ids + response_ids], device=scorer.device)
            logprobs = torch.log_softmax(scorer.model(input_ids=ids).logits[0].float(), dim=-1)
            start = len(prompt_ids)
            targets = torch.tensor(response_ids, device=scorer.device)
            logprobs[start - 1 : -1].gather(1, targets[:, None]).mean().item()
        sync()

    timings = {}
    timings["batched scorer"], scores_batched = best_time(batched, args.repeats)
    timings["one-at-a-time scorer"], scores_single = best_time(one_at_a_time, args.repeats)
    timings["ceiling (base model only)"], _ = best_time(ceiling, args.repeats)
    timings["naive (full logits, 1 by 1)"], _ = best_time(naive, args.repeats)
    max_diff = float(np.max(np.abs(scores_batched - scores_single)))

    print(
        f"device={scorer.device} threads={torch.get_num_threads()} examples={len(items)} "
        f"tokens={n_tokens} (lengths {min(lengths)}-{max(lengths)}) "
        f"max_batch_tokens={args.max_batch_tokens} batches={len(batches)} "
        f"padding={padded / n_tokens - 1:.1%} repeats={args.repeats} (best kept)"
    )
    print(f"{'mode':<30}{'seconds':>10}{'tokens/s':>12}")
    for name, seconds in timings.items():
        print(f"{name:<30}{seconds:>10.2f}{n_tokens / seconds:>12.0f}")
    t = timings
    print(f"batched / one-at-a-time : {t['one-at-a-time scorer'] / t['batched scorer']:.2f}x")
    print(f"batched / naive         : {t['naive (full logits, 1 by 1)'] / t['batched scorer']:.2f}x")
    print(f"batched / ceiling       : {t['ceiling (base model only)'] / t['batched scorer']:.2f}")
    print(f"max |batched - one-at-a-time| score diff: {max_diff:.2e}")


if __name__ == "__main__":
    main()
