"""Settings come from one environment variable each, parsed by the field's type."""

import dataclasses
from pathlib import Path

import pytest

from services.core.settings import ENV_VARS, ApiKey, Settings


def test_every_setting_has_exactly_one_environment_variable():
    assert set(ENV_VARS) == {f.name for f in dataclasses.fields(Settings)}
    assert len(set(ENV_VARS.values())) == len(ENV_VARS)


def test_values_are_parsed_by_type_and_empty_means_default():
    s = Settings.from_env({"PERSYN_API_KEYS": " a:k1, b:k2:admin ,", "PERSYN_BATCH_MAX_WAIT_MS": "3.5",
                           "PERSYN_TEACHER_POOL": "/etc/persyn/pool.yaml", "PERSYN_ROUTER_BATCHING": "off",
                           "PERSYN_MAX_JOB_PROMPTS": "10", "PERSYN_ROUTER_URL": ""})
    assert s.api_keys == (ApiKey("a", "k1"), ApiKey("b", "k2", admin=True))
    assert s.batch_max_wait_ms == 3.5 and s.max_job_prompts == 10
    assert s.teacher_pool == Path("/etc/persyn/pool.yaml") and s.router_batching is False
    assert s.router_service_url is None and s.redis_url == Settings.redis_url


@pytest.mark.parametrize("name, value", [("PERSYN_MAX_JOB_PROMPTS", "many"), ("PERSYN_ROUTER_BATCHING", "maybe")])
def test_bad_values_name_their_variable(name, value):
    with pytest.raises(ValueError, match=name):
        Settings.from_env({name: value})


def test_bare_api_keys_are_tenants_of_their_own_named_without_the_key():
    one, two = Settings.from_env({"PERSYN_API_KEYS": "secret1,secret2"}).api_keys
    assert one.key == "secret1" and not one.admin and one.tenant.startswith("key-")
    assert one.tenant != two.tenant and "secret" not in one.tenant + repr(one)


@pytest.mark.parametrize("value, words", [
    ("a:k1:root", "entry 1"), ("a:k1,b:k1", "twice"), ("a:", "empty key"), ("../x:k", "tenant"),
    ("ok:k,a:b:c:d", "entry 2")])
def test_bad_api_keys_name_the_entry_but_not_the_key(value, words):
    with pytest.raises(ValueError, match="PERSYN_API_KEYS") as raised:
        Settings.from_env({"PERSYN_API_KEYS": value})
    assert words in str(raised.value) and "k1" not in str(raised.value)
