"""The watchdog's decisions on real Redis state (no workers): what a dead task leaves behind is a
lapsed lease on an unfinished item; a task that died between counting the last item and advancing
leaves a finished stage whose job did not move on."""

from __future__ import annotations

import time

from services.core.settings import Settings
from services.jobs.leases import Leases
from services.jobs.stages import GENERATE_TASK, describe_job
from services.jobs.store import JobStore
from services.jobs.watchdog import sweep


def _generating_job(store: JobStore, n: int) -> str:
    """A synthesize job on its generate stage, one item per prompt for teacher ``t``."""
    prompts = [{"id": f"p{i}", "prompt": f"question {i}"} for i in range(n)]
    job_id = store.create_job("synthesize", {"student_id": "s", "strategy": "random"}, prompts)
    store.set_state(job_id, "running")
    items = [(f"p{i}|t", GENERATE_TASK, [job_id, "generate", f"p{i}|t", [[f"p{i}", "t"]]], f"{store.p}-generation")
             for i in range(n)]
    Leases(store).record_plan(job_id, "generate", items)
    store.start_stage(job_id, "generate", n)
    return job_id


def _answer(store: JobStore, job_id: str, i: int) -> None:
    store.put_row(job_id, {"id": f"p{i}", "prompt": f"question {i}", "response": "r", "teacher": "t",
                           "verified": False, "source": "routed"})
    store.mark_item(job_id, "generate", f"p{i}|t")


def test_an_item_whose_holders_keep_dying_fails_with_the_reason_and_the_job_ends(store):
    settings = Settings(key_prefix=store.p, max_redeliveries=2, watchdog_interval_s=1)
    leases = Leases(store)
    job_id = _generating_job(store, 3)
    _answer(store, job_id, 0)
    _answer(store, job_id, 1)
    assert leases.acquire(job_id, "generate", "p2|t", "dead-task", lease_s=0.05)
    for _ in range(settings.max_redeliveries):  # earlier passes requeued it; each copy died the same way
        leases.count_redelivery(job_id, "generate", "p2|t")
    time.sleep(0.1)  # the holder stops renewing: its lease lapses
    assert describe_job(store, job_id, settings)["stages"][0]["stalled"] == 0  # no longer in flight after requeues
    leases.acquire(job_id, "generate", "p2|t", "dead-task", lease_s=0.05)
    time.sleep(0.1)
    assert describe_job(store, job_id, settings)["stages"][0]["stalled"] == 1

    assert sweep(store, settings)["given_up"] == 1
    job = describe_job(store, job_id, settings)
    assert job["state"] == "partial" and job["rows"] == 2
    assert "after 2 redeliveries" in job["failures"]["t"]["error"] and job["failures"]["t"]["items"] == 1
    assert "1 of 3 prompts have no row" in job["error"]
    assert job["stages"][0]["given_up"] == 1 and job["stages"][0]["redelivered"] == 2
    assert sweep(store, settings) == {"redelivered": 0, "given_up": 0, "advanced": 0}  # the job is done


def test_a_live_lease_is_left_alone_and_a_finished_stage_is_advanced(store):
    settings = Settings(key_prefix=store.p, watchdog_interval_s=0.01)
    leases = Leases(store)
    job_id = _generating_job(store, 2)
    _answer(store, job_id, 0)
    assert leases.acquire(job_id, "generate", "p1|t", "live-task", lease_s=30)
    assert sweep(store, settings) == {"redelivered": 0, "given_up": 0, "advanced": 0}
    assert describe_job(store, job_id, settings)["stages"][0]["in_flight"] == 1

    _answer(store, job_id, 1)  # the task counted its item, then died before advancing the job
    time.sleep(0.05)
    assert store.state(job_id) == "running"
    assert sweep(store, settings)["advanced"] == 1
    job = describe_job(store, job_id, settings)
    assert job["state"] == "succeeded" and job["error"] is None and job["rows"] == 2
    assert job["id"] not in leases.active_jobs()


def test_a_chunk_given_up_fails_only_its_unfinished_items(store):
    """A generation chunk is one unit with many items: what it finished stays, the rest fails."""
    from services.jobs.stages import generation_units

    settings = Settings(key_prefix=store.p, max_redeliveries=1, watchdog_interval_s=1)
    leases = Leases(store)
    prompts = [{"id": f"p{i}", "prompt": f"question {i}"} for i in range(4)]
    job_id = store.create_job("synthesize", {"student_id": "s", "strategy": "random"}, prompts)
    store.set_state(job_id, "running")
    units = generation_units(job_id, "generate", [(f"p{i}", "t") for i in range(4)], 3, "g")
    assert [u[0] for u in units] == ["g00000", "g00001"]
    leases.record_plan(job_id, "generate", units)
    store.start_stage(job_id, "generate", 4)
    for i in (0, 3):  # p0 of the first chunk, and the whole second chunk, were answered
        _answer(store, job_id, i)
    store.mark_items(job_id, "generate", [], unit="g00001")
    leases.count_redelivery(job_id, "generate", "g00000")  # an earlier copy died; this one dies too
    assert leases.acquire(job_id, "generate", "g00000", "dead-task", lease_s=0.05)
    time.sleep(0.1)
    assert sweep(store, settings)["given_up"] == 1
    job = describe_job(store, job_id, settings)
    assert job["state"] == "partial" and job["rows"] == 2
    assert job["stages"][0]["done"] == 2 and job["stages"][0]["failed"] == 2
    assert job["failures"]["t"]["items"] == 2


def test_a_routing_chunk_given_up_fails_its_unrouted_prompts_and_the_job_ends(store):
    """Generation waits on routing: a routing chunk that keeps dying must not leave it waiting."""
    from services.jobs.stages import ROUTE_TASK

    settings = Settings(key_prefix=store.p, max_redeliveries=1, watchdog_interval_s=1)
    leases = Leases(store)
    prompts = [{"id": f"p{i}", "prompt": f"question {i}"} for i in range(3)]
    job_id = store.create_job("synthesize", {"student_id": "s", "strategy": "persyn"}, prompts)
    store.set_state(job_id, "running")
    leases.record_plan(job_id, "route", [("r00000", ROUTE_TASK, [job_id, "r00000", ["p0", "p1", "p2"]], "training")])
    leases.record_plan(job_id, "generate", [])
    assert store.start_stages(job_id, [("route", 1), ("generate", 3)])
    leases.count_redelivery(job_id, "route", "r00000")
    assert leases.acquire(job_id, "route", "r00000", "dead-task", lease_s=0.05)
    time.sleep(0.1)
    assert sweep(store, settings)["given_up"] == 1
    job = describe_job(store, job_id, settings)
    assert job["state"] == "failed" and job["rows"] == 0
    stages = {s["stage"]: s for s in job["stages"]}
    assert stages["route"]["failed"] == 1 and stages["generate"]["failed"] == 3
    assert job["failures"]["stage:route"]["items"] == 4 and "redeliveries" in job["error"]
