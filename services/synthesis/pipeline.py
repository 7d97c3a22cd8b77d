"""The offline Route-then-Generate pipeline, end to end (SPEC steps 1-10).

calibration sample -> parallel answers from every teacher -> rewards -> pairs ->
router -> route the other prompts -> each teacher answers only its prompts ->
dataset (+ allocation table and plot, generation counts).

Calibration prompts keep their best parallel answer by the ground-truth reward, so
the generation count is exactly N + N_cal * (n - 1).
"""

from __future__ import annotations

import json
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from services.core.cache import ScoreCache
from services.core.models import SMOLLM2
from services.method.costs import generation_counts
from services.method.export import FORMATS, export_dataset
from services.method.formats import ParallelRecord, load_prompts, load_teacher_pool, write_jsonl
from services.method.pairs import make_pairs
from services.method.rewards import check_alpha, combine, nan_argmax
from services.reports.plots import plot_allocation
from services.reports.tables import allocation, format_allocation
from services.routing.training import TrainConfig, train_router
from services.scoring.matrices import QUALITY_MATH_VERIFY, learnability_matrix, quality_matrix


@dataclass
class PipelineConfig:
    out_dir: Path
    n_prompts: int = 30
    n_calibration: int = 12
    prompts_file: Path | None = None  # JSONL with id, prompt, reference; default: built-in problems
    pool_file: Path | None = None  # teacher pool YAML; default: the local demo pool
    student: str = SMOLLM2
    alpha: float = 0.4
    normalisation: str = "zscore"
    backbone: str = "all-minilm-l6-v2"
    router_mode: str = "frozen"  # or "finetune": the backbone trains with the head (the paper's router)
    max_tokens: int | None = None  # the job's answer limit for every teacher; None: each teacher's own
    workers: int = 4
    seed: int = 0
    progress: bool = True


def _log(msg: str) -> None:
    print(f"[persyn] {msg}", flush=True)


def _load_prompts(config: PipelineConfig) -> list[dict]:
    if config.prompts_file:
        rows = load_prompts(config.prompts_file)
        missing = [r["id"] for r in rows if r.get("reference") is None]
        if missing:
            raise ValueError(f"{config.prompts_file}: every prompt needs a 'reference' (missing for {missing[0]!r})")
        return rows[: config.n_prompts] if config.n_prompts else rows
    from services.demo.problems import make_problems

    return make_problems(config.n_prompts, seed=config.seed)


def run_pipeline(config: PipelineConfig) -> dict:
    """Run the whole offline job; returns the summary also written to ``summary.json``."""
    from services.synthesis.teachers import check_teachers, generate_many, usage_by_teacher

    check_alpha(config.alpha)
    if config.n_calibration < 2:
        raise ValueError("need at least 2 calibration prompts")
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    prompts = _load_prompts(config)
    n_cal = min(config.n_calibration, len(prompts))
    order = np.random.default_rng(config.seed).permutation(len(prompts))
    cal_idx, rest_idx = sorted(order[:n_cal].tolist()), sorted(order[n_cal:].tolist())
    cache = ScoreCache(out / "scores.sqlite")

    with ExitStack() as stack:
        if config.pool_file:
            teachers = load_teacher_pool(config.pool_file)
            pool_label = str(config.pool_file)
        else:
            from services.demo.pool import DemoPool

            _log("starting the DEMO teacher pool (3 x SmolLM2-135M differing by system prompt and decoding)")
            pool = stack.enter_context(DemoPool())
            teachers = pool.teachers
            pool_label = "demo pool (not real teachers)"
        names = [t.name for t in teachers]
        by_name = {t.name: t for t in teachers}
        check_teachers(teachers)

        _log(f"calibration: {n_cal} prompts x {len(teachers)} teachers (parallel answers)")
        cal_answers = generate_many(
            [(t, prompts[i]["id"], prompts[i]["prompt"], prompts[i]["reference"]) for i in cal_idx for t in teachers],
            max_workers=config.workers, progress=config.progress, seed=config.seed, max_tokens=config.max_tokens)
        records = [
            ParallelRecord(id=prompts[i]["id"], prompt=prompts[i]["prompt"], reference=str(prompts[i]["reference"]),
                           responses={t: cal_answers[(prompts[i]["id"], t)].text for t in names})
            for i in cal_idx
        ]
        _log("scoring calibration answers (quality: math-verify; learnability: student log-probs)")
        quality = quality_matrix(records, names, QUALITY_MATH_VERIFY, cache=cache)
        learnability = (learnability_matrix(records, names, config.student, cache=cache, progress=config.progress)
                        if config.alpha > 0 else None)
        scores = combine(quality, learnability, config.alpha, config.normalisation)
        for rec, q in zip(records, quality):
            rec.quality = {t: float(v) for t, v in zip(names, q)}
        write_jsonl([r.to_json() for r in records], out / "calibration_parallel.jsonl")

        _log(f"training the router ({config.backbone}, {config.router_mode}) on {len(make_pairs(scores))} pairs")
        router, metrics = train_router(
            [r.prompt for r in records], names, scores,
            TrainConfig(backbone=config.backbone, mode=config.router_mode, seed=config.seed), cache=cache,
            extra_config={"student": config.student, "alpha": config.alpha,
                          "normalisation": config.normalisation, "quality": QUALITY_MATH_VERIFY})
        router.save(out / "router", metrics=metrics)

        rest = [prompts[i] for i in rest_idx]
        routed = router.route([p["prompt"] for p in rest], top_k=len(names)) if rest else []
        _log(f"routing {len(rest)} prompts, then each teacher answers only its own")
        answers = generate_many(
            [(by_name[r.teacher], p["id"], p["prompt"], p["reference"]) for p, r in zip(rest, routed)],
            max_workers=config.workers, progress=config.progress, seed=config.seed + 1,
            max_tokens=config.max_tokens)

    best = nan_argmax(scores)
    rows = []
    for rec, b in zip(records, best):
        teacher = names[b]
        ans = cal_answers[(rec.id, teacher)]
        rows.append({"id": rec.id, "prompt": rec.prompt, "response": ans.text, "teacher": teacher,
                     "source": "calibration", "verified": ans.verified})
    for p, r in zip(rest, routed):
        ans = answers[(p["id"], r.teacher)]
        rows.append({"id": p["id"], "prompt": p["prompt"], "response": ans.text, "teacher": r.teacher,
                     "source": "routed", "verified": ans.verified})
    order_of = {p["id"]: k for k, p in enumerate(prompts)}
    rows.sort(key=lambda row: order_of[row["id"]])

    files = {fmt: str(export_dataset(rows, out / "dataset", fmt)) for fmt in FORMATS}
    counts = allocation([r["teacher"] for r in rows], names)
    plot = plot_allocation(counts, out / "allocation.png", title=f"Teacher allocation ({pool_label})")
    usage = usage_by_teacher((by_name[t], a) for (_, t), a in [*cal_answers.items(), *answers.items()])
    summary = {
        "pool": pool_label, "teachers": names, "n_prompts": len(prompts), "n_calibration": n_cal,
        "alpha": config.alpha, "allocation": counts,
        "verified_share": float(np.mean([r["verified"] for r in rows])),
        "generations": generation_counts(len(prompts), len(names), n_cal),
        "samples_drawn": sum(u["requests"] for u in usage.values()), "usage": usage, "router_metrics": metrics,
        "dataset": files, "allocation_plot": str(plot), "router": str(out / "router"),
        "seconds": round(time.time() - started, 1),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    _log("teacher allocation:\n" + format_allocation(counts))
    gens = summary["generations"]
    _log(f"generations: Route-then-Generate {gens['route_then_generate']} vs "
         f"Generate-then-Select {gens['generate_then_select']} (answers, before math resampling)")
    _log("teacher usage: " + ", ".join(f"{t}: {u['requests']} requests, {u['completion_tokens']} tokens, "
                                       f"${u['cost']:.6f}" for t, u in usage.items()))
    _log(f"dataset written to {files['jsonl']} (also {files['sharegpt']}, {files['alpaca']}); plot {plot}")
    return summary
