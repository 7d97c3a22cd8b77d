"""``distill``, ``eval-student`` and ``experiment``: train the student, grade it, compare strategies."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from services.cli.common import alpha_arg, existing_path, positive_int
from services.core.models import SMOLLM2


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _distill_config(args):
    from services.student.training import DistillConfig

    return DistillConfig(student=args.student, epochs=args.epochs, max_steps=args.max_steps or -1,
                         learning_rate=args.lr, batch_size=args.batch_size, grad_accum=args.grad_accum,
                         max_length=args.max_length, lora=args.lora, lora_rank=args.lora_rank,
                         save_steps=args.save_steps, seed=args.seed, use_cpu=True if args.cpu else None)


def cmd_distill(args) -> None:
    from services.student.training import distill, load_sft_rows

    rows = load_sft_rows(args.dataset)
    result = distill(rows, args.out, _distill_config(args), name=args.dataset.stem)
    print(json.dumps(result.summary() | {"final_loss": result.losses[-1][1] if result.losses else None}))


def _generator(args):
    from services.student.evaluation import EndpointGenerator, LocalGenerator

    if args.model.startswith(("http://", "https://")):
        return EndpointGenerator(args.model, args.served_model, max_tokens=args.max_new_tokens,
                                 workers=args.workers)
    return LocalGenerator(args.model, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens)


def cmd_eval_student(args) -> None:
    from services.student.evaluation import evaluate, load_eval_set, write_eval_outputs

    items = load_eval_set(args.set, limit=args.limit)
    result = evaluate(_generator(args), items, progress=True)
    if args.out:
        write_eval_outputs(result, items, args.out)
    print(json.dumps(result.summary()))


def _batch_size(text: str) -> int | str:
    if text == "auto" or text.startswith("auto:"):
        return text
    return positive_int(text)


def _tasks(text: str) -> list[str]:
    tasks = [t.strip() for t in text.split(",") if t.strip()]
    if not tasks:
        raise argparse.ArgumentTypeError("name at least one task, e.g. ifeval,gsm8k")
    return tasks


def cmd_eval_harness(args) -> None:
    from services.student.harness import evaluate_harness, scores, write_results

    results = evaluate_harness(
        args.model, args.tasks, served_model=args.served_model, chat=args.chat, limit=args.limit,
        num_fewshot=args.num_fewshot, batch_size=args.batch_size, device=args.device, workers=args.workers,
        gen_kwargs={"max_gen_toks": args.max_new_tokens} if args.max_new_tokens else None,
        include_path=args.include_path, seed=args.seed)
    if args.out:
        write_results(results, args.out)
    print(json.dumps({"model": args.model, "tasks": args.tasks, "scores": scores(results)}))


def cmd_experiment(args) -> None:
    from services.student.experiment import ExperimentConfig, run_experiment

    run_experiment(ExperimentConfig(
        parallel=args.parallel, eval_set=args.eval_set, out_dir=args.out,
        strategies=[s.strip() for s in args.strategies.split(",") if s.strip()],
        n_train=args.train_rows, n_calibration=args.calibration, n_eval=args.eval_rows, alpha=args.alpha,
        quality=args.quality, backbone=args.backbone, distill=_distill_config(args),
        max_new_tokens=args.max_new_tokens, eval_batch_size=args.eval_batch_size, seed=args.seed,
        keep_models=args.keep_models, baseline=not args.no_baseline))


def _training_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--student", default=SMOLLM2, help="student model: HF directory or smollm2-135m-instruct")
    p.add_argument("--epochs", type=_positive_float, default=1.0)
    p.add_argument("--max-steps", type=positive_int, default=None, help="stop after this many steps")
    p.add_argument("--lr", type=_positive_float, default=None, help="learning rate (default 2e-5 full, 2e-4 LoRA)")
    p.add_argument("--batch-size", type=positive_int, default=4)
    p.add_argument("--grad-accum", type=positive_int, default=1)
    p.add_argument("--max-length", type=positive_int, default=1024, help="prompt + response tokens")
    p.add_argument("--lora", action="store_true", help="train LoRA adapters (PEFT) instead of every weight")
    p.add_argument("--lora-rank", type=positive_int, default=16)
    p.add_argument("--save-steps", type=int, default=0, help="a checkpoint every N steps (0: none)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cpu", action="store_true", help="train on the CPU even when a GPU is there")


def register(sub) -> None:
    p = sub.add_parser("distill", help="fine-tune the student on a dataset (TRL SFT, response tokens only)")
    p.add_argument("--dataset", type=existing_path, required=True, help="dataset JSONL with prompt and response")
    p.add_argument("--out", type=Path, required=True)
    _training_args(p)
    p.set_defaults(func=cmd_distill)

    p = sub.add_parser("eval-student", help="accuracy of a student on a math set (math-verify, with a 95%% CI)")
    p.add_argument("--model", required=True, help="HF model directory, packaged name, or an OpenAI-compatible URL")
    p.add_argument("--served-model", default=None, help="the endpoint's model name (default: the one it serves)")
    p.add_argument("--set", type=existing_path, required=True,
                   help="JSONL with prompt|question|problem and reference|answer")
    p.add_argument("--limit", type=positive_int, default=None, help="only the first N problems")
    p.add_argument("--max-new-tokens", type=positive_int, default=512)
    p.add_argument("--batch-size", type=positive_int, default=16, help="local generation batch")
    p.add_argument("--workers", type=positive_int, default=8, help="parallel requests to an endpoint")
    p.add_argument("--out", type=Path, default=None, help="write each answer and its grade to this JSONL")
    p.set_defaults(func=cmd_eval_student)

    p = sub.add_parser("eval-harness", help="a student on lm-evaluation-harness tasks (IFEval, GSM8K, ...); "
                                            "needs the lmeval extra")
    p.add_argument("--model", required=True, help="HF model directory, packaged name, or an OpenAI-compatible URL "
                                                  "(http://host:8000/v1)")
    p.add_argument("--tasks", type=_tasks, required=True, help="comma-separated harness tasks, e.g. ifeval,gsm8k")
    p.add_argument("--served-model", default=None, help="the endpoint's model name (default: the one it serves)")
    p.add_argument("--chat", action="store_true", help="prompts through the chat template (instruction-tuned "
                                                       "students; the endpoint's /chat/completions)")
    p.add_argument("--num-fewshot", type=int, default=None, help="few-shot examples (default: each task's own)")
    p.add_argument("--limit", type=_positive_float, default=None,
                   help="items per task (a share when < 1): smoke runs only, not comparable scores")
    p.add_argument("--batch-size", type=_batch_size, default=1, help="local batch size, or auto")
    p.add_argument("--device", default=None, help="local device, e.g. cuda:0 (default: the harness's choice)")
    p.add_argument("--workers", type=positive_int, default=8, help="parallel requests to an endpoint")
    p.add_argument("--max-new-tokens", type=positive_int, default=None,
                   help="cap on generated tokens (default: each task's own)")
    p.add_argument("--include-path", type=existing_path, default=None, help="a folder of extra task YAMLs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="write the harness's results JSON here")
    p.set_defaults(func=cmd_eval_harness)

    p = sub.add_parser("experiment", help="build a dataset per strategy, train the same student on each, "
                                          "evaluate each (the paper's comparison)")
    p.add_argument("--parallel", type=existing_path, required=True, help="parallel-responses JSONL with quality")
    p.add_argument("--eval-set", type=existing_path, required=True, help="held-out math set (see eval-student)")
    p.add_argument("--strategies", default="persyn,strong,mix,car,oracle")
    p.add_argument("--out", type=Path, default=Path("runs/experiment"))
    p.add_argument("--train-rows", type=positive_int, default=128, help="prompts of the parallel file used")
    p.add_argument("--calibration", type=positive_int, default=None,
                   help="of those, prompts the PerSyn router is trained on (default: half)")
    p.add_argument("--eval-rows", type=positive_int, default=None, help="first N problems of the eval set")
    p.add_argument("--alpha", type=alpha_arg, default=0.4)
    p.add_argument("--quality", default="file", help="'file', 'math-verify' or a reward-model directory")
    p.add_argument("--backbone", default="all-minilm-l6-v2", help="router backbone (frozen)")
    p.add_argument("--max-new-tokens", type=positive_int, default=256)
    p.add_argument("--eval-batch-size", type=positive_int, default=16)
    p.add_argument("--keep-models", action="store_true", help="keep every trained student (default: delete)")
    p.add_argument("--no-baseline", action="store_true", help="skip evaluating the untrained student")
    _training_args(p)
    p.set_defaults(func=cmd_experiment)
