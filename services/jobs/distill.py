"""Distill jobs: fine-tune a student on the dataset of a finished synthesis job of the same tenant.

The whole training is one item (stage ``distill``, item ``model``) on the training queue, so it
runs under the lease and watchdog every job item has: a killed worker's training is requeued
(resumed from its last checkpoint when the job saves some) and the job ends ``succeeded`` or
``failed`` with the reason through :func:`services.jobs.stages.conclude`. The worker
(``training_worker/distill.py``) writes the step counters and the result onto the job record;
artifacts live under ``PERSYN_DATA_DIR/students/<job id>``, and responses name them relative to it.
"""

from __future__ import annotations

import math
from pathlib import Path

from services.core.settings import DEFAULT_TENANT, Settings
from services.jobs.store import JobStore

DISTILL_KIND = "distill"
DISTILL_TASK = "persyn.training.distill"
DISTILL_STAGE, DISTILL_ITEM = "distill", "model"
#: Job kinds whose dataset a distill job can train on.
DATASET_KINDS = ("synthesize", "persyn")
#: States of a dataset job whose rows are final.
DATASET_STATES = ("succeeded", "partial")
#: What ``GET /v1/jobs/{id}/artifacts/{name}`` serves: name -> file or folder in the job's directory
#: (a folder comes as an uncompressed tar).
ARTIFACTS = {"training_loss.png": "training_loss.png", "llamafactory.tar": "llamafactory", "model.tar": "model"}


class DatasetNotReady(LookupError):
    """The dataset job exists but has no final dataset to train on (409)."""


def student_dir(settings: Settings, job_id: str) -> Path:
    """Where a distill job's model, loss plot and LLaMA-Factory config are written."""
    return settings.data_dir / "students" / job_id


def relative_name(settings: Settings, path: Path) -> str:
    """``path`` as responses show it: relative to the data dir, never the server's absolute path."""
    return Path(path).relative_to(settings.data_dir).as_posix()


def submit_distill_job(store: JobStore, settings: Settings, spec: dict, *, owner: str = DEFAULT_TENANT) -> str:
    """Check the dataset job, create the distill job and queue its training.

    The caller has checked the tenant may use ``spec['dataset_job_id']``. Raises NotFound for an
    unknown dataset job and DatasetNotReady for one without a final dataset; nothing is created then.
    """
    from services.jobs.stages import advance

    source_id = spec["dataset_job_id"]
    source = store.job_record(source_id)
    if source["kind"] not in DATASET_KINDS:
        raise DatasetNotReady(f"job {source_id!r} is a {source['kind']} job, which builds no dataset; "
                              f"distill from a {' or '.join(DATASET_KINDS)} job")
    if source["state"] not in DATASET_STATES:
        raise DatasetNotReady(f"job {source_id!r} is {source['state']}: distill from a job that "
                              f"{' or '.join(DATASET_STATES)}")
    rows = store.row_count(source_id)
    if rows == 0:
        raise DatasetNotReady(f"job {source_id!r} has no dataset rows (they may have expired)")
    student_id = source["spec"]["student_id"]
    model = spec.get("student_model") or store.get_student(student_id)["model"]
    job_id = store.create_job(DISTILL_KIND, {**spec, "student_id": student_id, "student_model": model,
                                             "dataset_rows": rows}, [], owner=owner)
    advance(store, job_id, None, settings)
    return job_id


def advance_distill(store: JobStore, settings: Settings, job_id: str, completed: str | None) -> None:
    """A distill job's one stage, then its end."""
    from services.jobs.stages import _start, conclude

    if completed is None:
        store.set_state(job_id, "running")
        _start(store, settings, job_id, DISTILL_STAGE, [(DISTILL_ITEM, DISTILL_TASK, [job_id], "training")])
    elif completed == DISTILL_STAGE:
        conclude(store, job_id, settings=settings)


def record_progress(store: JobStore, job_id: str, *, steps_done: int, steps_total: int,
                    loss: float | None = None) -> None:
    fields = {"distill_steps_done": steps_done, "distill_steps_total": steps_total}
    if loss is not None and math.isfinite(loss):
        fields["distill_loss"] = loss
    store.update_job(job_id, **fields)


def record_result(store: JobStore, settings: Settings, job_id: str, summary: dict) -> None:
    """The trained model is published: the job says where, with its final loss (``summary``: the
    run's ``distill.json``)."""
    losses = summary.get("losses") or []
    final = losses[-1][1] if losses else None
    store.update_job(job_id, distill_model=relative_name(settings, student_dir(settings, job_id) / "model"),
                     distill_steps_done=summary["steps"], distill_seconds=summary.get("seconds", 0.0),
                     distill_rows=summary["n_rows"],
                     **({"distill_final_loss": final} if final is not None and math.isfinite(final) else {}))


def distill_progress(job: dict) -> dict:
    """The ``training`` part of ``GET /v1/jobs/{id}`` for a distill job (``job``: its record)."""
    def number(name, kind=float):
        value = job.get(name)
        return kind(float(value)) if value not in (None, "") else None

    spec = job["spec"]
    published = bool(job.get("distill_model"))
    return {
        "dataset_job_id": spec["dataset_job_id"], "student_model": spec.get("student_model"),
        "dataset_rows": spec.get("dataset_rows"), "rows_trained": number("distill_rows", int),
        "steps_done": number("distill_steps_done", int) or 0, "steps_total": number("distill_steps_total", int),
        "loss": number("distill_loss"), "final_loss": number("distill_final_loss"),
        "resumed_from_step": number("distill_resumed_from", int), "seconds": number("distill_seconds"), "model_dir": job.get("distill_model") or None,
        "artifacts": sorted(ARTIFACTS) if published else [],
    }
