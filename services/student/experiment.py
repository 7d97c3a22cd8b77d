"""The paper's comparison in one run: one dataset per strategy, the same student trained on each, each graded.

From a parallel-responses file (every teacher's answer to every prompt, with quality):
a seeded sample of ``n_train`` prompts -> quality (file, math-verify or a reward model)
and the student's learnability of every answer -> the combined reward -> the PerSyn
router, trained on the first ``n_calibration`` of them and routing all -> each strategy's
dataset (:func:`services.method.strategies.select`) -> :func:`distill` with one config and
one seed -> :func:`evaluate` on the held-out set. Strong, CAR and Oracle see the same
prompts' statistics the router is fit on the calibration part of.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from services.core.cache import ScoreCache
from services.core.models import MINILM
from services.method.export import export_dataset
from services.method.formats import load_parallel, teachers_of
from services.method.rewards import check_alpha, combine
from services.method.strategies import STRATEGIES, StrategyInputs, available_matrix, dataset_rows, select
from services.reports.tables import allocation
from services.student.evaluation import (EvalResult, LocalGenerator, evaluate, load_eval_set, mcnemar_p,
                                         write_eval_outputs)
from services.student.training import DistillConfig, distill

#: What each strategy needs here; family_strong needs teacher families, which a parallel file lacks.
SUPPORTED = tuple(s for s in STRATEGIES if s != "family_strong")
BASELINE = "base"


@dataclass
class ExperimentConfig:
    parallel: Path
    eval_set: Path
    out_dir: Path
    strategies: list[str] = field(default_factory=lambda: ["persyn", "strong", "mix", "car", "oracle"])
    n_train: int = 128
    n_calibration: int | None = None  # None: half of the training prompts
    n_eval: int | None = None
    alpha: float = 0.4
    quality: str = "file"
    normalisation: str = "zscore"
    backbone: str = MINILM
    distill: DistillConfig = field(default_factory=DistillConfig)
    max_new_tokens: int = 256
    eval_batch_size: int = 16
    seed: int = 0
    keep_models: bool = False
    baseline: bool = True  # also grade the untrained student
    progress: bool = True

    def __post_init__(self):
        check_alpha(self.alpha)
        unknown = [s for s in self.strategies if s not in SUPPORTED]
        if unknown or not self.strategies:
            raise ValueError(f"strategies must be some of {', '.join(SUPPORTED)}; got {unknown or 'none'}")
        if len(set(self.strategies)) != len(self.strategies):
            raise ValueError("a strategy is listed twice")


def _log(msg: str) -> None:
    print(f"[experiment] {msg}", flush=True)


def _strategy_inputs(config: ExperimentConfig, records, teachers, cache: ScoreCache) -> tuple[StrategyInputs, dict]:
    """Rewards of every answer, and the PerSyn router's strengths, for the training prompts."""
    from services.scoring.matrices import learnability_matrix, quality_matrix, scas_cost_matrix

    student = config.distill.student
    needs_learn = config.alpha > 0 or "car" in config.strategies
    _log(f"scoring {len(records)} prompts x {len(teachers)} teachers (quality: {config.quality}"
         f"{', learnability: ' + student if needs_learn else ''})")
    quality = quality_matrix(records, teachers, config.quality, cache=cache)
    learn = learnability_matrix(records, teachers, student, cache=cache, progress=config.progress) \
        if needs_learn else None
    scores = combine(quality, learn, config.alpha, config.normalisation)
    strengths, router_info = None, {}
    if "persyn" in config.strategies:
        from services.routing.training import TrainConfig, train_router

        n_cal = config.n_calibration or max(2, len(records) // 2)
        n_cal = min(n_cal, len(records))
        _log(f"training the PerSyn router ({config.backbone}, frozen) on {n_cal} calibration prompts")
        router, metrics = train_router([r.prompt for r in records[:n_cal]], teachers, scores[:n_cal],
                                       TrainConfig(backbone=config.backbone, seed=config.seed), cache=cache)
        strengths = router.strengths([r.prompt for r in records])
        router_info = {"n_calibration": n_cal, "n_pairs": metrics["n_pairs"]}
    costs = scas_cost_matrix(records, teachers, student, cache=cache, progress=config.progress) \
        if "scas" in config.strategies else None
    inputs = StrategyInputs(teachers=teachers, available=available_matrix(records, teachers), quality=quality,
                            learnability=learn, scores=scores, strengths=strengths, scas_costs=costs,
                            seed=config.seed)
    return inputs, router_info


def _chosen_mean(matrix: np.ndarray | None, choice: np.ndarray) -> float | None:
    if matrix is None:
        return None
    served = choice >= 0
    values = matrix[np.arange(len(choice))[served], choice[served]]
    values = values[np.isfinite(values)]
    return round(float(values.mean()), 4) if len(values) else None


def _grade(config: ExperimentConfig, model_dir, items) -> EvalResult:
    generator = LocalGenerator(model_dir, batch_size=config.eval_batch_size, max_new_tokens=config.max_new_tokens)
    return evaluate(generator, items, progress=config.progress)


def format_experiment_table(runs: dict[str, dict], teachers: list[str]) -> str:
    """A Markdown table: accuracy with its 95% CI, McNemar p against PerSyn, and each dataset's make-up."""
    header = ["run", "accuracy", "95% CI", "p vs persyn", "rows", *[f"% {t}" for t in teachers],
              "mean quality", "mean NLL", "final loss"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, run in runs.items():
        ev, data = run["eval"], run.get("dataset", {})
        share = data.get("allocation", {})
        total = sum(share.values()) or 1
        cells = [name, f"{100 * ev['accuracy']:.1f}% ({ev['correct']}/{ev['n']})",
                 f"{100 * ev['ci95'][0]:.1f}-{100 * ev['ci95'][1]:.1f}",
                 "" if run.get("p_vs_persyn") is None else f"{run['p_vs_persyn']:.3f}",
                 str(data.get("rows", "")), *[f"{100 * share.get(t, 0) / total:.0f}" if share else "" for t in teachers],
                 "" if data.get("mean_quality") is None else f"{data['mean_quality']:.3f}",
                 "" if data.get("mean_nll") is None else f"{data['mean_nll']:.3f}",
                 "" if run.get("final_loss") is None else f"{run['final_loss']:.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_experiment(config: ExperimentConfig) -> dict:
    """Run the comparison; writes ``experiment.json``, ``experiment.md`` and ``accuracy.png`` under ``out_dir``."""
    from services.reports.plots import plot_accuracy_with_intervals

    started = time.time()
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    records = load_parallel(config.parallel)
    order = np.random.default_rng(config.seed).permutation(len(records))
    train = [records[i] for i in order[: config.n_train]]
    teachers = teachers_of(train)
    if len(teachers) < 2:
        raise ValueError(f"{config.parallel}: a comparison needs at least two teachers")
    items = load_eval_set(config.eval_set, limit=config.n_eval)
    inputs, router_info = _strategy_inputs(config, train, teachers, ScoreCache(out / "scores.sqlite"))

    runs: dict[str, dict] = {}
    correct: dict[str, list[bool]] = {}
    summary = {"parallel": str(config.parallel), "eval_set": str(config.eval_set), "n_train": len(train),
               "n_eval": len(items), "teachers": teachers, "alpha": config.alpha, "quality": config.quality,
               "router": router_info, "seed": config.seed,
               "distill": dict(vars(config.distill)) | {"learning_rate": config.distill.lr},
               "max_new_tokens": config.max_new_tokens, "runs": runs}

    def record(name: str, run: dict, result: EvalResult) -> None:
        """Keep the run and rewrite the report, so an interrupted comparison keeps what it finished."""
        runs[name], correct[name] = {"eval": result.summary(), **run}, result.correct
        write_eval_outputs(result, items, out / name / "eval.jsonl")
        _log(f"{name}: accuracy {result.accuracy:.3f} (95% CI {result.interval[0]:.3f}-{result.interval[1]:.3f})")
        if "persyn" in correct:
            for other, kept in runs.items():
                kept["p_vs_persyn"] = None if other == "persyn" else round(
                    mcnemar_p(correct["persyn"], correct[other]), 4)
        summary["seconds"] = round(time.time() - started, 1)
        (out / "experiment.json").write_text(json.dumps(summary, indent=1))
        (out / "experiment.md").write_text(format_experiment_table(runs, teachers) + "\n")

    for strategy in config.strategies:
        selection = select(strategy, inputs)
        rows = dataset_rows(train, teachers, selection)
        folder = out / strategy
        export_dataset(rows, folder, "jsonl", name=strategy)
        data = {"rows": len(rows), "allocation": allocation([r["teacher"] for r in rows], teachers),
                "mean_quality": _chosen_mean(inputs.quality, selection.choice),
                "mean_nll": None if inputs.learnability is None else _chosen_mean(-inputs.learnability,
                                                                                  selection.choice),
                **{k: v for k, v in selection.detail.items() if k in ("teacher", "excluded")}}
        _log(f"{strategy}: {len(rows)} rows {data['allocation']}; training the student")
        trained = distill(rows, folder / "student", config.distill, name=strategy)
        _log(f"{strategy}: grading on {len(items)} problems")
        result = _grade(config, trained.model_dir, items)
        if not config.keep_models:
            shutil.rmtree(trained.model_dir, ignore_errors=True)
            shutil.rmtree(folder / "student" / "checkpoints", ignore_errors=True)
        record(strategy, {"dataset": data, "steps": trained.steps,
                          "final_loss": trained.losses[-1][1] if trained.losses else None,
                          "train_seconds": trained.seconds}, result)
    if config.baseline:  # last: the comparison between strategies comes first when time is short
        _log(f"grading the untrained student on {len(items)} problems")
        record(BASELINE, {}, _grade(config, config.distill.student, items))

    print(format_experiment_table(runs, teachers), flush=True)
    plot = plot_accuracy_with_intervals(
        {n: (r["eval"]["accuracy"], *r["eval"]["ci95"]) for n, r in runs.items()}, out / "accuracy.png",
        title=f"{config.distill.student} trained on {len(train)} prompts, graded on {len(items)} "
              f"({Path(config.eval_set).name}); 95% Wilson CI")
    summary.update(plot=str(plot), seconds=round(time.time() - started, 1))
    (out / "experiment.json").write_text(json.dumps(summary, indent=1))
    _log(f"done in {summary['seconds']:.0f} s: {out / 'experiment.md'}, {plot}")
    return summary
