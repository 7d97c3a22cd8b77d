"""Schemathesis over the gateway's own OpenAPI: real uvicorn on loopback, real Redis (private prefix),
the real in-process router. Every operation gets a bounded number of generated requests (valid and
invalid ones); none may be a server error, and every answer must match its documented status, content
type and schema."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (content_type_conformance, response_schema_conformance,
                                               status_code_conformance)

import services.jobs.stages
from gateway_support import REDIS_URL, serve
from router_api.app import create_app
from services.core.settings import ApiKey, Settings

#: Generated requests per operation (and per generation mode): enough for each error path, bounded time.
EXAMPLES = 25
KEY = {"Authorization": "Bearer fuzz-key"}
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.fixture(scope="module")
def base_url(store, pool_file, router_dir):
    """The gateway with API keys on; the schema's example student exists, owned by the fuzzing tenant."""
    store.register_student("qwen2.5-1.5b-math", "smollm2-135m-instruct", owner="fuzz")
    store.add_router_version("qwen2.5-1.5b-math", "v1", str(router_dir), {})
    gateway_settings = Settings(redis_url=REDIS_URL, key_prefix=store.p, teacher_pool=pool_file, device="cpu",
                                api_keys=(ApiKey("fuzz", "fuzz-key"),), max_prompts_per_request=4,
                                max_prompt_chars=200, max_job_prompts=5)
    with pytest.MonkeyPatch.context() as patch:  # no worker consumes these jobs' queues
        patch.setattr(services.jobs.stages, "enqueue_many", lambda messages: None)
        with serve(create_app(gateway_settings, store=store)) as url:
            yield url


# The schema does not depend on settings or state: read it from an app that is never started. (Not
# ``schemathesis.pytest.from_fixture``: its lazy loading breaks on pytest 9's node ids.)
schema = schemathesis.openapi.from_dict(create_app(Settings()).openapi())


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large,
                                 HealthCheck.function_scoped_fixture])
def test_no_server_errors_and_answers_match_the_schema(case, base_url):
    case.call_and_validate(base_url=base_url, headers=KEY, checks=CHECKS, timeout=30)
