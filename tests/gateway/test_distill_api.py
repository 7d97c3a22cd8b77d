"""Distill jobs at the gateway (real Redis, no worker): what a dataset job must be, tenancy, options,
and the artifact downloads of a published model (tests/student/test_distill_service.py trains one)."""

from __future__ import annotations

import io
import tarfile

import pytest
from fastapi.testclient import TestClient

from gateway_support import REDIS_URL
from router_api.app import create_app
from services.core.settings import ApiKey, Settings
from services.jobs.distill import DISTILL_TASK, student_dir

A, B = ({"Authorization": f"Bearer {key}"} for key in ("key-a", "key-b"))
ROW = {"id": "q1", "prompt": "What is 1 plus 2?", "response": "1 + 2 = 3.", "teacher": "mathy"}


@pytest.fixture(scope="module")
def settings(store, pool_file, tmp_path_factory):
    return Settings(redis_url=REDIS_URL, key_prefix=store.p, teacher_pool=pool_file, device="cpu",
                    data_dir=tmp_path_factory.mktemp("data"),
                    api_keys=(ApiKey("team-a", "key-a"), ApiKey("team-b", "key-b")))


@pytest.fixture(scope="module")
def client(settings, store):
    with TestClient(create_app(settings, store=store)) as client:
        yield client


@pytest.fixture(scope="module")
def student(store):
    store.register_student("dist-stu", "smollm2-135m-instruct", owner="team-b")
    return "dist-stu"


def dataset_job(store, student, *, kind="synthesize", state="succeeded", rows=(ROW,), owner="team-b") -> str:
    """A job as its workers leave it: rows written, state set."""
    job_id = store.create_job(kind, {"student_id": student}, [{"id": r["id"], "prompt": r["prompt"]} for r in rows]
                              or [{"id": "q1", "prompt": "x"}], owner=owner)
    store.put_rows(job_id, list(rows))
    store.set_state(job_id, state)
    return job_id


def test_a_distill_job_trains_on_a_finished_dataset_of_the_same_tenant(client, store, student, enqueued):
    source = dataset_job(store, student)
    reply = client.post("/v1/jobs/distill", headers=B, json={"dataset_job_id": source, "max_steps": 3, "lora": True})
    assert reply.status_code == 202, reply.text
    job = reply.json()
    assert job["kind"] == "distill" and job["state"] == "running" and job["student_id"] == student
    assert job["training"]["dataset_job_id"] == source and job["training"]["student_model"] == "smollm2-135m-instruct"
    assert job["training"]["dataset_rows"] == 1 and job["training"]["steps_done"] == 0
    assert job["training"]["artifacts"] == [] and job["stages"][0]["stage"] == "distill"
    assert enqueued == [(DISTILL_TASK, [job["id"]], "training")]
    assert client.get(f"/v1/jobs/{job['id']}", headers=B).json()["spec"]["max_steps"] == 3
    early = client.get(f"/v1/jobs/{job['id']}/artifacts/model.tar", headers=B)
    assert early.status_code == 409 and "running" in early.json()["detail"]


@pytest.mark.parametrize("kind, state, rows, words", [
    ("synthesize", "running", (ROW,), "is running"),
    ("synthesize", "failed", (ROW,), "is failed"),
    ("calibrate", "succeeded", (), "builds no dataset"),
    ("persyn", "succeeded", (), "no dataset rows"),
])
def test_a_dataset_job_that_is_not_finished_or_has_no_dataset_is_409(client, store, student, enqueued,
                                                                     kind, state, rows, words):
    source = dataset_job(store, student, kind=kind, state=state, rows=rows)
    reply = client.post("/v1/jobs/distill", headers=B, json={"dataset_job_id": source})
    assert reply.status_code == 409 and words in reply.json()["detail"], reply.text
    assert not enqueued


def test_another_tenants_dataset_job_answers_as_an_unknown_one(client, store, student, enqueued):
    source = dataset_job(store, student)
    unknown = client.post("/v1/jobs/distill", headers=A, json={"dataset_job_id": "0123456789abcdef"})
    theirs = client.post("/v1/jobs/distill", headers=A, json={"dataset_job_id": source})
    assert unknown.status_code == theirs.status_code == 404
    assert theirs.json() == {"detail": f"unknown job {source!r}"}
    assert unknown.json() == {"detail": "unknown job '0123456789abcdef'"}
    assert not enqueued


@pytest.mark.parametrize("change, field", [
    ({"max_steps": 0}, "max_steps"), ({"learning_rate": -1e-5}, "learning_rate"), ({"epochs": 0}, "epochs"),
    ({"max_length": 4}, "max_length"), ({"student_model": "/etc/passwd"}, "student_model"),
    ({"dataset_job_id": "../x"}, "dataset_job_id"), ({"prompts": []}, "prompts"), ({"seed": -1}, "seed"),
])
def test_bad_training_options_are_422_naming_the_field(client, store, student, enqueued, change, field):
    reply = client.post("/v1/jobs/distill", headers=B, json={"dataset_job_id": "0123456789abcdef", **change})
    assert reply.status_code == 422 and f"body.{field}" in reply.json()["detail"], reply.text
    assert not enqueued


def test_a_published_model_downloads_as_a_tar_with_its_loss_plot_and_llamafactory_config(
        client, store, student, settings, enqueued):
    source = dataset_job(store, student)
    job_id = client.post("/v1/jobs/distill", headers=B, json={"dataset_job_id": source}).json()["id"]
    out = student_dir(settings, job_id)  # what a training worker leaves (the real one: test_distill_service.py)
    (out / "model").mkdir(parents=True)
    (out / "model" / "config.json").write_text('{"model_type": "llama"}')
    (out / "model" / "model.safetensors").write_bytes(bytes(range(256)) * 4099)  # not a multiple of 512
    (out / "llamafactory").mkdir()
    (out / "llamafactory" / "train_x.yaml").write_text("stage: sft\n")
    (out / "training_loss.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    store.update_job(job_id, distill_model=f"students/{job_id}/model", distill_final_loss=1.25,
                     distill_steps_done=1, distill_rows=1)
    job = client.get(f"/v1/jobs/{job_id}", headers=B).json()
    assert job["training"]["model_dir"] == f"students/{job_id}/model" and job["training"]["final_loss"] == 1.25
    assert job["training"]["artifacts"] == ["llamafactory.tar", "model.tar", "training_loss.png"]
    assert str(settings.data_dir) not in str(job)

    model = client.get(f"/v1/jobs/{job_id}/artifacts/model.tar", headers=B)
    assert model.status_code == 200 and model.headers["content-type"] == "application/x-tar"
    assert len(model.content) % tarfile.RECORDSIZE == 0
    with tarfile.open(fileobj=io.BytesIO(model.content)) as tar:
        assert tar.getnames() == [f"{job_id}-model/config.json", f"{job_id}-model/model.safetensors"]
        assert tar.extractfile(f"{job_id}-model/model.safetensors").read() == bytes(range(256)) * 4099
    with tarfile.open(fileobj=io.BytesIO(client.get(f"/v1/jobs/{job_id}/artifacts/llamafactory.tar",
                                                    headers=B).content)) as tar:
        assert tar.extractfile(f"{job_id}-llamafactory/train_x.yaml").read() == b"stage: sft\n"
    plot = client.get(f"/v1/jobs/{job_id}/artifacts/training_loss.png", headers=B)
    assert plot.status_code == 200 and plot.content.startswith(b"\x89PNG")

    assert client.get(f"/v1/jobs/{job_id}/artifacts/model.tar", headers=A).status_code == 404
    bad = client.get(f"/v1/jobs/{job_id}/artifacts/distill.json", headers=B)
    assert bad.status_code == 422 and "name" in bad.json()["detail"]
    other = client.get(f"/v1/jobs/{source}/artifacts/model.tar", headers=B)
    assert other.status_code == 404 and "only distill jobs" in other.json()["detail"]
