"""The student on lm-evaluation-harness tasks (IFEval, GSM8K, ...), an optional extra (``.[lmeval]``).

A thin call of ``lm_eval.simple_evaluate``: model ``hf`` on a local HF directory (a ``distill`` output,
a packaged name) or ``local-completions`` / ``local-chat-completions`` on an OpenAI-compatible
server (vLLM). The harness is imported only here and only when called, so everything else runs
without it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

#: What to install for this module (pyproject's ``lmeval`` extra).
INSTALL_HINT = "pip install -e '.[lmeval]' (lm-eval 0.4.13 with its hf, api and ifeval extras)"


class HarnessNotInstalled(RuntimeError):
    """lm-evaluation-harness is not installed."""


def import_harness():
    try:
        import lm_eval
    except ImportError as exc:
        raise HarnessNotInstalled(f"lm-evaluation-harness is not installed: {INSTALL_HINT}") from exc
    return lm_eval


def is_endpoint(model: str) -> bool:
    return model.startswith(("http://", "https://"))


def harness_model(model: str, *, served_model: str | None = None, chat: bool = False, workers: int = 8,
                  dtype: str = "auto") -> tuple[str, dict]:
    """(lm_eval model type, model_args) for a local model or an OpenAI-compatible ``.../v1`` URL.

    An endpoint is asked for generations only (``tokenizer_backend`` none): IFEval and GSM8K are
    generation tasks, so no tokenizer has to be downloaded for the served model."""
    if is_endpoint(model):
        from services.student.evaluation import served_model_name

        name = served_model_name(model, served_model)
        path = "chat/completions" if chat else "completions"
        return ("local-chat-completions" if chat else "local-completions",
                {"base_url": f"{model.rstrip('/')}/{path}", "model": name, "num_concurrent": workers,
                 "tokenizer_backend": None, "tokenized_requests": False})
    from services.core.models import resolve_model

    return "hf", {"pretrained": str(resolve_model(model)), "dtype": dtype}


def evaluate_harness(model: str, tasks: Sequence[str], *, served_model: str | None = None, chat: bool = False,
                     limit: float | None = None, num_fewshot: int | None = None, batch_size: int | str = 1,
                     device: str | None = None, workers: int = 8, gen_kwargs: dict | None = None,
                     include_path: str | Path | None = None, seed: int = 0) -> dict:
    """Run ``tasks`` on ``model``; returns the harness's results (per-sample logs left out).

    ``chat``: prompts go through the chat template (the tokenizer's locally, the server's on an
    endpoint), as instruction-tuned students are evaluated. ``limit`` (items per task, or a share
    when < 1) is for smoke runs only. ``include_path``: a folder of extra task YAMLs.
    """
    lm_eval = import_harness()
    from lm_eval.tasks import TaskManager

    kind, args = harness_model(model, served_model=served_model, chat=chat, workers=workers)
    results = lm_eval.simple_evaluate(
        model=kind, model_args=args, tasks=list(tasks), num_fewshot=num_fewshot, batch_size=batch_size,
        device=device, limit=limit, apply_chat_template=chat, fewshot_as_multiturn=chat and bool(num_fewshot),
        gen_kwargs=gen_kwargs, log_samples=False, random_seed=seed, numpy_random_seed=seed,
        torch_random_seed=seed, fewshot_random_seed=seed,
        task_manager=TaskManager(include_path=str(include_path) if include_path else None))
    if results is None:  # a non-zero rank of a distributed run
        return {}
    results.pop("samples", None)
    return results


def scores(results: dict) -> dict[str, dict[str, float]]:
    """``{task: {metric,filter: value}}``: the numbers of ``results['results']``, stderrs left out."""
    return {task: {k: v for k, v in metrics.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool) and "_stderr" not in k}
            for task, metrics in results.get("results", {}).items()}


def write_results(results: dict, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1, default=str))
    return path
