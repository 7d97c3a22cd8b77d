"""A distill job on the real stack: Redis, the gateway, a real training worker fine-tuning the real
SmolLM2-135M (converted from its packaged GGUF) on a few rows of a finished job, for a step or three."""

from __future__ import annotations

import io
import math
import tarfile
import time
import uuid

import httpx
import pytest
import yaml

from services.embedded.stack import LocalStack
from services.jobs.store import JobStore
from tests.jobs.test_service_jobs import _kill_tree, wait

ROWS = [{"id": f"r{i}", "prompt": f"What is {a} + {b}?", "response": f"{a} + {b} = {a + b}. The answer is {a + b}.",
         "teacher": "t1"} for i, (a, b) in enumerate([(2, 3), (4, 6), (10, 7), (8, 1)])]


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """The gateway and one training worker; no teacher is ever asked (the dataset job is written
    through the store, as its generation workers would have left it)."""
    prefix = f"test-distill-{uuid.uuid4().hex[:8]}"
    work = tmp_path_factory.mktemp("stack")
    pool = work / "pool.yaml"
    pool.write_text(yaml.safe_dump({"teachers": [{"name": "t1", "family": "qwen", "size_b": 1,
                                                  "base_url": "http://127.0.0.1:9/v1", "model": "t1"}]}))
    with LocalStack(work_dir=work, key_prefix=prefix, teacher_pool=pool, queues=("training",),
                    concurrency={"training": 1},
                    extra_env={"PERSYN_DEVICE": "cpu", "PERSYN_LEASE_SECONDS": "4",
                               "PERSYN_WATCHDOG_INTERVAL_S": "2"}) as running:
        store = JobStore.from_url(running.redis_url, prefix)
        with httpx.Client(base_url=running.url, timeout=60) as client:
            assert client.post("/v1/students", json={"student_id": "smol"}).status_code == 201
            source = store.create_job("synthesize", {"student_id": "smol", "strategy": "random"},
                                      [{"id": r["id"], "prompt": r["prompt"]} for r in ROWS])
            store.put_rows(source, ROWS)
            store.set_state(source, "succeeded")
            yield running, store, client, source
        for key in store.r.scan_iter(f"{prefix}:*"):
            store.r.delete(key)


def test_a_distill_job_trains_the_student_and_publishes_its_model(stack):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    running, store, client, source = stack
    reply = client.post("/v1/jobs/distill", json={"dataset_job_id": source, "max_steps": 1, "batch_size": 4,
                                                  "max_length": 64, "seed": 3})
    assert reply.status_code == 202, reply.text
    job = wait(client, reply.json()["id"], timeout=240)
    assert job["state"] == "succeeded", job
    training = job["training"]
    assert training["steps_done"] == training["steps_total"] == 1 and training["rows_trained"] == 4
    assert math.isfinite(training["final_loss"]) and training["final_loss"] > 0
    assert training["model_dir"] == f"students/{job['id']}/model" and str(running.work_dir) not in str(job)
    assert [(s["stage"], s["done"], s["total"]) for s in job["stages"]] == [("distill", 1, 1)]

    model_dir = running.work_dir / "data" / training["model_dir"]
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    assert model.config.model_type == "llama" and tokenizer.eos_token

    plot = client.get(f"/v1/jobs/{job['id']}/artifacts/training_loss.png")
    assert plot.status_code == 200 and plot.content.startswith(b"\x89PNG")
    with tarfile.open(fileobj=io.BytesIO(client.get(f"/v1/jobs/{job['id']}/artifacts/llamafactory.tar").content)) \
            as tar:
        files = {name.split("/", 1)[1]: tar.extractfile(name).read() for name in tar.getnames()}
    config_name = next(name for name in files if name.startswith("train_"))
    config = yaml.safe_load(files[config_name])
    assert config["model_name_or_path"] == "smollm2-135m-instruct" and config["dataset_dir"] == "."
    assert config["max_steps"] == 1 and str(running.work_dir) not in files[config_name].decode()
    assert "dataset_info.json" in files and len(files) == 3


def test_a_training_whose_worker_is_killed_is_redelivered_and_resumes_from_its_checkpoint(stack):
    running, store, client, source = stack
    reply = client.post("/v1/jobs/distill", json={"dataset_job_id": source, "max_steps": 2, "batch_size": 1,
                                                  "max_length": 64, "lora": True, "lora_rank": 4,
                                                  "save_steps": 1})
    assert reply.status_code == 202, reply.text
    job_id = reply.json()["id"]
    first = running.work_dir / "data" / "students" / job_id / "checkpoints" / "checkpoint-1" / "trainer_state.json"
    deadline = time.time() + 180
    while time.time() < deadline and not first.exists():  # kill once a whole checkpoint is saved
        time.sleep(0.1)
    training = client.get(f"/v1/jobs/{job_id}").json()["training"]
    assert first.exists() and training["steps_done"] < 2, training
    _kill_tree(running.workers["training"])
    running.start_worker("training")
    job = wait(client, job_id, timeout=240)
    assert job["state"] == "succeeded", job
    assert job["training"]["steps_done"] == job["training"]["steps_total"] == 2
    # requeued once its lease lapsed (a loaded machine may add a requeue of a copy that was slow to take
    # the lease; that copy finds the lease held and does nothing)
    assert job["stages"][0]["redelivered"] >= 1 and job["stages"][0]["done"] == 1
    assert job["training"]["resumed_from_step"] == 1  # from its checkpoint, not from the start
    assert math.isfinite(job["training"]["final_loss"])
