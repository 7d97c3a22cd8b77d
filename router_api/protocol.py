"""Request and response models of the gateway's REST API (kept apart from the serving logic)."""

from __future__ import annotations

from typing import Annotated, Literal, Sequence

from pydantic import AnyHttpUrl, BaseModel, ConfigDict, Field, StrictFloat, StrictInt, field_validator, model_validator

from services.core.settings import DEFAULT_ALPHA, DEFAULT_CALIBRATION_SIZE, DEFAULT_MAX_ERROR_RATE
from services.jobs.stages import JOB_KINDS
from services.jobs.store import JOB_STATES
from services.method.export import FORMATS
from services.method.kcenter import CALIBRATION_SAMPLERS
from services.method.strategies import STRATEGIES
from services.routing.training import MODES as ROUTER_MODES

#: Student and job ids and version names become Redis keys and directory names: a slug that starts
#: with a letter or digit, so none can reach another key (no ':') or leave its directory ('.', '..', '/').
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
StudentId = Annotated[str, Field(pattern=ID_PATTERN, examples=["qwen2.5-1.5b-math"])]
VersionName = Annotated[str, Field(pattern=ID_PATTERN, examples=["job-3f2a9c1d0b7e4a65"])]
#: A student model: a packaged name or a Hugging Face style ``org/name``; never an absolute path, ``~`` or ``..``.
MODEL_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}(/[A-Za-z0-9][A-Za-z0-9._-]{0,127})?$"
#: At least one character that is not whitespace: the schema states what the service enforces.
NON_BLANK = r"\S"
PromptText = Annotated[str, Field(min_length=1, pattern=NON_BLANK)]
JobKind = Literal[JOB_KINDS]  # type: ignore[valid-type]
Strategy = Literal[STRATEGIES]  # type: ignore[valid-type]
DatasetFormat = Literal[FORMATS]  # type: ignore[valid-type]
JobState = Literal[JOB_STATES]  # type: ignore[valid-type]
RouterMode = Literal[ROUTER_MODES]  # type: ignore[valid-type]
CalibrationSampler = Literal[CALIBRATION_SAMPLERS]  # type: ignore[valid-type]


class ErrorResponse(BaseModel):
    detail: str


# --------------------------------------------------------------------------- routing

class RouteRequest(BaseModel):
    student_id: StudentId
    prompts: list[PromptText] = Field(min_length=1, description="Limits: settings max_prompts_per_request, "
                                                                 "max_prompt_chars (413 above them).")
    top_k: int = Field(3, ge=1, description="Length of each ranking; above the pool size, the whole pool.")
    version: VersionName | None = Field(
        None, description="Route with this router version of the student (404 if it has none of that name); "
                          "absent: the student's A/B split when it has one, else its active version.")


class RouteResult(BaseModel):
    teacher: str = Field(description="argmax of the strengths: the teacher that should answer")
    top_k: list[str]
    strengths: dict[str, float] = Field(description="Bradley-Terry strength pi_m(x) per teacher")


class RouteResponse(BaseModel):
    student_id: str
    router_version: str = Field(description="the router version that served this request")
    results: list[RouteResult]


# --------------------------------------------------------------------------- students and teachers

class StudentCreate(BaseModel):
    student_id: StudentId
    model: str | None = Field(None, pattern=MODEL_PATTERN, examples=["smollm2-135m-instruct", "Qwen/Qwen2.5-1.5B"],
                              description="Student model (a packaged name or an HF-style org/name); "
                                          "the service default when absent.")
    family: str | None = Field(None, max_length=64)
    endpoint: AnyHttpUrl | None = Field(
        None, description="OpenAI-compatible server (vLLM) of the student for prompt log-probs; "
                          "the scoring worker runs the model itself when absent.")
    endpoint_model: str | None = Field(None, max_length=256,
                                       description="Model name served at `endpoint` (default: `model`).")


class RouterVersion(BaseModel):
    """A trained router of the student (where its files live stays on the server)."""

    version: str
    created: float
    metrics: dict = Field(default_factory=dict)


class ABSplit(BaseModel):
    """Two router versions of a student serving side by side: each /v1/route request that names no
    version goes to B with probability ``share_b``, drawn from the hash of its prompts (the same
    request always meets the same version)."""

    model_config = ConfigDict(extra="forbid")

    version_a: VersionName
    version_b: VersionName
    share_b: float = Field(ge=0.0, le=1.0, description="share of requests version B serves, in [0, 1]")

    @model_validator(mode="after")
    def _two_versions(self) -> "ABSplit":
        if self.version_a == self.version_b:
            raise ValueError("version_a and version_b must be two different versions")
        return self


class Student(BaseModel):
    id: str
    model: str
    family: str | None
    endpoint: str | None = None
    endpoint_model: str | None = None
    created: float
    active_version: str | None
    versions: list[RouterVersion]
    ab: ABSplit | None = Field(None, description="the A/B split of its routing requests, when set "
                                                 "(PUT /v1/students/{id}/ab)")


class ActivateRequest(BaseModel):
    version: VersionName


class TeacherInfo(BaseModel):
    name: str
    family: str
    size_b: float
    model: str
    base_url: str
    long_cot: bool
    cost_per_1m_output: float


# --------------------------------------------------------------------------- jobs

class PromptIn(BaseModel):
    id: str | None = Field(None, min_length=1, max_length=256,
                           description='Unique in the job; "p000001", ... by position when absent.')
    prompt: PromptText
    reference: str | StrictInt | Annotated[StrictFloat, Field(allow_inf_nan=False)] | None = Field(
        None, description="Reference answer (math verification)")

    @field_validator("id", mode="before")
    @classmethod
    def _int_id(cls, value):
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value

    def to_job(self) -> dict:
        """The prompt dict a job stores; numeric references become text like the file formats' do."""
        out = {"id": self.id, "prompt": self.prompt}
        if self.reference is not None:
            out["reference"] = str(self.reference)
        return out


def positional_id(position: int) -> str:
    """The id of an id-less prompt: its 1-based position in the job."""
    return f"p{position:06d}"


def assign_ids(prompts: Sequence[PromptIn], labels: Sequence[str]) -> None:
    """Give id-less prompts their positional id, then reject repeats (one dataset row per id)."""
    seen: dict[str, str] = {}
    for position, (prompt, label) in enumerate(zip(prompts, labels), 1):
        if prompt.id is None:
            prompt.id = positional_id(position)
        if prompt.id in seen:
            raise ValueError(f"{label}: duplicate prompt id {prompt.id!r} (first at {seen[prompt.id]})")
        seen[prompt.id] = label


class JobSpec(BaseModel):
    """Everything about a job but its prompts (the ``spec`` form field of an upload)."""

    model_config = ConfigDict(extra="forbid")

    kind: JobKind = Field(description="calibrate: parallel responses -> rewards -> router; "
                                      "synthesize: route -> generate -> dataset; persyn: both")
    student_id: StudentId
    strategy: Strategy = "persyn"
    alpha: float = Field(DEFAULT_ALPHA, ge=0.0, le=1.0, description="weight of learnability against quality")
    calibration_size: int = Field(DEFAULT_CALIBRATION_SIZE, ge=2)
    calibration_sampler: CalibrationSampler = Field(
        "random", description="How a calibration chooses its `calibration_size` prompts: random (seeded, at "
                              "submit) or kcenter (active calibration: greedy k-center on the router backbone's "
                              "embeddings of every prompt, so the calibration covers the prompt space; a first "
                              "`calibration.sample` stage on the training worker, seeded start).")
    teachers: list[str] | None = Field(None, min_length=1, description="A subset of the pool; all when absent.")
    strong_teacher: str | None = None
    student_family: str | None = Field(None, max_length=64)
    max_tokens: int | None = Field(None, ge=1, le=32768)
    max_error_rate: float = Field(
        DEFAULT_MAX_ERROR_RATE, ge=0.0, le=1.0,
        description="Error budget: once a stage has 20 finished items, a job whose failed share passes this "
                    "stops early, `failed`, with a summary by teacher and kind of error; its rows stay "
                    "downloadable.")
    router_mode: RouterMode = Field(
        "frozen", description="How a calibration trains the router: a frozen backbone + BT head (CPU-friendly), or "
                              "finetune: backbone and head together in fp32 master weights (the paper's router; "
                              "a GPU when the training worker has one).")
    router_backbone: str | None = Field(
        None, pattern=MODEL_PATTERN, examples=["all-minilm-l6-v2", "smollm2-135m-instruct", "Qwen/Qwen2.5-0.5B"],
        description="The router's backbone (an encoder is mean-pooled, a decoder pooled at its last token); "
                    "the service default (PERSYN_ROUTER_BACKBONE) when absent.")
    cache: bool = Field(
        True, description="Read teacher answers from the generation store: a request (same endpoint, model, "
                          "messages and decoding) answered before, by any job, is not sent again. false: fresh "
                          "answers (the job still reuses its own, e.g. after a crash); every answer is stored.")
    hybrid_margin: float | None = Field(
        None, gt=0.0, allow_inf_nan=False,
        description="Hybrid fallback (strategy persyn, kind synthesize or persyn): a routed prompt whose top-two "
                    "router strength gap is below this (the top teacher's BT win probability over the runner-up "
                    "below sigmoid(margin)) also gets the runner-up's answer, and hybrid.select keeps the better "
                    "by the combined reward: one extra generation per such prompt. Absent: off.")
    seed: int = 0
    budget_usd: Annotated[float, Field(gt=0, allow_inf_nan=False)] | None = Field(
        None, description="Bound on the expected dollars of the routed generation (strategy persyn): routing "
                          "maximises the summed router strengths within it, each teacher's expected cost per "
                          "prompt being its mean output tokens in the student's calibration times its "
                          "cost_per_1m_output. Calibration is not counted. 422 when even the cheapest teacher "
                          "for every prompt is expected to cost more (known at submit once the student has a "
                          "router; a persyn job that calibrates first fails its routing with that reason).")
    max_output_tokens_total: Annotated[int, Field(gt=0)] | None = Field(
        None, description="Bound on the expected output tokens of the routed generation (strategy persyn), "
                          "like budget_usd; both may be set.")
    dry_run: bool = Field(
        False, description="Answer at once (200) with the priced plan (DryRunEstimate): no teacher call, "
                           "nothing stored. Needs the student's active router (409 without one).")

    @model_validator(mode="after")
    def _hybrid_needs_routing(self) -> "JobSpec":
        if self.hybrid_margin is not None and (self.kind == "calibrate" or self.strategy != "persyn"):
            raise ValueError("hybrid_margin needs strategy 'persyn' and kind 'synthesize' or 'persyn'")
        return self


class JobCreate(JobSpec):
    prompts: list[PromptIn] = Field(min_length=1)

    @model_validator(mode="after")
    def _ids(self) -> "JobCreate":
        assign_ids(self.prompts, [f"prompts[{i}]" for i in range(len(self.prompts))])
        return self


class DistillJobCreate(BaseModel):
    """A distill job: fine-tune a student (TRL SFT, response tokens only) on the dataset of a finished
    synthesize or persyn job of the caller's tenant, on the training queue."""

    model_config = ConfigDict(extra="forbid")

    dataset_job_id: str = Field(pattern=ID_PATTERN, description="A synthesize or persyn job of this tenant that "
                                "succeeded or ended partial: its rows are the training data (404 unknown, 409 "
                                "not finished or no dataset).")
    student_model: str | None = Field(
        None, pattern=MODEL_PATTERN, examples=["smollm2-135m-instruct"],
        description="The model to fine-tune (a packaged name or an HF-style org/name); default: the model of "
                    "the dataset job's student.")
    max_steps: int | None = Field(None, ge=1, le=10_000_000,
                                  description="Stop after this many optimiser steps, whatever `epochs` says.")
    epochs: float = Field(1.0, gt=0, le=1000, description="Passes over the dataset (when `max_steps` is absent).")
    learning_rate: float | None = Field(None, gt=0, le=1, description="Default: 2e-5, or 2e-4 with `lora`.")
    batch_size: int = Field(4, ge=1, le=4096, description="Examples per device per step.")
    grad_accum: int = Field(1, ge=1, le=4096, description="Gradient accumulation steps.")
    max_length: int = Field(1024, ge=8, le=131072, description="Prompt + response tokens; longer examples are cut.")
    lora: bool = Field(False, description="Train LoRA adapters (PEFT, every linear layer) instead of every weight; "
                                          "the saved model has them merged in.")
    lora_rank: int = Field(16, ge=1, le=1024, description="LoRA rank (with `lora`).")
    save_steps: int = Field(0, ge=0, le=10_000_000, description="A checkpoint every this many steps (0: none); a "
                            "training whose worker died resumes from the last one.")
    seed: int = Field(0, ge=0, le=2**32 - 1, description="Data order and LoRA's initial adapters.")


class DistillProgress(BaseModel):
    """A distill job's training: progress while it runs, the result once its model is published."""

    dataset_job_id: str
    student_model: str | None = None
    dataset_rows: int | None = Field(None, description="rows of the dataset job at submission")
    rows_trained: int | None = Field(None, description="rows with a prompt and a response, trained on")
    steps_done: int = 0
    steps_total: int | None = Field(None, description="optimiser steps the training runs (known once it starts)")
    loss: float | None = Field(None, description="latest logged training loss")
    final_loss: float | None = Field(None, description="training loss of the last logged step")
    resumed_from_step: int | None = Field(None, description="the checkpoint a redelivered training resumed from "
                                                            "(its first worker died)")
    seconds: float | None = None
    model_dir: str | None = Field(None, description="the trained HF model directory, relative to the service's "
                                                    "data dir (a plain HF directory, LoRA merged in)")
    artifacts: list[str] = Field(default_factory=list,
                                 description="names for GET /v1/jobs/{id}/artifacts/{name}, once it succeeded")


class StageProgress(BaseModel):
    stage: str
    total: int
    done: int
    failed: int
    started: float
    finished: float | None
    seconds: float
    in_flight: int = Field(0, description="items running now under a live lease")
    stalled: int = Field(0, description="items whose lease lapsed unfinished (the watchdog requeues them)")
    retrying: int = Field(0, description="items waiting on a retry after a transient teacher error")
    redelivered: int = Field(0, description="requeues by the watchdog so far")
    redis_retries: int = Field(0, description="Redis errors retried inside tasks")
    given_up: int = Field(0, description="items failed after too many redeliveries")


class RoutingCost(BaseModel):
    """A routed job's expected cost (summed as its chunks route) against what it spent."""

    budget_usd: float | None = None
    max_output_tokens_total: int | None = None
    routed_prompts: int
    expected_cost_usd: float = Field(description="expected dollars of the routed generation, as routed")
    expected_output_tokens: float
    unconstrained_expected_cost_usd: float = Field(description="expected dollars of the argmax route, no limits")
    strength: float = Field(description="summed router strength of the chosen teachers")
    unconstrained_strength: float = Field(description="summed strength of the argmax route")
    strength_lost: float = Field(description="unconstrained_strength - strength: what the limits cost")
    spent_usd: float = Field(description="what every teacher call of the job cost (usage; calibration included)")


class TeacherEstimate(BaseModel):
    prompts: int = Field(description="prompts (generations) the teacher would answer")
    output_tokens: float = Field(description="expected completion tokens")
    cost_usd: float = Field(description="expected dollars")


class GenerateThenSelectEstimate(BaseModel):
    generations: int = Field(description="every teacher answers every prompt")
    output_tokens: float
    cost_usd: float


class DryRunRouting(BaseModel):
    budget_usd: float | None = None
    max_output_tokens_total: float | None = None
    strength: float
    unconstrained_strength: float
    strength_lost: float
    unconstrained_cost_usd: float


class DryRunEstimate(BaseModel):
    """The priced plan of a job, from the student's active router: nothing ran, nothing was stored."""

    dry_run: Literal[True]
    kind: str
    student_id: str
    strategy: str
    router_version: str
    n_prompts: int
    teachers: dict[str, TeacherEstimate] = Field(description="per teacher: prompts, expected tokens and dollars")
    total: TeacherEstimate
    generate_then_select: GenerateThenSelectEstimate = Field(
        description="the same prompts under Generate-then-Select")
    routing: DryRunRouting | None = Field(None, description="router strengths kept and lost (strategy persyn)")


class JobDescription(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: str
    kind: str
    state: JobState
    stage: str | None = None
    student_id: str | None = None
    spec: dict
    stages: list[StageProgress] = Field(default_factory=list)
    errors: list[dict] = Field(default_factory=list)
    allocation: dict[str, int] = Field(default_factory=dict)
    usage: dict[str, dict[str, int | float]] = Field(
        default_factory=dict, description="per teacher: requests, completion_tokens, cost")
    rows: int = Field(0, description="dataset rows so far")
    n_prompts: int | None = None
    n_calibration: int | None = None
    router_version: str | None = None
    router_gate: dict | None = Field(None, description="the router publish gate: activated, reason, checks")
    resumes: int = Field(0, description="times the job was resumed")
    resumed_prompts: int = Field(0, description="prompts (calibration prompts for a calibrate job) the resumes ran "
                                                "again; the rest kept their rows")
    generations: dict[str, int] = Field(
        default_factory=dict, description="requested: teacher requests this job sent (paid now); from_store: "
                                          "samples the generation store answered instead (paid before)")
    routing_cost: RoutingCost | None = Field(None, description="expected cost of the routed prompts and the "
                                                               "strength a budget cost; null before routing")
    hybrid: dict | None = Field(None, description="with hybrid_margin: margin, prompts (ambiguous prompts "
                                                  "given both top teachers: the extra generations) and switched "
                                                  "(whose runner-up's answer won)")
    failures: dict[str, dict] = Field(default_factory=dict, description="failed items per teacher (or "
                                      "stage:NAME): items, first error")
    error: str | None = None
    created: float
    updated: float
    finished: float | None = None
    training: DistillProgress | None = Field(None, description="a distill job's training: steps, loss, artifacts")


# --------------------------------------------------------------------------- probes

class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    status: Literal["ready", "not ready"]
    checks: dict[str, str]
