"""``persyn up --demo-job``'s REST client against a gateway with API keys (real uvicorn and Redis)."""

from __future__ import annotations

import threading
import time

import pytest

import services.jobs.stages
from gateway_support import REDIS_URL, IdleRouterClient, serve
from router_api.app import create_app
from services.cli.common import CLIError
from services.cli.service import demo_api_key, run_demo_job
from services.core.settings import ApiKey, Settings

KEYS = (ApiKey("team-a", "key-a"), ApiKey("ops", "key-ops", admin=True))


def test_the_demo_key_is_an_admin_key_else_the_first_tenants():
    assert demo_api_key(()) is None
    assert demo_api_key(KEYS) == "key-ops"
    assert demo_api_key(KEYS[:1]) == "key-a"


@pytest.fixture(scope="module")
def gateway(store, pool_file):
    settings = Settings(redis_url=REDIS_URL, key_prefix=store.p, teacher_pool=pool_file, api_keys=KEYS)
    with pytest.MonkeyPatch.context() as patch:  # no worker runs the job: the test ends it
        patch.setattr(services.jobs.stages, "enqueue_many", lambda messages: None)
        with serve(create_app(settings, store=store, router_client=IdleRouterClient())) as url:
            yield url


def test_without_a_key_the_demo_says_so_instead_of_a_traceback(gateway, tmp_path):
    with pytest.raises(CLIError, match="401"):
        run_demo_job(gateway, tmp_path, n_prompts=4, n_calibration=2, student_id="demo-nokey", seed=0)


def test_with_the_demo_key_the_job_is_submitted_and_followed(gateway, store, tmp_path):
    outcome = {}

    def demo():
        try:
            run_demo_job(gateway, tmp_path, n_prompts=4, n_calibration=2, student_id="demo-keyed", seed=0,
                         api_key=demo_api_key(KEYS))
        except CLIError as exc:
            outcome["error"] = str(exc)

    thread = threading.Thread(target=demo, daemon=True)
    thread.start()
    deadline = time.time() + 60
    while not store.list_jobs(10) and time.time() < deadline:
        time.sleep(0.1)  # the demo client submits from its thread
    [job_id] = store.list_jobs(10)
    assert store.owner("job", job_id) == "ops" and store.job_record(job_id)["spec"]["student_id"] == "demo-keyed"
    store.set_state(job_id, "cancelled")  # the demo client polls until the job ends
    thread.join(30)
    assert not thread.is_alive() and f"job {job_id} ended cancelled" in outcome["error"]
