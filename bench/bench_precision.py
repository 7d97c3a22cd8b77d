"""Reduced precision (bf16) against fp32, in one run: scorer speed, score error, teacher rankings.

    python bench/bench_precision.py [--prompts 24] [--slices 4] [--reduced bf16] [--max-length 1024]
    python bench/bench_precision.py --rankings-from 8 --prompts 16   # more prompts for the ranking check

Scores every teacher answer of the first ``--prompts`` prompts of ``../shared/data/arena_parallel.jsonl``
(real arena answers, prompt + response capped at ``--max-length`` tokens as in
``bench/fixtures/arena_learnability.json``) with the SmolLM2-135M learnability scorer in fp32 and in
``--reduced`` precision. The prompts are cut into ``--slices`` slices and each slice is scored by
both scorers back to back, the order alternating (ABAB), so a shared machine's noise hits both alike.
Prints tokens/s of each (wall clock, and per CPU-second of this process, which a machine shared
with other work disturbs less) and their ratio (target >= 1.5x), the largest per-item difference of the
score, which is a mean in nats per token (target <= 0.02), and how often the top teacher of a
prompt stays the same: by learnability alone and by the paper's ground truth (alpha 0.4 with the
file's judge scores, z-scored per prompt) (target: the same argmax for >= 95% of prompts). Then the
router encoder (all-MiniLM-L6-v2, mean pool): prompts/s fp32 vs reduced, same ABAB, and the
largest feature difference.
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

from services.method.formats import load_parallel, teachers_of  # noqa: E402
from services.method.rewards import combine  # noqa: E402
from services.routing.model import PromptEncoder  # noqa: E402
from services.scoring.learnability import LearnabilityScorer  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "arena_parallel.jsonl"
FIXTURE = ROOT / "bench" / "fixtures" / "arena_learnability.json"
ALPHA = 0.4


def timed(fn):
    """(wall seconds, CPU seconds of this process's threads, result)."""
    start, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - start, time.process_time() - cpu, out


def alternate(variants: dict, slices: list, run, label: str) -> dict[str, dict]:
    """Run every variant on every slice, alternating which goes first; per variant the summed
    wall and CPU seconds, the results in slice order and the per-slice wall seconds."""
    names = list(variants)
    out = {n: {"seconds": 0.0, "cpu": 0.0, "results": [], "slice_seconds": []} for n in names}
    for k, part in enumerate(slices):
        for name in (names if k % 2 == 0 else names[::-1]):
            seconds, cpu, result = timed(lambda: run(variants[name], part))
            out[name]["seconds"] += seconds
            out[name]["cpu"] += cpu
            out[name]["slice_seconds"].append(seconds)
            out[name]["results"].append(result)
        print(f"  {label} slice {k + 1}/{len(slices)}: "
              + "  ".join(f"{n} {out[n]['slice_seconds'][-1]:.1f}s" for n in names), flush=True)
    return out


def argmax_agreement(a: np.ndarray, b: np.ndarray) -> tuple[float, list[int]]:
    """Fraction of rows whose argmax (NaN ignored) is the same in ``a`` and ``b``, and the rows that differ."""
    rows = [i for i in range(len(a)) if np.isfinite(a[i]).any()]
    differ = [i for i in rows if np.nanargmax(a[i]) != np.nanargmax(b[i])]
    return 1 - len(differ) / len(rows), differ


def bench_scorer(args, records, teachers) -> None:
    scorers = {p: LearnabilityScorer(args.student, max_length=args.max_length, device=args.device, precision=p)
               for p in ("fp32", args.reduced)}
    cells = [(i, j) for i, r in enumerate(records) for j, t in enumerate(teachers)
             if t in r.responses and r.responses[t].strip()]
    ref = scorers["fp32"]
    tokens = {c: sum(map(len, ref.encode_item(records[c[0]].prompt, records[c[0]].responses[teachers[c[1]]])))
              for c in cells}
    answer_tokens = {c: len(ref.encode_item(records[c[0]].prompt, records[c[0]].responses[teachers[c[1]]])[1])
                     for c in cells}
    per_slice = -(-len(records) // args.slices)
    slices = [[c for c in cells if k * per_slice <= c[0] < (k + 1) * per_slice] for k in range(args.slices)]
    slices = [s for s in slices if s]
    n_tok = sum(tokens.values())
    print(f"scorer: {len(records)} prompts, {len(cells)} answers, {n_tok} tokens (prompt + answer, "
          f"answers {min(answer_tokens.values())}-{max(answer_tokens.values())} tokens), max_length "
          f"{args.max_length}, {len(slices)} slices, device {ref.device}, {torch.get_num_threads()} threads",
          flush=True)
    for scorer in scorers.values():  # warm-up
        scorer.score([(records[0].prompt, "A short warm-up answer.")])

    def run(scorer, part):
        return scorer.score([(records[i].prompt, records[i].responses[teachers[j]]) for i, j in part])

    out = alternate(scorers, slices, run, "scorer")
    values = {p: np.full((len(records), len(teachers)), np.nan) for p in scorers}
    for p in scorers:
        for part, result in zip(slices, out[p]["results"]):
            for (i, j), v in zip(part, result):
                values[p][i, j] = v
    speed = {p: n_tok / out[p]["seconds"] for p in scorers}
    cpu_speed = {p: n_tok / out[p]["cpu"] for p in scorers}
    slice_ratios = [a / b for a, b in zip(out["fp32"]["slice_seconds"], out[args.reduced]["slice_seconds"])]
    diff = np.array([abs(values[args.reduced][c] - values["fp32"][c]) for c in cells])
    short = np.array([answer_tokens[c] < 32 for c in cells])
    worst = cells[int(np.argmax(diff))]
    learn_agree, learn_differ = argmax_agreement(values["fp32"], values[args.reduced])
    quality = np.array([[np.nan if r.quality is None or r.quality.get(t) is None or t not in r.responses
                         else r.quality[t] for t in teachers] for r in records])
    truth = {p: combine(quality, values[p], ALPHA, "zscore") for p in scorers}
    truth_agree, truth_differ = argmax_agreement(truth["fp32"], truth[args.reduced])

    print(f"\n| scorer | tokens/s (wall) | tokens per CPU-second |\n| --- | --- | --- |")
    for p in scorers:
        print(f"| {p} | {speed[p]:.0f} | {cpu_speed[p]:.0f} |")
    print(f"\ntokens/s {args.reduced} / fp32 = {speed[args.reduced] / speed['fp32']:.2f}x wall (target >= 1.5x), "
          f"per slice {min(slice_ratios):.2f}-{max(slice_ratios):.2f}x; "
          f"{cpu_speed[args.reduced] / cpu_speed['fp32']:.2f}x per CPU-second")
    print(f"max |score {args.reduced} - fp32| = {diff.max():.4f} nats/token (target <= 0.02), at an answer of "
          f"{answer_tokens[worst]} tokens; mean {diff.mean():.4f}, p99 {np.percentile(diff, 99):.4f}; "
          f"answers < 32 tokens: {short.sum()}, their max {diff[short].max() if short.any() else float('nan'):.4f}; "
          f"answers over 0.02: {(diff > 0.02).sum()} of {len(diff)}")
    print(f"same top teacher by learnability: {learn_agree:.1%} of {len(records)} prompts (target >= 95%)")
    print(f"same top teacher by ground truth (alpha {ALPHA}, judge scores z-scored): {truth_agree:.1%}")
    for name, differ, matrix in (("learnability", learn_differ, values["fp32"]),
                                 ("truth", truth_differ, truth["fp32"])):
        for i in differ:
            top2 = np.sort(matrix[i][np.isfinite(matrix[i])])[-2:]
            print(f"  {name} argmax differs on prompt {records[i].id}: fp32 top-2 gap {top2[1] - top2[0]:.4f}")
    if FIXTURE.exists():
        fixture = json.loads(FIXTURE.read_text())
        if fixture.get("max_length") == args.max_length and fixture.get("student") == args.student:
            gap = max(abs(values["fp32"][i, j] - fixture["scores"][records[i].id][teachers[j]]) for i, j in cells)
            print(f"fp32 here vs the stored fp32 fixture: max diff {gap:.2e} (sanity check)")


def rankings_against_fixture(args, records, teachers) -> None:
    """More prompts for the ranking check, cheaply: only the reduced scorer runs, against the fp32
    scores stored in the fixture (the timed run checks that fresh fp32 matches them)."""
    fixture = json.loads(FIXTURE.read_text())
    if fixture.get("max_length") != args.max_length or fixture.get("student") != args.student:
        raise SystemExit(f"{FIXTURE} was made with other settings")
    scorer = LearnabilityScorer(args.student, max_length=args.max_length, device=args.device, precision=args.reduced)
    cells = [(i, j) for i, r in enumerate(records) for j, t in enumerate(teachers)
             if t in r.responses and r.responses[t].strip()]
    stored = np.full((len(records), len(teachers)), np.nan)
    reduced = stored.copy()
    for i, j in cells:
        stored[i, j] = fixture["scores"][records[i].id][teachers[j]]
    print(f"rankings: {len(records)} prompts, {len(cells)} answers, {args.reduced} against the stored fp32 fixture",
          flush=True)
    for k in range(0, len(records), 4):
        part = [c for c in cells if k <= c[0] < k + 4]
        for (i, j), v in zip(part, scorer.score([(records[i].prompt, records[i].responses[teachers[j]])
                                                 for i, j in part])):
            reduced[i, j] = v
        done = min(k + 4, len(records))
        agree_so_far, _ = argmax_agreement(stored[:done], reduced[:done])
        worst = np.nanmax(np.abs(reduced[:done] - stored[:done]))
        print(f"  prompts 1-{done} scored: same top teacher {agree_so_far:.1%}, max |diff| {worst:.4f}", flush=True)
    diff = np.abs(reduced - stored)[np.isfinite(stored)]
    agree, differ = argmax_agreement(stored, reduced)
    quality = np.array([[np.nan if r.quality is None or r.quality.get(t) is None or t not in r.responses
                         else r.quality[t] for t in teachers] for r in records])
    truth_agree, _ = argmax_agreement(combine(quality, stored, ALPHA, "zscore"),
                                      combine(quality, reduced, ALPHA, "zscore"))
    print(f"max |score {args.reduced} - fp32| = {diff.max():.4f}, mean {diff.mean():.4f}, over 0.02: "
          f"{(diff > 0.02).sum()} of {len(diff)}")
    print(f"same top teacher by learnability: {agree:.1%} of {len(records)} prompts; by ground truth "
          f"(alpha {ALPHA}): {truth_agree:.1%}")
    for i in differ:
        top2 = np.sort(stored[i][np.isfinite(stored[i])])[-2:]
        print(f"  argmax differs on prompt {records[i].id}: fp32 top-2 gap {top2[1] - top2[0]:.4f}")


def bench_encoder(args, prompts: list[str]) -> None:
    encoders = {p: PromptEncoder("all-minilm-l6-v2", device=args.device, precision=p).eval()
                for p in ("fp32", args.reduced)}
    for encoder in encoders.values():
        encoder.encode(prompts[:8])
    per = -(-len(prompts) // args.slices)
    slices = [prompts[k * per:(k + 1) * per] for k in range(args.slices)]
    print(f"\nrouter encoder: {len(prompts)} arena prompts, batched (length chunks), {len(slices)} slices", flush=True)
    out = alternate(encoders, slices, lambda enc, part: enc.encode(part), "encoder")
    feats = {p: np.concatenate(out[p]["results"]) for p in encoders}
    speed = {p: len(prompts) / out[p]["seconds"] for p in encoders}
    cpu_speed = {p: len(prompts) / out[p]["cpu"] for p in encoders}
    cos = np.sum(feats["fp32"] * feats[args.reduced], 1) / (
        np.linalg.norm(feats["fp32"], axis=1) * np.linalg.norm(feats[args.reduced], axis=1))
    print(f"| encoder | prompts/s (wall) | prompts per CPU-second |\n| --- | --- | --- |")
    for p in encoders:
        print(f"| {p} | {speed[p]:.1f} | {cpu_speed[p]:.1f} |")
    print(f"prompts/s {args.reduced} / fp32 = {speed[args.reduced] / speed['fp32']:.2f}x wall, "
          f"{cpu_speed[args.reduced] / cpu_speed['fp32']:.2f}x per CPU-second; max |feature diff| "
          f"{np.abs(feats[args.reduced] - feats['fp32']).max():.4f}, min cosine {cos.min():.6f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=24, help="arena prompts (all their answers are scored)")
    parser.add_argument("--slices", type=int, default=4, help="ABAB alternations")
    parser.add_argument("--reduced", choices=("bf16", "fp16"), default="bf16")
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--student", default="smollm2-135m-instruct")
    parser.add_argument("--device", default=None)
    parser.add_argument("--skip-scorer", action="store_true")
    parser.add_argument("--encoder-prompts", type=int, default=300)
    parser.add_argument("--rankings-from", type=int, default=None, metavar="START",
                        help="only the ranking check, on prompts START..START+--prompts, reduced precision "
                             "against the stored fp32 fixture (no timing, no fp32 run)")
    args = parser.parse_args()

    torch.set_num_threads(os.cpu_count() or 1)
    records = load_parallel(DATA)
    if args.rankings_from is not None:
        rankings_against_fixture(args, records[args.rankings_from: args.rankings_from + args.prompts],
                                 teachers_of(records))
        return
    if not args.skip_scorer:
        bench_scorer(args, records[: args.prompts], teachers_of(records))
    if args.encoder_prompts:
        bench_encoder(args, [r.prompt for r in records][: args.encoder_prompts])


if __name__ == "__main__":
    main()
