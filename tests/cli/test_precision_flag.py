"""``--precision`` on the scoring commands: a bad value, from the flag or PERSYN_PRECISION, is a one-line usage error."""

import json
import os
import subprocess
import sys


def run_cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "services.cli.main", *map(str, args)], capture_output=True,
                          text=True, env={**os.environ, **(env or {})})


def test_bad_precision_flag_or_setting_exits_2_naming_the_choices(tmp_path):
    parallel = tmp_path / "p.jsonl"
    parallel.write_text(json.dumps({"id": "q", "prompt": "Hi", "responses": {"a": "Hello."}}) + "\n")
    flag = run_cli("score", "--parallel", parallel, "--alpha", "1", "--student", "smollm2-135m-instruct",
                   "--precision", "half", "--out", tmp_path / "s.jsonl")
    assert flag.returncode == 2 and "precision must be one of auto, fp32, bf16, fp16" in flag.stderr, flag.stderr
    setting = run_cli("score", "--parallel", parallel, "--alpha", "1", "--student", "smollm2-135m-instruct",
                      "--out", tmp_path / "s.jsonl", env={"PERSYN_PRECISION": "half"})
    assert setting.returncode == 2 and "PERSYN_PRECISION" in setting.stderr, setting.stderr
    assert "Traceback" not in flag.stderr + setting.stderr
