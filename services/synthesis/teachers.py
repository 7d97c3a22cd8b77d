"""Teacher generation over OpenAI-compatible endpoints (SPEC steps 1 and 9).

``generate`` draws n samples from one teacher; ``generate_math`` applies the SPEC step-9
rule (k samples at temperature 0.6, keep one math-verify accepts, else one at random);
``answer`` decodes a prompt without a reference greedily (temperature 0), as the paper does;
``generate_many`` fans a list of jobs out over a thread pool, one HTTP client per
(base_url, model).
"""

from __future__ import annotations

import random
import threading
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass
from typing import Any, Iterable, Protocol, Sequence

from services.clients.openai_compat import ChatResult, OpenAICompatClient
from services.core.generations import generation_key
from services.method.formats import Teacher
from services.scoring.quality import math_verify_reward

#: SPEC step 9: samples per math prompt, and the sampling temperature.
MATH_SAMPLES_SMALL = 4
MATH_SAMPLES_LARGE = 2
LARGE_TEACHER_B = 72.0
MATH_TEMPERATURE = 0.6
#: Prompts without a reference are decoded greedily (the paper's setting for non-math data).
GREEDY_TEMPERATURE = 0.0


@dataclass
class GeneratedAnswer:
    """The kept answer of one (prompt, teacher) job.

    ``verified`` is True iff a sample passed math-verify (so ``n_correct > 0``); for jobs
    without a reference ``checked`` is False, ``n_correct`` 0 and ``verified`` False.
    ``completion_tokens`` sums over all samples drawn (what the answer cost when it was made);
    ``n_from_store`` of the samples and ``completion_tokens_from_store`` of the tokens came from the
    generation store (paid for before, not now).
    """

    text: str
    n_samples: int
    n_correct: int
    verified: bool
    checked: bool = True
    completion_tokens: int = 0
    finish_reason: str | None = None
    n_from_store: int = 0
    completion_tokens_from_store: int = 0


class Generations(Protocol):
    """Where answers are looked up before a teacher is asked, and kept after
    (:class:`services.core.generations.JobGenerations`)."""

    def get(self, key: str) -> dict | None: ...

    def put(self, key: str, value: dict) -> None: ...


@dataclass
class Sample:
    """One chat completion, and whether it came from the generation store."""

    result: ChatResult
    from_store: bool = False


def build_messages(teacher: Teacher, prompt: str) -> list[dict]:
    messages = []
    if teacher.system_prompt:
        messages.append({"role": "system", "content": teacher.system_prompt})
    messages.append({"role": "user", "content": prompt})
    return messages


def client_for(teacher: Teacher, timeout: float = 120.0) -> OpenAICompatClient:
    return OpenAICompatClient(teacher.base_url, teacher.model, timeout=timeout)


def check_teachers(teachers: Iterable[Teacher], timeout: float = 10.0) -> None:
    """Startup check: every teacher's endpoint answers ``/v1/models`` and serves its model."""
    for base_url, model in dict.fromkeys((t.base_url, t.model) for t in teachers):
        with OpenAICompatClient(base_url, model, timeout=timeout, max_retries=1) as client:
            client.check_health()


def usage_by_teacher(answers: Iterable[tuple[Teacher, GeneratedAnswer]]) -> dict[str, dict]:
    """Requests, completion tokens and cost per teacher (cost from ``cost_per_1m_output``)."""
    usage: dict[str, dict] = {}
    for teacher, answer in answers:
        u = usage.setdefault(teacher.name, {"requests": 0, "completion_tokens": 0, "cost": 0.0})
        u["requests"] += answer.n_samples
        u["completion_tokens"] += answer.completion_tokens
        u["cost"] = round(u["completion_tokens"] * teacher.cost_per_1m_output / 1e6, 6)
    return usage


def generate(teacher: Teacher, prompt: str, *, n: int = 1, seed: int | None = None,
             client: OpenAICompatClient | None = None,
             sampling: dict | None = None) -> list[ChatResult]:
    """``n`` samples from ``teacher``, one request each.

    Sampling = the teacher's defaults, updated by ``sampling``; sample i uses seed
    ``seed + i`` (or the server's own random seed when ``seed`` is None and the
    teacher's sampling sets none). A temperature of 0 sends no seed: greedy decoding has none.
    """
    return [s.result for s in generate_samples(teacher, prompt, n=n, seed=seed, client=client, sampling=sampling)]


def generate_samples(teacher: Teacher, prompt: str, *, n: int = 1, seed: int | None = None,
                     client: OpenAICompatClient | None = None, sampling: dict | None = None,
                     generations: Generations | None = None) -> list[Sample]:
    """:func:`generate`, reading each request's answer from ``generations`` when it is there and
    keeping every new one in it as soon as it arrives (so a crash right after loses none)."""
    if n < 1:
        raise ValueError("n must be >= 1")
    params: dict[str, Any] = {**(teacher.sampling or {}), **(sampling or {})}
    params.pop("n", None)
    base_seed = seed if seed is not None else params.pop("seed", None)
    if params.get("temperature") == 0:
        params.pop("seed", None)
        base_seed = None
    messages = build_messages(teacher, prompt)
    own = client is None
    client = client or client_for(teacher)
    try:
        samples = []
        for i in range(n):
            call = dict(params)
            if base_seed is not None:
                call["seed"] = int(base_seed) + i
            key = generation_key(client.base_url, client.model, messages, call) if generations is not None else None
            stored = generations.get(key) if generations is not None else None
            if stored is not None:
                samples.append(Sample(ChatResult(**stored), from_store=True))
                continue
            result = client.chat(messages, **call)
            if generations is not None:
                generations.put(key, asdict(result))
            samples.append(Sample(result))
        return samples
    finally:
        if own:
            client.close()


def math_samples_for(teacher: Teacher) -> int:
    """SPEC step 9: 2 samples for 72B+ or long-CoT teachers, 4 for the rest."""
    if teacher.long_cot or teacher.size_b >= LARGE_TEACHER_B:
        return MATH_SAMPLES_LARGE
    return MATH_SAMPLES_SMALL


def _decoding(temperature: float, max_tokens: int | None) -> dict:
    """What a job's decoding settings override in the teacher's sampling."""
    return {"temperature": temperature, **({} if max_tokens is None else {"max_tokens": int(max_tokens)})}


def generate_math(teacher: Teacher, prompt: str, reference: str, *, rng: random.Random,
                  client: OpenAICompatClient | None = None, max_tokens: int | None = None,
                  generations: Generations | None = None) -> GeneratedAnswer:
    """Sample k answers at temperature 0.6; keep one math-verify accepts, else a random one.

    Seeds and the final pick come from ``rng``, so a seeded rng reproduces the job
    (given a server that honours ``seed``). ``max_tokens`` replaces the teacher's own limit.
    """
    k = math_samples_for(teacher)
    seed = rng.randrange(2**31 - k)
    drawn = generate_samples(teacher, prompt, n=k, seed=seed, client=client,
                             sampling=_decoding(MATH_TEMPERATURE, max_tokens), generations=generations)
    samples = [s.result for s in drawn]
    rewards = [math_verify_reward(s.text, reference) for s in samples]
    correct = [i for i, r in enumerate(rewards) if r > 0]
    pick = rng.choice(correct) if correct else rng.randrange(len(samples))
    return GeneratedAnswer(
        text=samples[pick].text, n_samples=len(samples), n_correct=len(correct),
        verified=bool(correct), checked=True,
        completion_tokens=sum(s.completion_tokens for s in samples),
        finish_reason=samples[pick].finish_reason, **_from_store(drawn),
    )


def _from_store(drawn: list[Sample]) -> dict:
    stored = [s.result for s in drawn if s.from_store]
    return {"n_from_store": len(stored), "completion_tokens_from_store": sum(r.completion_tokens for r in stored)}


Job = tuple  # (teacher, prompt_id, prompt, reference | None)


def answer(teacher: Teacher, prompt_id: str, prompt: str, reference: str | None, *, seed: int = 0,
           client: OpenAICompatClient | None = None, max_tokens: int | None = None,
           generations: Generations | None = None) -> GeneratedAnswer:
    """One (prompt, teacher) job: math rejection sampling with a reference, else one greedy answer.

    Seeds come from ``(seed, prompt_id, teacher.name)``, so a retried or redelivered
    job asks the teacher the same thing. ``max_tokens`` (the job's) replaces the
    teacher's own limit; None keeps it. With ``generations``, every request already answered
    (same endpoint, model, messages and decoding) is read from there, not asked again.
    """
    rng = random.Random(f"{seed}:{prompt_id}:{teacher.name}")
    if reference is not None:
        return generate_math(teacher, prompt, str(reference), rng=rng, client=client, max_tokens=max_tokens,
                             generations=generations)
    drawn = generate_samples(teacher, prompt, n=1, client=client, generations=generations,
                             sampling=_decoding(GREEDY_TEMPERATURE, max_tokens))
    res = drawn[0].result
    return GeneratedAnswer(text=res.text, n_samples=1, n_correct=0, verified=False,
                           checked=False, completion_tokens=res.completion_tokens,
                           finish_reason=res.finish_reason, **_from_store(drawn))


def generate_many(jobs: Iterable[Sequence], *, max_workers: int = 4, progress: bool = True,
                  seed: int = 0, return_exceptions: bool = False,
                  timeout: float = 120.0, max_tokens: int | None = None) -> dict[tuple[str, str], GeneratedAnswer | BaseException]:
    """Run ``(teacher, prompt_id, prompt, reference|None)`` jobs on a thread pool.

    Jobs with a reference go through :func:`generate_math`; the others are answered
    greedily (:func:`answer`), all with ``max_tokens`` when set. Each job's seeds come from ``(seed, prompt_id,
    teacher.name)``, so results do not depend on scheduling. Returns
    ``{(prompt_id, teacher.name): GeneratedAnswer}``. With ``return_exceptions`` a failed
    job maps to its exception; otherwise the first failure cancels pending jobs and is
    raised.
    """
    jobs = [tuple(j) for j in jobs]
    keys = [(str(j[1]), j[0].name) for j in jobs]
    if len(set(keys)) != len(keys):
        raise ValueError("duplicate (prompt_id, teacher) jobs")
    clients: dict[tuple[str, str], OpenAICompatClient] = {}
    lock = threading.Lock()

    def get_client(teacher: Teacher) -> OpenAICompatClient:
        key = (teacher.base_url, teacher.model)
        with lock:
            if key not in clients:
                clients[key] = client_for(teacher, timeout=timeout)
            return clients[key]

    def run(job: tuple) -> GeneratedAnswer:
        teacher, prompt_id, prompt, reference = job
        return answer(teacher, str(prompt_id), prompt, reference, seed=seed, client=get_client(teacher),
                      max_tokens=max_tokens)

    from tqdm import tqdm

    results: dict[tuple[str, str], GeneratedAnswer | BaseException] = {}
    bar = tqdm(total=len(jobs), desc="generate", unit="job", disable=not progress)
    try:
        with ThreadPoolExecutor(max_workers=max(1, max_workers)) as pool:
            futures = {pool.submit(run, job): key for job, key in zip(jobs, keys)}
            pending = set(futures)
            while pending:
                done, pending = wait(pending, return_when=FIRST_EXCEPTION)
                for fut in done:
                    bar.update(1)
                    exc = fut.exception()
                    if exc is None:
                        results[futures[fut]] = fut.result()
                    elif return_exceptions:
                        results[futures[fut]] = exc
                    else:
                        for other in pending:
                            other.cancel()
                        raise exc
    finally:
        bar.close()
        for client in clients.values():
            client.close()
    # Report in job order, whatever order they finished in.
    return {key: results[key] for key in keys if key in results}
