"""Jobs: submit (JSON or a JSONL upload), watch, cancel, download the dataset as it grows.

A job belongs to the tenant that submitted it, and only for a student of that tenant.
"""

from __future__ import annotations

import json
from array import array
from typing import Annotated, Iterator

import anyio.from_thread
import numpy as np
from fastapi import APIRouter, File, Form, HTTPException, Query, UploadFile, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import ValidationError

from services.core.settings import Settings
from services.jobs import pricing
from services.jobs import stages as jobs
from services.jobs.store import JobStore, StagedPrompts
from services.method.export import to_alpaca, to_sharegpt
from services.method.formats import Teacher
from services.routing.client import RouterClient

from ..deps import Caller, CallerDep, OwnedJobId, RouterClientDep, SettingsDep, StoreDep, TeachersDep, owned
from ..errors import BadJSON, StrictJSONRoute, error_responses, loads_strict, validation_message
from ..protocol import DatasetFormat, DryRunEstimate, JobCreate, JobDescription, JobSpec, PromptIn, positional_id

router = APIRouter(prefix="/jobs", tags=["jobs"], route_class=StrictJSONRoute)

_SUBMIT_ERRORS = {
    **error_responses(401, 404, 409, 413, 422, 503, e404="unknown student",
                      e409="a synthesis whose strategy needs the student's calibration, or a dry run or budget "
                           "its router cannot price (no active router, no output-token statistics)",
                      e422="invalid input, or a budget even the cheapest teacher breaks"),
    200: {"model": DryRunEstimate, "description": "dry_run: the priced plan (nothing was started or stored)"}}
_JOB_ERRORS = error_responses(401, 404, 422, 503, e404="unknown job")


def _too_large(detail: str) -> HTTPException:
    return HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, detail)


def _too_long(prompt_id: str, chars: int, settings: Settings) -> HTTPException:
    return _too_large(f"prompt {prompt_id!r} has {chars} characters; at most {settings.max_prompt_chars}")


def _submit(spec: JobSpec, prompts: StagedPrompts, settings: Settings, store: JobStore, pool: list[Teacher],
            caller: Caller, router: RouterClient) -> dict | JSONResponse:
    """Checks that need the service's state (student, pool, router), then hands the staged prompts over to
    the job layer (which registers the job already owned by the caller's tenant), or prices them (a dry run:
    the staged prompts are then dropped, nothing stays in Redis)."""
    owned(store, caller, "student", spec.student_id)  # NotFound -> 404
    names = [t.name for t in pool]
    unknown = [t for t in spec.teachers or () if t not in names]
    if unknown:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT,
                            f"unknown teacher(s) {', '.join(map(repr, unknown))}; "
                            f"the pool has {', '.join(names) or 'no teachers'}")
    chosen = spec.teachers or names
    if spec.strong_teacher is not None and spec.strong_teacher not in chosen:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT,
                            f"strong_teacher {spec.strong_teacher!r} is not among the job's teachers "
                            f"({', '.join(chosen) or 'none'})")
    fields = spec.model_dump(exclude={"prompts", "dry_run"})
    try:
        if spec.dry_run:
            jobs.check_job(store, settings, fields, prompts.count, prompts.first_unreferenced)
            texts = [p["prompt"] for p in store.prompts(prompts.job_id)]
            return JSONResponse(_dry_run(fields, texts, settings, store, pool, router))
        job_id = jobs.submit_job(store, settings, fields, prompts, owner=caller.tenant)
    except (jobs.NeedsCalibration, pricing.NeedsCostStats) as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from exc
    except ValueError as exc:  # BudgetInfeasible too
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from exc
    return jobs.describe_job(store, job_id, settings)


def _dry_run(spec: dict, prompts: list[str], settings: Settings, store: JobStore, pool: list[Teacher],
             router: RouterClient) -> dict:
    """The priced plan from the student's active router, routed in this process (reads only)."""
    found = pricing.active_stats(store, spec["student_id"])
    if found is None:
        raise pricing.NeedsCostStats(
            f"a dry run prices from student {spec['student_id']!r}'s calibration, and it has no active router: "
            "run a calibrate job first (a persyn job's calibration cost depends on what it finds)")
    version, _, stats = found
    names = [t.name for t in pool if not spec.get("teachers") or t.name in spec["teachers"]]
    strengths = None
    if spec.get("strategy", "persyn") == "persyn" and spec["kind"] != "calibrate":
        step = settings.route_chunk_prompts  # the worker's chunks: the same batches give the same strengths
        strengths = np.vstack([_strengths(router, spec["student_id"], prompts[i:i + step], names)
                               for i in range(0, len(prompts), step)])
    student = store.get_student(spec["student_id"])
    plan = pricing.dry_run(spec, pool, stats, strengths, len(prompts), settings.route_chunk_prompts,
                           spec.get("student_family") or student["family"])
    return DryRunEstimate.model_validate({**plan, "router_version": version}).model_dump(mode="json")


def _strengths(router: RouterClient, student_id: str, prompts: list[str], names: list[str]) -> np.ndarray:
    """[prompt, teacher] strengths from the gateway's router client (its event loop does the routing)."""
    batch = anyio.from_thread.run(router.route, student_id, prompts, len(names))
    missing = [t for t in names if batch.results and t not in batch.results[0].strengths]
    if missing:
        raise pricing.NeedsCostStats(f"router {batch.version} does not know teacher(s) {', '.join(missing)}")
    return np.array([[r.strengths[t] for t in names] for r in batch.results])


@router.post("", response_model=JobDescription, status_code=status.HTTP_202_ACCEPTED, summary="Submit a job",
             responses=_SUBMIT_ERRORS)
def create_job(body: JobCreate, settings: SettingsDep, store: StoreDep, pool: TeachersDep, caller: CallerDep,
               router: RouterClientDep) -> dict:
    """Queued at once; poll ``GET /v1/jobs/{id}`` for progress. ``dry_run``: 200 with the priced plan instead."""
    if len(body.prompts) > settings.max_job_prompts:
        raise _too_large(f"{len(body.prompts)} prompts; at most {settings.max_job_prompts} per job")
    for prompt in body.prompts:
        if len(prompt.prompt) > settings.max_prompt_chars:
            raise _too_long(prompt.id, len(prompt.prompt), settings)
    with StagedPrompts(store) as staged:
        for prompt in body.prompts:
            staged.add(prompt.to_job())
        staged.flush()
        return _submit(body, staged, settings, store, pool, caller, router)


def _unprocessable(detail: str) -> HTTPException:
    return HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail)


def _stage_upload(file: UploadFile, staged: StagedPrompts, settings: Settings) -> None:
    """Read the JSONL upload a line at a time, validating each line once and staging its prompt as it
    goes; every error names its line. The checks on the whole set (none, repeated ids, a prompt too
    long) are raised once the file is read, as for a JSON body."""
    limit = settings.max_job_prompts
    lines = array("I")  # each prompt's line number (4 bytes a prompt), to name where a repeated id first was
    too_long: tuple[str, int] | None = None
    for lineno, raw in enumerate(file.file, 1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise _unprocessable(f"line {lineno}: not UTF-8") from None
        if not line.strip():
            continue
        try:
            obj = loads_strict(line, f"line {lineno}")
        except BadJSON as exc:
            raise _unprocessable(str(exc)) from None
        if not isinstance(obj, dict):
            raise _unprocessable(f"line {lineno}: expected a JSON object")
        try:
            prompt = PromptIn.model_validate(obj)
        except ValidationError as exc:
            raise _unprocessable(f"line {lineno}: {validation_message(exc.errors())}") from None
        if staged.count == limit:  # stop reading: the file is too big anyway
            raise _too_large(f"more than {limit} prompts; at most {limit} per job")
        if prompt.id is None:
            prompt.id = positional_id(staged.count + 1)
        if too_long is None and len(prompt.prompt) > settings.max_prompt_chars:
            too_long = (prompt.id, len(prompt.prompt))
        lines.append(lineno)
        staged.add(prompt.to_job())
    staged.flush()
    if not staged.count:
        raise _unprocessable("the file has no prompts")
    if staged.duplicate:
        position, prompt_id = staged.duplicate
        raise _unprocessable(f"line {lines[position]}: duplicate prompt id {prompt_id!r} "
                             f"(first at line {lines[staged.first_position(prompt_id)]})")
    if too_long:
        raise _too_long(*too_long, settings)


@router.post("/upload", response_model=JobDescription, status_code=status.HTTP_202_ACCEPTED,
             summary="Submit a job with its prompts as a JSONL file",
             responses={**_SUBMIT_ERRORS, **error_responses(400, e400="broken multipart body or a spec over 1 MB")})
def upload_job(spec: Annotated[str, Form(description="JobSpec as JSON (the JSON job body without prompts)")],
               file: Annotated[UploadFile, File(description="JSONL: one {id?, prompt, reference?} per line")],
               settings: SettingsDep, store: StoreDep, pool: TeachersDep, caller: CallerDep,
               router: RouterClientDep) -> dict:
    """For prompt sets too big to send as one JSON body: the file streams into the job store as it is
    read, so the gateway's memory does not grow with it; a rejected upload leaves nothing behind."""
    try:
        parsed = JobSpec.model_validate(loads_strict(spec, "body.spec"))
    except BadJSON as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from None
    except ValidationError as exc:
        raise RequestValidationError([{**e, "loc": ("body", "spec", *e["loc"])} for e in exc.errors()]) from None
    with StagedPrompts(store) as staged:
        _stage_upload(file, staged, settings)
        return _submit(parsed, staged, settings, store, pool, caller, router)


@router.get("/{job_id}", response_model=JobDescription, summary="Job state and progress", responses=_JOB_ERRORS)
def get_job(job_id: OwnedJobId, settings: SettingsDep, store: StoreDep) -> dict:
    return jobs.describe_job(store, job_id, settings)


@router.post("/{job_id}/resume", response_model=JobDescription, status_code=status.HTTP_202_ACCEPTED,
             summary="Resume a partial, failed or cancelled job",
             responses=error_responses(401, 404, 409, 422, 503, e404="unknown job",
                                       e409="the job is not partial, failed or cancelled"))
def resume_job(job_id: OwnedJobId, store: StoreDep, settings: SettingsDep) -> dict:
    """Runs again only the prompts without a row, keeping every row the job has; answers the job (or
    any job) already obtained come from the generation store, so no teacher is asked twice."""
    try:
        return jobs.resume_job(store, job_id, settings)
    except jobs.NotResumable as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from exc


@router.delete("/{job_id}", response_model=JobDescription, summary="Cancel a job", responses=_JOB_ERRORS)
def cancel_job(job_id: OwnedJobId, store: StoreDep, settings: SettingsDep) -> dict:
    """Work already done is kept (its rows stay downloadable); a finished job is left as it is."""
    return jobs.cancel_job(store, job_id, settings)


#: Bytes per chunk of a streamed dataset: large enough that sending costs little per row, small
#: enough that a 50K-row dataset never sits in the gateway's memory whole.
_STREAM_CHUNK = 1 << 16


def _chunked(pieces: Iterator[str]) -> Iterator[bytes]:
    buffer, size = [], 0
    for piece in pieces:
        buffer.append(piece)
        size += len(piece)
        if size >= _STREAM_CHUNK:
            yield "".join(buffer).encode()
            buffer, size = [], 0
    if buffer:
        yield "".join(buffer).encode()


def _jsonl(raw_rows: Iterator[str]) -> Iterator[bytes]:
    """The stored rows as they are, one per line (no decoding and encoding again)."""
    return _chunked(raw + "\n" for raw in raw_rows)


def _json_array(rows: Iterator[dict], convert) -> Iterator[bytes]:
    """A JSON array built a chunk at a time, so a large dataset never sits in memory whole."""
    def pieces():
        yield "["
        for i, row in enumerate(rows):
            yield (",\n" if i else "\n") + json.dumps(convert(row), ensure_ascii=False)
        yield "\n]\n"

    return _chunked(pieces())


@router.get("/{job_id}/dataset", summary="Download the dataset (partial while the job runs)",
            response_class=StreamingResponse, responses={
                **_JOB_ERRORS,
                200: {"description": "jsonl: one row {id, prompt, response, teacher, ...} per line; "
                                     "sharegpt / alpaca: a JSON array for LLaMA-Factory",
                      "content": {"application/x-ndjson": {}, "application/json": {}}}})
def dataset(job_id: OwnedJobId, store: StoreDep,
            format: Annotated[DatasetFormat, Query(description="jsonl, sharegpt or alpaca")] = "jsonl",
            ) -> StreamingResponse:
    """Rows in prompt order; ``X-PerSyn-Job-State`` says whether more may come."""
    state = store.state(job_id)  # NotFound -> 404
    if format == "jsonl":
        body, media, name = _jsonl(store.iter_raw_rows(job_id)), "application/x-ndjson", f"persyn-{job_id}.jsonl"
    else:
        convert = to_sharegpt if format == "sharegpt" else to_alpaca
        body, media = _json_array(store.iter_rows(job_id), convert), "application/json"
        name = f"persyn-{job_id}-{format}.json"
    return StreamingResponse(body, media_type=media, headers={
        "Content-Disposition": f'attachment; filename="{name}"', "X-PerSyn-Job-State": state})
