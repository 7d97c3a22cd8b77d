"""The precision setting: parsed and validated from the environment, resolved per device."""

import pytest
import torch

from services.core.precision import cpu_has_bf16, resolve_dtype, resolve_precision
from services.core.settings import Settings


def test_precision_is_parsed_case_insensitively_and_defaults_to_auto():
    assert Settings.from_env({}).precision == "auto"
    assert Settings.from_env({"PERSYN_PRECISION": " FP32 "}).precision == "fp32"
    assert Settings.from_env({"PERSYN_PRECISION": "bf16"}).precision == "bf16"


@pytest.mark.parametrize("value", ["half", "float32", "bf-16", "8bit"])
def test_a_bad_precision_names_the_variable_and_the_choices(value):
    with pytest.raises(ValueError, match=r"PERSYN_PRECISION: precision must be one of auto, fp32, bf16, fp16"):
        Settings.from_env({"PERSYN_PRECISION": value})


def test_auto_is_bf16_on_this_cpu_only_when_its_flags_say_so():
    assert resolve_precision("auto", "cpu") == ("bf16" if cpu_has_bf16() else "fp32")
    assert resolve_dtype("fp32", "cpu") is torch.float32 and resolve_dtype("bf16", "cpu") is torch.bfloat16


def test_fp16_needs_cuda_and_unknown_values_are_refused():
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        resolve_precision("fp16", "cpu")
    with pytest.raises(ValueError, match="precision must be one of"):
        resolve_precision("int8", "cpu")
