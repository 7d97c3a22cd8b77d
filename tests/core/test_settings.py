"""Settings come from one environment variable each, parsed by the field's type."""

import dataclasses
from pathlib import Path

import pytest

from services.core.settings import ENV_VARS, Settings


def test_every_setting_has_exactly_one_environment_variable():
    assert set(ENV_VARS) == {f.name for f in dataclasses.fields(Settings)}
    assert len(set(ENV_VARS.values())) == len(ENV_VARS)


def test_values_are_parsed_by_type_and_empty_means_default():
    s = Settings.from_env({"PERSYN_API_KEYS": " k1, k2 ,", "PERSYN_BATCH_MAX_WAIT_MS": "3.5",
                           "PERSYN_TEACHER_POOL": "/etc/persyn/pool.yaml", "PERSYN_ROUTER_BATCHING": "off",
                           "PERSYN_MAX_JOB_PROMPTS": "10", "PERSYN_ROUTER_URL": ""})
    assert s.api_keys == ("k1", "k2") and s.batch_max_wait_ms == 3.5 and s.max_job_prompts == 10
    assert s.teacher_pool == Path("/etc/persyn/pool.yaml") and s.router_batching is False
    assert s.router_service_url is None and s.redis_url == Settings.redis_url


@pytest.mark.parametrize("name, value", [("PERSYN_MAX_JOB_PROMPTS", "many"), ("PERSYN_ROUTER_BATCHING", "maybe")])
def test_bad_values_name_their_variable(name, value):
    with pytest.raises(ValueError, match=name):
        Settings.from_env({name: value})
