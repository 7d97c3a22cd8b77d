"""Student training as a service job (``distill``): the dataset of a finished synthesis job, TRL SFT
(:func:`services.student.training.distill`), the model and its artifacts under the data dir."""

from __future__ import annotations

import json
import math

from services.jobs import runtime as rt
from services.jobs.celery_app import app
from services.jobs.distill import (
    DISTILL_ITEM,
    DISTILL_STAGE,
    DISTILL_TASK,
    record_progress,
    record_result,
    student_dir,
)
from services.jobs.leases import TRANSIENT_REDIS_ERRORS
from services.method.formats import write_jsonl
from services.student.training import DistillConfig, last_checkpoint, portable_llamafactory_config
from services.student.training import distill as train_student


class DistillFailed(RuntimeError):
    """Training failed; the message names no path of this server."""


def job_progress(job_id: str):
    """A ``TrainerCallback`` writing steps done and the latest loss onto the job record, and stopping
    training once the job is cancelled (transformers is imported only when a training starts, not by
    every worker that loads the Celery app).

    Progress is a view: a Redis error here skips one update, never the training."""
    from transformers import TrainerCallback

    class JobProgress(TrainerCallback):
        def __init__(self):
            self.loss: float | None = None

        def _record(self, state) -> None:
            try:
                record_progress(rt.store(), job_id, steps_done=int(state.global_step),
                                steps_total=int(state.max_steps), loss=self.loss)
            except TRANSIENT_REDIS_ERRORS:
                pass

        def on_train_begin(self, args, state, control, **kwargs):
            self._record(state)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                self.loss = float(logs["loss"])

        def on_step_end(self, args, state, control, **kwargs):
            self._record(state)
            try:
                if not rt.store().is_active(job_id):
                    control.should_training_stop = True
            except TRANSIENT_REDIS_ERRORS:
                pass

    return JobProgress()


def distill_config(spec: dict, device: str | None) -> DistillConfig:
    """The training a distill job asked for, on the worker's device (``PERSYN_DEVICE=cpu``: the CPU)."""
    return DistillConfig(student=spec["student_model"], epochs=spec.get("epochs", 1.0),
                         max_steps=spec.get("max_steps") or -1, learning_rate=spec.get("learning_rate"),
                         batch_size=spec.get("batch_size", 4), grad_accum=spec.get("grad_accum", 1),
                         max_length=spec.get("max_length", 1024), lora=spec.get("lora", False),
                         lora_rank=spec.get("lora_rank", 16), save_steps=spec.get("save_steps", 0),
                         seed=spec.get("seed", 0), progress=False, use_cpu=True if device == "cpu" else None)


def _trainable(rows: list[dict]) -> list[dict]:
    return [r for r in rows if isinstance(r.get("prompt"), str) and r["prompt"].strip()
            and isinstance(r.get("response"), str) and r["response"].strip()]


@app.task(name=DISTILL_TASK)
def distill(job_id: str) -> str:
    return rt.run_item(job_id, DISTILL_STAGE, DISTILL_ITEM, lambda: _distill(job_id))


def _distill(job_id: str) -> str:
    """Train unless a finished run is on disk (a redelivery after the model was saved), then publish it.

    A redelivery after the worker died mid-run resumes from the run's last checkpoint, if it saved any."""
    store, settings = rt.store(), rt.settings()
    if not store.is_active(job_id):
        return "skipped: job ended"
    job = store.job_record(job_id)
    spec = job["spec"]
    out = student_dir(settings, job_id)
    summary_file = out / "distill.json"
    if not job.get("distill_model"):
        if not summary_file.exists():
            rows = _trainable(list(store.iter_rows(spec["dataset_job_id"])))
            if not rows:
                raise DistillFailed(f"dataset job {spec['dataset_job_id']!r} has no rows with a prompt and a "
                                    "response left (its dataset may have expired)")
            write_jsonl(rows, out / "dataset.jsonl")
            checkpoint = last_checkpoint(out)
            if checkpoint is not None:  # an earlier delivery died mid-run
                store.update_job(job_id, distill_resumed_from=int(checkpoint.name.split("-")[-1]))
            try:
                result = train_student(rows, out, distill_config(spec, settings.device),
                                       name=f"job-{spec['dataset_job_id']}", callbacks=[job_progress(job_id)],
                                       resume=True)
            except TRANSIENT_REDIS_ERRORS:
                raise
            except Exception as exc:  # noqa: BLE001 - the job ends with the reason, in words of no server path
                raise DistillFailed(f"{type(exc).__name__}: {exc}".replace(str(settings.data_dir), "<data dir>")
                                    ) from exc
            if not store.is_active(job_id):
                return "stopped: job ended during training"
            if result.llamafactory_config is not None:
                portable_llamafactory_config(result.llamafactory_config, spec["student_model"])
        summary = json.loads(summary_file.read_text())
        losses = summary.get("losses") or []
        if losses and not math.isfinite(losses[-1][1]):
            raise DistillFailed(f"training diverged: the final loss is {losses[-1][1]}")
        record_result(store, settings, job_id, summary)
    rt.finish_item(job_id, DISTILL_STAGE, DISTILL_ITEM)
    return "done"
