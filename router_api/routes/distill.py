"""Distill jobs: train a student on a finished job's dataset, then download what the training made.

Apart from ``routes/jobs.py`` because a distill job has no prompts: its body names the dataset job.
"""

from __future__ import annotations

import tarfile
from pathlib import Path
from typing import Annotated, Iterator, Literal

from fastapi import APIRouter, HTTPException, Path as PathParam, status
from fastapi.responses import FileResponse, StreamingResponse

from services.jobs import stages as jobs
from services.jobs.distill import ARTIFACTS, DISTILL_KIND, DatasetNotReady, student_dir, submit_distill_job

from ..deps import CallerDep, OwnedJobId, SettingsDep, StoreDep, owned
from ..errors import StrictJSONRoute, error_responses
from ..protocol import DistillJobCreate, JobDescription

router = APIRouter(prefix="/jobs", tags=["jobs"], route_class=StrictJSONRoute)

ArtifactName = Literal[tuple(ARTIFACTS)]  # type: ignore[valid-type]
#: Bytes per read of a file going into a streamed tar.
_READ = 1 << 20


@router.post("/distill", response_model=JobDescription, status_code=status.HTTP_202_ACCEPTED,
             summary="Train a student on a finished job's dataset", responses=error_responses(
                 401, 404, 409, 422, 503, e404="unknown dataset job (or another tenant's)",
                 e409="the dataset job has not finished, builds no dataset, or has no rows"))
def create_distill_job(body: DistillJobCreate, settings: SettingsDep, store: StoreDep, caller: CallerDep) -> dict:
    """One task on the training queue; ``GET /v1/jobs/{id}`` shows ``training.steps_done`` of
    ``steps_total``, then the final loss and the artifact names."""
    owned(store, caller, "job", body.dataset_job_id)  # NotFound -> 404, also for another tenant's job
    try:
        job_id = submit_distill_job(store, settings, body.model_dump(), owner=caller.tenant)
    except DatasetNotReady as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from exc
    return jobs.describe_job(store, job_id, settings)


def tar_stream(folder: Path, root: str) -> Iterator[bytes]:
    """``folder`` as an uncompressed tar under ``root/``, read a MiB at a time (a model is never
    held in memory whole)."""
    written = 0
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        info = tarfile.TarInfo(f"{root}/{path.relative_to(folder).as_posix()}")
        stat = path.stat()
        info.size, info.mtime, info.mode = stat.st_size, int(stat.st_mtime), 0o644
        header = info.tobuf(format=tarfile.PAX_FORMAT)
        yield header
        with path.open("rb") as fh:
            while chunk := fh.read(_READ):
                yield chunk
        padding = -info.size % tarfile.BLOCKSIZE
        yield b"\0" * padding
        written += len(header) + info.size + padding
    end = 2 * tarfile.BLOCKSIZE
    yield b"\0" * (end + (-(written + end) % tarfile.RECORDSIZE))


@router.get("/{job_id}/artifacts/{name}", summary="Download an artifact of a distill job",
            response_class=StreamingResponse, responses={
                **error_responses(401, 404, 409, 422, 503, e404="unknown job, not a distill job, or its training "
                                  "made no model", e409="the training has not finished"),
                200: {"description": "training_loss.png: the loss per step; llamafactory.tar: the dataset as "
                                     "sharegpt, dataset_info.json and the LLaMA-Factory SFT config; model.tar: "
                                     "the trained HF model directory",
                      "content": {"image/png": {}, "application/x-tar": {}}}})
def artifact(job_id: OwnedJobId, name: Annotated[ArtifactName, PathParam(description=", ".join(ARTIFACTS))],
             settings: SettingsDep, store: StoreDep):
    job = store.job_record(job_id)
    if job["kind"] != DISTILL_KIND:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"job {job_id!r} is a {job['kind']} job; only distill "
                                                       "jobs have artifacts")
    if not job.get("distill_model"):
        if store.is_active(job_id):
            raise HTTPException(status.HTTP_409_CONFLICT, f"job {job_id!r} is {job['state']}: its artifacts "
                                                          "come when its training succeeds")
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"job {job_id!r} ended {job['state']} without a model")
    path = student_dir(settings, job_id) / ARTIFACTS[name]
    if not path.exists():
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"artifact {name!r} of job {job_id!r} is not in this "
                                                       "gateway's data dir (PERSYN_DATA_DIR)")
    if path.is_file():
        return FileResponse(path, media_type="image/png", filename=f"{job_id}-{name}")
    return StreamingResponse(tar_stream(path, f"{job_id}-{path.name}"), media_type="application/x-tar", headers={
        "Content-Disposition": f'attachment; filename="{job_id}-{name}"'})
