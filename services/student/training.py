"""Supervised fine-tuning of a student on a PerSyn dataset, with TRL's ``SFTTrainer``.

Every row ``{prompt, response}`` becomes a conversational prompt-completion example, so
TRL renders it under the student's own chat template and puts the loss on the response
tokens only (``completion_only_loss``). LoRA through PEFT is optional; the saved model is
always a plain HF directory (LoRA merged in) that ``eval-student``, vLLM and llama.cpp's
converters load as they are. Next to it goes a ready LLaMA-Factory config for the same
data and settings, for users who train there.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

from services.core.models import SMOLLM2, resolve_model
from services.method.export import export_dataset
from services.method.formats import FormatError, iter_jsonl

#: The learning rate when none is given: full fine-tuning moves every weight, LoRA only its adapters.
DEFAULT_LR = {"full": 2e-5, "lora": 2e-4}


@dataclass
class DistillConfig:
    student: str = SMOLLM2
    epochs: float = 1.0
    max_steps: int = -1  # > 0: stop after this many optimiser steps, whatever the epochs
    learning_rate: float | None = None  # None: DEFAULT_LR for the mode
    batch_size: int = 4
    grad_accum: int = 1
    max_length: int = 1024  # prompt + response tokens; longer examples are cut at the end
    warmup_ratio: float = 0.03
    lora: bool = False
    lora_rank: int = 16
    lora_alpha: int = 32
    save_steps: int = 0  # > 0: a checkpoint every this many steps (the last two are kept)
    seed: int = 0
    progress: bool = True
    use_cpu: bool | None = None  # None: the GPU when there is one

    def __post_init__(self):
        if self.batch_size < 1 or self.grad_accum < 1 or self.max_length < 8:
            raise ValueError("batch size and gradient accumulation must be >= 1, max length >= 8")
        if self.epochs <= 0 and self.max_steps <= 0:
            raise ValueError("train for some epochs or some steps")
        if self.learning_rate is not None and self.learning_rate <= 0:
            raise ValueError("learning rate must be > 0")

    @property
    def mode(self) -> str:
        return "lora" if self.lora else "full"

    @property
    def lr(self) -> float:
        return self.learning_rate or DEFAULT_LR[self.mode]


@dataclass
class DistillResult:
    model_dir: Path
    n_rows: int
    steps: int
    losses: list[tuple[int, float]] = field(default_factory=list)  # (step, training loss)
    seconds: float = 0.0
    loss_plot: Path | None = None
    llamafactory_config: Path | None = None

    def summary(self) -> dict:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}


def load_sft_rows(path: str | Path) -> list[dict]:
    """A dataset JSONL (``persyn select`` / job output): rows with non-empty ``prompt`` and ``response``."""
    rows = []
    for lineno, obj in iter_jsonl(path):
        for key in ("prompt", "response"):
            if not isinstance(obj.get(key), str) or not obj[key].strip():
                raise FormatError(f"{path}:{lineno}: '{key}' must be a non-empty string")
        rows.append(obj)
    if not rows:
        raise FormatError(f"{path}: no rows")
    return rows


def to_prompt_completion(row: dict) -> dict:
    """TRL's conversational prompt-completion form: the loss falls on the completion only."""
    return {"prompt": [{"role": "user", "content": row["prompt"]}],
            "completion": [{"role": "assistant", "content": row["response"]}]}


def write_llamafactory_config(rows: Sequence[dict], out_dir: str | Path, student_dir: str | Path,
                              config: DistillConfig, name: str = "persyn") -> Path:
    """The dataset as LLaMA-Factory sharegpt (+ ``dataset_info.json``) and a ``train_<name>.yaml`` beside it.

    ``template`` is left out on purpose: LLaMA-Factory then parses the student tokenizer's
    own chat template, the one ``persyn distill`` trains under. LLaMA-Factory trains on
    response tokens only by default (``train_on_prompt: false``).
    """
    import yaml

    out_dir = Path(out_dir).resolve()
    data_file = export_dataset(rows, out_dir, "sharegpt", name=name)
    settings = {
        "model_name_or_path": str(Path(student_dir).resolve()),
        "stage": "sft", "do_train": True, "finetuning_type": config.mode,
        **({"lora_rank": config.lora_rank, "lora_alpha": config.lora_alpha, "lora_target": "all"}
           if config.lora else {}),
        "dataset": data_file.stem, "dataset_dir": str(out_dir), "cutoff_len": config.max_length,
        "train_on_prompt": False,
        "output_dir": str(out_dir / f"saves-{name}"), "logging_steps": 1, "plot_loss": True,
        **({"save_steps": config.save_steps} if config.save_steps > 0 else {}),
        "overwrite_output_dir": True, "report_to": "none",
        "per_device_train_batch_size": config.batch_size, "gradient_accumulation_steps": config.grad_accum,
        "learning_rate": config.lr, "num_train_epochs": float(config.epochs),
        **({"max_steps": config.max_steps} if config.max_steps > 0 else {}),
        "lr_scheduler_type": "cosine", "warmup_ratio": config.warmup_ratio, "seed": config.seed,
    }
    path = out_dir / f"train_{name}.yaml"
    path.write_text("# LLaMA-Factory SFT config written by `persyn distill`: llamafactory-cli train "
                    f"{path.name}\n" + yaml.safe_dump(settings, sort_keys=False))
    return path


def portable_llamafactory_config(path: str | Path, model_name: str) -> Path:
    """Rewrite a config of :func:`write_llamafactory_config` for use elsewhere: the student by name,
    the dataset and the output beside the config (run from its folder), no path of this machine."""
    import yaml

    path = Path(path)
    header, _, body = path.read_text().partition("\n")
    settings = yaml.safe_load(body)
    settings.update(model_name_or_path=model_name, dataset_dir=".", output_dir=f"saves-{settings['dataset']}")
    path.write_text(header + "\n" + yaml.safe_dump(settings, sort_keys=False))
    return path


def build_trainer(rows: Sequence[dict], out_dir: str | Path, config: DistillConfig, callbacks: Sequence = ()):
    """TRL's ``SFTTrainer`` for ``rows`` with the student loaded in fp32 (bf16 autocast on a GPU);
    ``callbacks``: transformers ``TrainerCallback``s (the service's progress counters)."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed
    from trl import SFTConfig, SFTTrainer

    if not rows:
        raise ValueError("no rows to train on")
    student_dir = resolve_model(config.student)
    set_seed(config.seed)  # LoRA's initial adapters and the data order
    use_cpu = (not torch.cuda.is_available()) if config.use_cpu is None else config.use_cpu
    tokenizer = AutoTokenizer.from_pretrained(student_dir)
    model = AutoModelForCausalLM.from_pretrained(student_dir, dtype=torch.float32)  # fp32 master weights
    peft_config = None
    if config.lora:
        from peft import LoraConfig

        peft_config = LoraConfig(r=config.lora_rank, lora_alpha=config.lora_alpha, lora_dropout=0.0,
                                 target_modules="all-linear", task_type="CAUSAL_LM")
    args = SFTConfig(
        output_dir=str(Path(out_dir) / "checkpoints"), num_train_epochs=config.epochs, max_steps=config.max_steps,
        per_device_train_batch_size=config.batch_size, gradient_accumulation_steps=config.grad_accum,
        learning_rate=config.lr, lr_scheduler_type="cosine", warmup_steps=config.warmup_ratio,  # < 1: a ratio
        max_length=config.max_length, completion_only_loss=True, logging_steps=1,
        save_strategy="steps" if config.save_steps > 0 else "no", save_steps=max(config.save_steps, 1),
        save_total_limit=2, seed=config.seed, data_seed=config.seed, report_to="none",
        disable_tqdm=not config.progress, use_cpu=use_cpu, bf16=not use_cpu and torch.cuda.is_bf16_supported(),
        dataloader_num_workers=0,
        gradient_checkpointing=False)  # TRL turns it on by default; a small student needs no memory saving
    return SFTTrainer(model=model, args=args, processing_class=tokenizer, peft_config=peft_config,
                      callbacks=list(callbacks) or None,
                      train_dataset=Dataset.from_list([to_prompt_completion(r) for r in rows]))


def last_checkpoint(out_dir: str | Path) -> Path | None:
    """The newest whole checkpoint a run in ``out_dir`` saved (``save_steps``), or None. The Trainer
    writes ``trainer_state.json`` last, so a checkpoint without it was cut off (its worker died)."""
    found = [p for p in (Path(out_dir) / "checkpoints").glob("checkpoint-*")
             if p.name.split("-")[-1].isdigit() and (p / "trainer_state.json").exists()]
    return max(found, key=lambda p: int(p.name.split("-")[-1])) if found else None


def distill(rows: Sequence[dict], out_dir: str | Path, config: DistillConfig | None = None,
            *, name: str = "persyn", callbacks: Sequence = (), resume: bool = False) -> DistillResult:
    """Fine-tune ``config.student`` on ``rows``; the model lands in ``out_dir/model``.

    ``resume``: continue from the last checkpoint of an earlier run in ``out_dir`` when there is one
    (a service job whose worker died). Also writes ``training_loss.png``, ``distill.json`` (settings,
    losses, time; written last, so its presence says the run finished) and ``llamafactory/`` (the same
    run as a LLaMA-Factory config).
    """
    from services.reports.plots import plot_training_loss

    config = config or DistillConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    trainer = build_trainer(rows, out, config, callbacks)
    lf_config = write_llamafactory_config(rows, out / "llamafactory", resolve_model(config.student), config, name)
    checkpoint = last_checkpoint(out) if resume else None
    trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    trained = trainer.model
    if config.lora:
        trained.save_pretrained(out / "adapter")
        trained = trained.merge_and_unload()
    model_dir = out / "model"
    trained.save_pretrained(model_dir)
    trainer.processing_class.save_pretrained(model_dir)
    losses = [(int(e["step"]), float(e["loss"])) for e in trainer.state.log_history if "loss" in e]
    result = DistillResult(model_dir=model_dir, n_rows=len(rows), steps=int(trainer.state.global_step),
                           losses=losses, seconds=round(time.time() - started, 1),
                           llamafactory_config=lf_config)
    if losses:
        result.loss_plot = plot_training_loss(losses, out / "training_loss.png",
                                              title=f"SFT of {config.student} on {name} ({len(rows)} rows)")
    (out / "distill.json").write_text(json.dumps(
        {"config": asdict(config) | {"learning_rate": config.lr}, **result.summary()}, indent=1))
    return result
